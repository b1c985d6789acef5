"""Local paths out of what the service shows: a model.json names the machine it was trained on.

Training and evaluation record where their data, runs and reports were (``training.config``,
the ``python -m train ...`` commands in ``training.command`` and ``training.resumed``,
``metrics.generator``). Those say something about the host that trained the model and nothing
a client of the service needs, so ``GET /models/<name>`` shows them as ``HIDDEN`` unless
``GAN_SHOW_PATHS=on``.
"""

from __future__ import annotations

import re
from typing import Any

HIDDEN = "<hidden>"
# The sections of model.json that training and evaluation write; the rest describes the graph.
_SECTIONS = ("training", "metrics")
# Fields whose value is a path, wherever they appear in those sections (the train CLI's options).
_PATH_KEYS = frozenset(
    {"data", "test_data", "out", "run", "checkpoint", "model", "models_dir", "metrics", "json",
     "classifier", "generator", "path", "dir", "root"}
)
# Options of the train CLI that take a path, as written in a recorded command.
_PATH_OPTIONS = ("--data", "--test-data", "--out", "--checkpoint", "--model", "--models-dir",
                 "--metrics", "--json", "--classifier")
_OPTION_VALUE_RE = re.compile(
    r"(?P<option>" + "|".join(re.escape(o) for o in _PATH_OPTIONS) + r")(?P<sep>=|[ \t]+)"
    r"""(?P<value>'[^']*'|"[^"]*"|[^\s'"]+)"""
)
# Any other word of a command with a path separator in it (a positional run directory).
_PATH_WORD_RE = re.compile(r"""(?<!\S)(?:'[^']*[/\\][^']*'|"[^"]*[/\\][^"]*"|[^\s'"]*[/\\][^\s'"]*)""")


def hide_paths(meta: dict[str, Any]) -> dict[str, Any]:
    """A copy of a model.json with the local paths of its training and metrics sections hidden."""
    shown = dict(meta)
    for section in _SECTIONS:
        if section in shown:
            shown[section] = _hide(shown[section], None)
    return shown


def _hide(value: Any, key: str | None) -> Any:
    if isinstance(value, dict):
        return {k: _hide(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_hide(v, key) for v in value]
    if not isinstance(value, str):
        return value
    if key in _PATH_KEYS:
        return HIDDEN
    if any(c.isspace() for c in value):  # a command line: hide its path arguments only
        value = _OPTION_VALUE_RE.sub(lambda m: f"{m['option']}{m['sep']}{HIDDEN}", value)
        return _PATH_WORD_RE.sub(HIDDEN, value)
    if "/" in value or "\\" in value:
        return HIDDEN
    return value
