"""scripts/audit.py: how it reads pip-audit's answers (a stand-in pip-audit plays each one)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLASK = importlib.metadata.version("flask")


def load_audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit", ROOT / "scripts" / "audit.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


audit = load_audit()

# A pip-audit that writes the report in $FAKE_REPORT (if any) to its -o file, $FAKE_STDERR to
# standard error, exits with $FAKE_STATUS, and leaves its arguments in $FAKE_ARGS.
FAKE = """\
import json, os, sys
args = sys.argv[1:]
open(os.environ["FAKE_ARGS"], "w").write(json.dumps(args))
if os.environ.get("FAKE_REPORT"):
    open(args[args.index("-o") + 1], "w").write(os.environ["FAKE_REPORT"])
sys.stderr.write(os.environ.get("FAKE_STDERR", ""))
sys.exit(int(os.environ.get("FAKE_STATUS", "0")))
"""
UNREACHABLE = """Traceback (most recent call last):
  File "pip_audit/_service/osv.py", line 70, in query
requests.exceptions.ConnectionError: HTTPSConnectionPool(host='api.osv.dev', port=443): Max \
retries exceeded with url: /v1/query (Caused by NameResolutionError("Failed to resolve"))
"""


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    fake = tmp_path / "pip-audit"
    fake.write_text(f"#!{sys.executable}\n{FAKE}")
    fake.chmod(0o755)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"# pinned\nflask=={FLASK}  # the web framework\n\n")
    args_file = tmp_path / "args.json"
    monkeypatch.setenv("FAKE_ARGS", str(args_file))

    def run(report: dict | None, stderr: str = "", status: int = 0,
            requirements_text: str | None = None) -> tuple[int, str, list[str]]:
        if requirements_text is not None:
            requirements.write_text(requirements_text)
        monkeypatch.setenv("FAKE_REPORT", "" if report is None else json.dumps(report))
        monkeypatch.setenv("FAKE_STDERR", stderr)
        monkeypatch.setenv("FAKE_STATUS", str(status))
        code = audit.main(["-r", str(requirements), "--pip-audit", str(fake)])
        args = json.loads(args_file.read_text()) if args_file.exists() else []
        return code, capsys.readouterr().out, args

    return run


def deps(*entries: dict) -> dict:
    return {"dependencies": list(entries), "fixes": []}


CLEAN = {"name": "flask", "version": FLASK, "vulns": []}
NOT_FOUND = {"name": "werkzeug", "skip_reason": "Dependency not found on PyPI and could not be "
             "audited: werkzeug (3.1.0)"}


def test_a_clean_audit_passes_and_pins_everything(run) -> None:
    code, out, args = run(deps(CLEAN, CLEAN | {"name": "werkzeug"}),
                          "No known vulnerabilities found\n")
    assert code == audit.PASSED
    assert out.strip() == "dependency audit: passed: 2 packages audited (pypi), no known vulnerabilities"
    for flag in ("--no-deps", "--disable-pip", "-f", "json"):
        assert flag in args
    pinned = Path(args[args.index("-r") + 1])
    assert not pinned.exists()  # a temporary file, gone after the run


def test_vulnerabilities_fail_and_are_listed(run) -> None:
    vuln = {"id": "GHSA-xxxx-yyyy-zzzz", "aliases": ["CVE-2099-0001"], "fix_versions": ["9.9.9"]}
    code, out, _ = run(deps(CLEAN | {"vulns": [vuln]}, NOT_FOUND), "Found 1 known vulnerability\n", 1)
    assert code == audit.FAILED
    assert f"flask {FLASK}: GHSA-xxxx-yyyy-zzzz, CVE-2099-0001 (fixed in: 9.9.9)" in out
    assert out.strip().endswith("FAILED: 1 known vulnerabilities in 1 of 1 packages audited")


def test_a_service_without_data_is_a_warning_not_a_pass(run) -> None:
    # What pip-audit does where the PyPI JSON API answers 404: exit 0, "No known vulnerabilities".
    code, out, _ = run(deps(NOT_FOUND, NOT_FOUND | {"name": "flask"}),
                       "No known vulnerabilities found\n", 0)
    assert code == audit.NOT_RUN
    assert out.count("\n") == 1
    assert out.startswith("WARNING: dependency audit did not run: none of the 2 packages")
    assert "NOT checked" in out and "passed" not in out


def test_a_partial_audit_is_a_warning(run) -> None:
    code, out, _ = run(deps(CLEAN, NOT_FOUND), "No known vulnerabilities found\n", 0)
    assert code == audit.NOT_RUN
    assert out.startswith("WARNING: dependency audit incomplete: 1 of 2 packages not looked up "
                          "(werkzeug)")


def test_an_unreachable_service_is_a_warning(run) -> None:
    code, out, _ = run(None, UNREACHABLE, 1)
    assert code == audit.NOT_RUN
    assert out.startswith("WARNING: dependency audit did not run: the vulnerability service "
                          "(pypi) cannot be reached: requests.exceptions.ConnectionError")
    code, out, _ = run(None, "ERROR:pip_audit._cli:Could not connect to PyPI's vulnerability feed\n"
                       "ERROR:pip_audit._cli:Tip: your network may be blocking this service. "
                       "Try another service with `-s SERVICE`\n", 1)
    assert code == audit.NOT_RUN


def test_other_failures_fail(run) -> None:
    code, out, _ = run(None, "ERROR:pip_audit._cli:something else went wrong\n", 1)
    assert (code, out.strip()) == (audit.FAILED, "dependency audit: FAILED: pip-audit exited with "
                                   "1: ERROR:pip_audit._cli:something else went wrong")
    code, out, _ = run(deps(CLEAN), "", 2)
    assert code == audit.FAILED and "without reporting a vulnerability" in out
    code, out, _ = run(deps(), "", 0)
    assert code == audit.FAILED and "audited no package" in out
    code, out, _ = run(deps(CLEAN), requirements_text="flask>=3\n")
    assert code == audit.FAILED and "is not pinned with ==" in out
    code, out, _ = run(deps(CLEAN), requirements_text="no-such-package-here==1.0\n")
    assert code == audit.FAILED and "not installed here" in out


def test_a_missing_pip_audit_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"flask=={FLASK}\n")
    code = audit.main(["-r", str(requirements), "--pip-audit", str(tmp_path / "nowhere")])
    assert code == audit.FAILED
    assert "is not installed" in capsys.readouterr().out


def test_dependencies_of_the_pins_are_audited_too() -> None:
    versions = audit.closure(audit.pinned_requirements(ROOT / "serve" / "requirements.txt"))
    assert {"flask", "werkzeug", "jinja2", "gunicorn", "onnxruntime", "numpy"} <= set(versions)
    assert versions["werkzeug"] == importlib.metadata.version("werkzeug")
    assert versions["flask"] == FLASK
    assert "torch" not in versions and "pytest" not in versions
