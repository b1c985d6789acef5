"""Schemathesis against real gunicorn: thousands of generated requests, valid and invalid, on
every operation of ``/openapi.json``, with every check schemathesis has (and two of our own,
tests/schemathesis_checks.py). The document and the server must agree on each of them.

Run alone: ``.venv/bin/python -m pytest -m "" tests/test_serve_schemathesis.py -s`` (``-s``
shows schemathesis's report). ``SERVE_FUZZ_SEED`` picks another seed than the fixed one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.server import Server
from helpers.tiny_models import write_repository

MIN_CASES = 5000  # generated requests, all phases together; the run fails below this
MAX_EXAMPLES = 280  # per operation and phase: about 5,500 cases in all
SEED = int(os.environ.get("SERVE_FUZZ_SEED", "20261202"))
TIME_LIMIT = 420  # seconds: a bound on a run that takes about two minutes, not an expectation
CHECKS = Path(__file__).with_name("schemathesis_checks.py")
# One: Hypothesis describes strategies with ast.parse, which CPython 3.11 before 3.11.8 can
# fail with "AST constructor recursion depth mismatch" when threads call it at once.
WORKERS = 1 if sys.version_info < (3, 11, 8) else 2

# What the run takes beyond the defaults, each for a reason of this API (see also
# tests/schemathesis_checks.py, which narrows the first two).
CONFIG = """
[checks.negative_data_rejection]
# The worker refuses a request line, headers or a body over its limits before any validation:
# 413, 414 and 431 are rejections too (schemathesis's list has none of them).
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "414", "415",
                     "422", "428", "429", "431", "5xx"]

[checks.positive_data_acceptance]
# One document serves every model: what depends on the model a request names (latent size,
# labels, class count) or on relations JSON Schema cannot state (seed + n - 1 <= 2**63 - 1,
# one label per sample) is a 422 the schema does not predict; a matching If-None-Match on a
# POST is a 412 (RFC 9110). model_dependent_rejection fails any other such refusal.
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "412", "422", "429", "5xx"]

[[operations]]
# v2 infer: a tensor's data must fill its shape, binary sizes must add up to the body, and
# z's width is the model's latent size; the protocol answers all of that with 400, which
# model_dependent_rejection narrows to those reasons.
include-path-regex = "^/v2/models/.*/infer$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404",
                                                     "409", "429", "5xx"]

# Real model names and versions beside generated ones, so requests reach the models.
[dictionaries.models]
values = ["tiny", "cond"]

[dictionaries.path-versions]
values = ["1", "2"]

[dictionaries.versions]
values = [1, 2]

[parameters]
"path.name" = { dictionary = "models", probability = 0.7 }
"query.model" = { dictionary = "models", probability = 0.5 }
"body.model" = { dictionary = "models", probability = 0.5 }
"path.version" = { dictionary = "path-versions", probability = 0.7 }
"query.version" = { dictionary = "versions", probability = 0.5 }
"body.version" = { dictionary = "versions", probability = 0.5 }
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, gunicorn: Callable[..., Server]) -> Server:
    """The tiny models (tiny 1 and 2, conditional cond), two workers, no access log."""
    repo = write_repository(tmp_path_factory.mktemp("fuzz") / "models")
    return gunicorn(
        GAN_MODELS_DIR=str(repo), GAN_WORKERS="2", GAN_DEFAULT_MODEL="tiny",
        GAN_MAX_SAMPLES="16", GAN_ACCESS_LOG="off", GAN_RELOAD_INTERVAL="0",
    )


def test_schemathesis_finds_no_failure(server: Server, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
        f"{server.url}/openapi.json",
        "--checks", "all", "--mode", "all", "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--workers", str(WORKERS),
        "--continue-on-failure", "--generation-database", "none", "--request-timeout", "30",
        "--no-color", "--output-truncate", "false", "--report", "junit",
        "--report-junit-path", str(tmp_path / "junit.xml"),
    ]
    env = os.environ | {"SCHEMATHESIS_HOOKS": str(CHECKS)}
    started = time.monotonic()
    run = subprocess.run(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=TIME_LIMIT,
    )
    took = time.monotonic() - started
    output = run.stdout
    generated = re.search(r"^\s*(\d+) generated", output, re.MULTILINE)
    cases = int(generated.group(1)) if generated else 0
    print(output)
    print(f"schemathesis: {cases} cases in {took:.0f} s, seed {SEED}")
    assert run.returncode == 0, f"schemathesis failed (exit {run.returncode}):\n{output[-20000:]}"
    operations = re.search(r"Selected:\s+(\d+)/(\d+)\s+Tested:\s+(\d+)", output)
    assert operations is not None, output[-5000:]
    assert operations.group(1) == operations.group(2) == operations.group(3), operations.group(0)
    assert cases >= MIN_CASES, f"only {cases} cases ran"
    # The JUnit report, a second account: a test case per operation (and the stateful
    # phase's), none failed.
    report = ET.parse(tmp_path / "junit.xml").getroot()
    assert (report.get("failures"), report.get("errors")) == ("0", "0")
    names = [t.get("name", "") for t in report.iter("testcase")]
    assert len([n for n in names if re.match(r"[A-Z]+ /", n)]) == int(operations.group(3)), names
    log = server.stop()
    assert "Traceback" not in log, log[-5000:]
