"""Faults, with real processes: training killed mid-epoch (SIGINT, SIGKILL, SIGKILL during a
checkpoint write) and resumed; an export killed mid-way; an export onto a full disk beside a
running service.

The runs are the tiny synthetic ones of tests/helpers/training.py (32 images, batches of 8: four
steps an epoch), so they need no dataset. Where a kill must land at one exact point (inside a
checkpoint write, inside an export), the child runs the real command line under a small
bootstrap that pauses it there and says so in a marker file; the test polls for the marker.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import torch
from helpers.server import start_gunicorn
from helpers.tiny_models import write_model
from helpers.training import tiny_config, tiny_npz

from serve.repository import read_spec, scan, validate_repository
from train.checkpoint import load_checkpoint
from train.loop import fit

ROOT = Path(__file__).resolve().parents[1]
PER_EPOCH = 4  # tiny_npz's 32 images in batches of 8
WAIT = 180.0  # seconds a child may take to reach a point: a bound on the wait, not an expectation
STATE_KEYS = ("step", "generator", "discriminator", "opt_g", "opt_d", "noise_rng")

# The real `python -m train` command line, paused at one point: PAUSE_AT=checkpoint pauses the
# second checkpoint write after half its bytes reach the temporary file; PAUSE_AT=step pauses
# training halfway through step 6 (after the discriminator's update, before the generator's);
# PAUSE_AT=export pauses an export once model.onnx is in its temporary directory. Each writes
# PAUSED_MARKER and sleeps.
BOOTSTRAP = """
import os, sys, time
from pathlib import Path

def pause():
    Path(os.environ["PAUSED_MARKER"]).write_text(str(os.getpid()))
    time.sleep(3600)

