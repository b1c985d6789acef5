"""What the serving processes import: never torch or the training package; no onnxruntime in
gunicorn's master, which forks the workers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_after(code: str, models_dir: Path) -> dict:
    """Run ``code`` in a fresh interpreter at the repository root; return its JSON output."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"GAN_MODELS_DIR": str(models_dir), "GAN_METRICS_DIR": str(models_dir.parent / "metrics"),
             "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.splitlines()[-1])


def test_app_imports_neither_torch_nor_train(models_dir: Path) -> None:
    out = imported_after(
        "import json, sys\n"
        "from serve.app import create_app\n"
        "create_app().test_client().post('/generate', json={'seed': 1, 'model': 'tiny'})\n"
        "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))",
        models_dir,
    )
    assert "torch" not in out and "train" not in out
    assert "onnxruntime" in out  # the probe works: the app did load a model


def test_gunicorn_master_does_not_load_onnxruntime(models_dir: Path) -> None:
    out = imported_after(
        "import json, runpy, sys\n"
        "config = runpy.run_path('serve/gunicorn.conf.py')\n"
        "class Log:\n"
        "    def info(self, *a): pass\n"
        "    def error(self, *a): raise SystemExit(a)\n"
        "class Cfg: workers = 1\n"
        "class Server: log = Log(); cfg = Cfg()\n"
        "config['on_starting'](Server())\n"
        "print(json.dumps({'modules': sorted(sys.modules), 'preload': config['preload_app'],\n"
        "                  'app': config['wsgi_app']}))",
        models_dir,
    )
    assert not any(m.startswith(("onnxruntime", "torch")) for m in out["modules"])
    assert out["preload"] is False
    assert out["app"] == "serve.app:create_app()"