if os.environ["PAUSE_AT"] == "checkpoint":
    real_fdopen, opened = os.fdopen, []

    class HalfWritten:
        def __init__(self, f):
            self.f = f
        def write(self, data):
            self.f.write(bytes(data)[: max(1, len(data) // 2)])
            self.f.flush()
            pause()
        def __getattr__(self, name):
            return getattr(self.f, name)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith(".checkpoint.pt.") and name.endswith(".tmp"):
            opened.append(name)
            if len(opened) == 2:
                return HalfWritten(f)
        return f

    os.fdopen = fdopen
elif os.environ["PAUSE_AT"] == "step":
    import torch
    real_step, calls = torch.optim.Adam.step, []

    def step(self, *args, **kwargs):
        calls.append(1)
        result = real_step(self, *args, **kwargs)
        if len(calls) == 11:  # step 6's discriminator update, before its generator update
            pause()
        return result

    torch.optim.Adam.step = step
else:
    import train.export

    def parity(G, onnx_path, seeds):
        pause()

    train.export.parity = parity

from train.cli import main
sys.exit(main(sys.argv[1:]))
"""


def fit_args(data: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    """`fit` on the tiny data, as tiny_config with ema 0 trains it, logging every step."""
    return ["fit", "--dataset", "arrays", "--data", str(data), "--batch-size", "8", "--width", "8",
            "--ema", "0", "--epochs", str(epochs), "--log-every", "1", "--device", "cpu",
            "--out", str(out), "--no-progress", *extra]


def start(args: list[str], log: Path, pause_at: str | None = None,
          marker: Path | None = None) -> subprocess.Popen[str]:
    """`python -m train ARGS` (under the pausing bootstrap with pause_at), output to log."""
    env = dict(os.environ)
    command = [sys.executable, "-m", "train", *args]
    if pause_at:
        env |= {"PAUSE_AT": pause_at, "PAUSED_MARKER": str(marker)}
        command = [sys.executable, "-c", BOOTSTRAP, *args]
    with log.open("w") as f:  # a file, not a pipe nobody reads while the child runs
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m train ARGS` to completion."""
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def wait_until(ready: Callable[[], bool], process: subprocess.Popen[str], log: Path, what: str) -> None:
    """Poll until ready() holds; fail if the child exits first or the bound passes."""
    deadline = time.monotonic() + WAIT
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"the child exited ({process.returncode}) before {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} within {WAIT:g} s:\n{log.read_text()}")
        time.sleep(0.02)  # polling interval, not an assertion


def logged_rows(run: Path) -> list[dict[str, str]]:
    """metrics.csv's complete rows (a row being written when a process died is not one)."""
    path = run / "metrics.csv"
    if not path.exists():
        return []
    rows = list(csv.DictReader(path.open()))
    return [r for r in rows if None not in r.values() and r.get("images_per_s")]


def logged_steps(run: Path) -> list[int]:
    """The steps metrics.csv has a row for."""
    return [int(r["step"]) for r in logged_rows(run)]


def leftovers(run: Path) -> list[str]:
    """Temporary files in a run directory (what an atomic write leaves when killed)."""
    return sorted(p.name for p in run.rglob("*.tmp"))


def assert_same_training_state(a: Path, b: Path) -> None:
    """Two runs' checkpoints hold bit-identical networks, optimizers, noise RNG and step."""
    sa, sb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    for key in STATE_KEYS:
        flat_a, flat_b = flatten(sa[key]), flatten(sb[key])
        assert flat_a.keys() == flat_b.keys(), key
        for name, value in flat_a.items():
            other = flat_b[name]
            same = torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
            assert same, f"{key}{name} differs"


def flatten(value: object, prefix: str = "") -> dict[str, object]:
    """Nested dicts and lists as one dict of leaves, keyed by their path."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}.{key}").items()}
    if isinstance(value, list | tuple):
        return {k: v for i, item in enumerate(value) for k, v in flatten(item, f"{prefix}[{i}]").items()}
    return {prefix: value}


def assert_same_log(a: Path, b: Path) -> None:
    """Both metrics.csv files log the same steps with the same losses (timings aside)."""
    ra, rb = logged_rows(a), logged_rows(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb, strict=True):
        assert {k: v for k, v in x.items() if k != "images_per_s"} == \
               {k: v for k, v in y.items() if k != "images_per_s"}, x["step"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """An uninterrupted run of the same configuration, trained in this process for E epochs."""
    base = tmp_path_factory.mktemp("reference")
    runs: dict[int, Path] = {}

    def run(epochs: int) -> Path:
        if epochs not in runs:
            cfg = tiny_config(base / str(epochs), ema=0.0, steps=None, epochs=epochs, log_every=1)
            runs[epochs] = fit(cfg, progress=False)
        return runs[epochs]

    return run


def test_sigkill_mid_epoch_loses_at_most_that_epoch_and_resume_is_exact(tmp_path, reference):
    data, out, log = tiny_npz(tmp_path), tmp_path / "run", tmp_path / "fit.log"
    proc = start(fit_args(data, out, 1000), log)
    # Kill once the first epoch's checkpoint is written and the second epoch has begun.
    wait_until(lambda: (out / "checkpoint.pt").exists() and max(logged_steps(out), default=0) > PER_EPOCH,
               proc, log, "a step of the second epoch")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)

    step = load_checkpoint(out / "checkpoint.pt")["step"]  # complete and loadable
    logged = max(logged_steps(out))
    assert step % PER_EPOCH == 0 and step >= PER_EPOCH  # only whole epochs are saved
    assert logged - PER_EPOCH <= step <= logged  # at most the epoch in progress is lost
    assert [p.name for p in out.glob("*.pt")] == ["checkpoint.pt"]

    epochs = step // PER_EPOCH + 1
    resumed = cli(*fit_args(data, out, epochs, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert leftovers(out) == []
    assert_same_training_state(out, reference(epochs))
    # The log is the uninterrupted run's: the rows of the lost steps are not kept twice.
    assert_same_log(out, reference(epochs))


def test_sigint_mid_epoch_stops_cleanly_at_a_step_and_resume_is_exact(tmp_path, reference):
    data, out, log = tiny_npz(tmp_path), tmp_path / "run", tmp_path / "fit.log"
    proc = start(fit_args(data, out, 1000), log)
    wait_until(lambda: any(s > PER_EPOCH and s % PER_EPOCH for s in logged_steps(out)),
               proc, log, "a step inside the second epoch")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=WAIT) == 130
    text = log.read_text()
    assert "resume with --resume" in text and "Traceback" not in text, text

    step = load_checkpoint(out / "checkpoint.pt")["step"]
    assert step == max(logged_steps(out))  # stopped after a whole step: nothing lost
    assert leftovers(out) == []
    # Resuming from a checkpoint taken between two steps gives the uninterrupted run exactly,
    # wherever the signal landed (most of a run's time is spent inside steps).
    epochs = step // PER_EPOCH + 1
    resumed = cli(*fit_args(data, out, epochs, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_training_state(out, reference(epochs))
    assert [int(r["step"]) for r in logged_rows(out)] == list(range(1, epochs * PER_EPOCH + 1))


def test_a_second_sigint_inside_a_step_stops_at_once_and_saves_nothing_of_it(tmp_path, reference):
    data, out, log, marker = tiny_npz(tmp_path), tmp_path / "run", tmp_path / "fit.log", tmp_path / "paused"
    proc = start(fit_args(data, out, 1000), log, "step", marker)
    wait_until(marker.exists, proc, log, "the middle of step 6")
    proc.send_signal(signal.SIGINT)  # waits for the step to end...
    wait_until(lambda: "stopping after this step" in log.read_text(), proc, log, "the first signal's note")
    proc.send_signal(signal.SIGINT)  # ...unless a second one comes
    assert proc.wait(timeout=WAIT) == 130
    text = log.read_text()
    assert "stopped at once: the checkpoint at step 4 is kept" in text and "Traceback" not in text, text
    # Half of step 6 is in memory (the discriminator moved on); none of it reached the disk.
    assert load_checkpoint(out / "checkpoint.pt")["step"] == PER_EPOCH
    resumed = cli(*fit_args(data, out, 2, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_training_state(out, reference(2))


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one(tmp_path, reference):
    data, out, log, marker = tiny_npz(tmp_path), tmp_path / "run", tmp_path / "fit.log", tmp_path / "paused"
    proc = start(fit_args(data, out, 1000), log, "checkpoint", marker)
    wait_until(marker.exists, proc, log, "the second checkpoint write")
    (torn,) = out.glob(".checkpoint.pt.*.tmp")
    assert torn.stat().st_size > 0  # half of the new checkpoint is on disk, under a hidden name
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)

    assert load_checkpoint(out / "checkpoint.pt")["step"] == PER_EPOCH  # the previous one, whole
    assert torn.exists()
    resumed = cli(*fit_args(data, out, 2, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert leftovers(out) == []  # the dead run's temporary file is cleaned up
    assert_same_training_state(out, reference(2))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose exported generator is about 1.2 MB of ONNX (width 32, one step)."""
    cfg = tiny_config(tmp_path_factory.mktemp("small-run"), steps=1, ema=0.0, width=32)
    return fit(cfg, progress=False)


def versions_on_disk(models: Path, name: str) -> list[str]:
    """Every entry of models/NAME, temporary ones included."""
    return sorted(p.name for p in (models / name).iterdir())


def assert_servable(models: Path) -> None:
    """The service's own checks pass on every version in the repository."""
    validate_repository(models)
    for name, versions in scan(models).items():
        for version, path in versions.items():
            read_spec(path, name, version)


def test_sigkill_during_export_publishes_nothing_and_the_next_export_works(tmp_path, small_run):
    models, log, marker = tmp_path / "models", tmp_path / "export.log", tmp_path / "paused"
    write_model(models, "tiny", 1)
    args = ["export", str(small_run), "--name", "tiny", "--models-dir", str(models)]
    proc = start(args, log, "export", marker)
    wait_until(marker.exists, proc, log, "the export's ONNX file")
    (staging,) = [p for p in (models / "tiny").iterdir() if p.name != "1"]
    assert staging.name.startswith(".tmp-") and (staging / "model.onnx").stat().st_size > 0
    assert list(scan(models)["tiny"]) == [1]  # the service sees only the published version
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)

    assert list(scan(models)["tiny"]) == [1]
    assert_servable(models)
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"exported {models / 'tiny' / '2'}"
    assert versions_on_disk(models, "tiny") == ["1", "2"]  # the dead export's directory is gone
    assert_servable(models)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, smaller than small_run's model; unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    tried = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                           capture_output=True, text=True)
    if tried.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {tried.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def reloads(server_url: str) -> float:
    """The service's count of successful rescans of its repository."""
    text = requests.get(f"{server_url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('gan_model_reloads_total{result="ok"}'))


def test_export_onto_a_full_disk_fails_cleanly_and_the_service_keeps_serving(tmp_path, small_run, full_disk):
    models = full_disk / "models"
    write_model(models, "tiny", 1)
    server = start_gunicorn(tmp_path, GAN_MODELS_DIR=str(models), GAN_WORKERS="1", GAN_RELOAD_INTERVAL="1")
    try:
        def generate() -> requests.Response:
            return requests.post(f"{server.url}/generate", json={"model": "tiny", "seed": 3}, timeout=30)

        before = generate()
        assert before.status_code == 200 and before.headers["X-Model-Version"] == "1"

        done = cli("export", str(small_run), "--name", "tiny", "--models-dir", str(models))
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr
        assert "No space left on device" in lines[0] and "nothing was published" in lines[0]
        assert versions_on_disk(models, "tiny") == ["1"]  # no version, no temporary directory
        assert_servable(models)

        # Once the service has rescanned the repository, it still serves version 1, unchanged.
        seen = reloads(server.url)
        deadline = time.monotonic() + WAIT
        while reloads(server.url) <= seen and time.monotonic() < deadline:
            time.sleep(0.2)  # polling interval, not an assertion
        assert reloads(server.url) > seen, "the service did not rescan its repository"
        after = generate()
        assert after.status_code == 200 and after.headers["X-Model-Version"] == "1"
        assert after.content == before.content
        assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 200
        listed = requests.get(f"{server.url}/models/tiny", timeout=10).json()
        assert listed["versions"] == [1] and listed["default_version"] == 1
    finally:
        log = server.stop()
    assert "Traceback" not in log, log


def test_a_checkpoint_onto_a_full_disk_fails_cleanly_and_keeps_the_previous_one(tmp_path, full_disk):
    data = tiny_npz(tmp_path)
    out = full_disk / "run"
    # Width 8: one checkpoint (0.8 MB) fits the 1 MiB disk, a second beside it does not.
    done = cli(*fit_args(data, out, 3))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    assert "No space left on device" in lines[0] and "previous checkpoint is kept" in lines[0]
    assert load_checkpoint(out / "checkpoint.pt")["step"] == PER_EPOCH
    assert leftovers(out) == []
    shutil.copytree(out, tmp_path / "moved")  # on a disk with room, the run resumes
    resumed = cli(*fit_args(data, tmp_path / "moved", 2, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
