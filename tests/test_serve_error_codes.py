"""One list of error codes: every code the service can answer is in serve.errors.ERROR_CODES,
and docs/serving.md's Errors table documents exactly the codes of that list."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from serve.errors import ERROR_CODES, ApiError, checked_code

ROOT = Path(__file__).resolve().parents[1]
# The calls that take a code, and the position of the code among their arguments.
_CODE_ARGUMENT = {"ApiError": 1, "checked_code": 1, "refuse": 1, "error": 1, "_fail": 2}
_CODE_TABLES = {"_CODES", "_HTTP_CODES", "_REGISTRY_CODES"}


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _literals(node: ast.expr) -> list[str]:
    """A code written as a string literal (or either branch of a conditional expression, or
    the default of a ``.get``); a computed code has none here: ApiError checks it when made."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _literals(node.body) + _literals(node.orelse)
    if isinstance(node, ast.Call) and _name(node.func) == "get" and len(node.args) == 2:
        return _literals(node.args[1])  # table.get(status, "default_code")
    return []


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def codes_in_source() -> dict[str, set[str]]:
    """Every string literal that serve/*.py passes as an error code, by file."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "serve").glob("*.py")):
        codes: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and _name(node.func) in _CODE_ARGUMENT:
                position = _CODE_ARGUMENT[_name(node.func) or ""]
                if len(node.args) > position:
                    codes.update(_literals(node.args[position]))
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "x-error-codes":
                        assert isinstance(value, ast.Dict)  # {keyword: code}
                        codes.update(s for v in value.values for s in _strings(v))
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(_name(t) in _CODE_TABLES for t in targets) and node.value is not None:
                    codes.update(s for s in _strings(node.value) if s != "x-error-codes")
        if codes:
            found[path.name] = codes
    return found


def documented_codes() -> dict[str, str]:
    """The codes of docs/serving.md's Errors table, each with its row's status column."""
    text = (ROOT / "docs" / "serving.md").read_text(encoding="utf-8")
    section = text.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not line.startswith("|") or set(cells[0]) <= {"-"} or cells[0] == "Status":
            continue
        for code in re.findall(r"`([a-z0-9_]+)`", cells[1]):
            assert code not in rows, f"{code} is in the Errors table twice"
            rows[code] = cells[0]
    return rows


def test_the_scan_finds_codes_in_each_place_that_answers_errors() -> None:
    found = codes_in_source()
    # The probe: the scan sees the app's, the registry's mapping, the schema's, the guard's
    # and the worker's codes (were it blind, the next test would pass vacuously).
    assert {"internal_error", "not_found", "unknown_model"} <= found["app.py"]
    assert {"invalid_source", "out_of_range", "malformed_json"} <= found["schema.py"]
    assert {"missing_token", "rate_limited"} <= found["auth.py"]
    assert {"timeout", "request_timeout"} <= found["worker.py"]
    assert "v2_bad_request" in found["v2.py"]


def test_every_code_the_service_can_answer_is_in_the_list() -> None:
    unlisted = {
        f"{file}: {code}"
        for file, codes in codes_in_source().items()
        for code in codes
        if code not in ERROR_CODES
    }
    assert not unlisted


def test_every_listed_code_is_answered_somewhere() -> None:
    used = set().union(*codes_in_source().values())
    assert set(ERROR_CODES) - used == set()


def test_the_errors_table_documents_exactly_the_list() -> None:
    documented = documented_codes()
    assert sorted(set(ERROR_CODES) - set(documented)) == []  # listed, not documented
    assert sorted(set(documented) - set(ERROR_CODES)) == []  # documented, not listed
    for code, status in documented.items():
        wanted = ERROR_CODES[code].status
        assert status == ("other" if wanted is None else str(wanted)), code


def test_every_code_has_a_meaning() -> None:
    assert all(entry.meaning for entry in ERROR_CODES.values())


def test_api_error_refuses_a_code_not_in_the_list_or_with_another_status() -> None:
    assert ApiError(404, "unknown_model", "m").code == "unknown_model"
    with pytest.raises(ValueError, match="not in ERROR_CODES"):
        ApiError(400, "no_such_code", "m")
    with pytest.raises(ValueError, match="not in ERROR_CODES"):
        ApiError(500, "unknown_model", "m")
    assert checked_code(418, "http_error") == "http_error"  # any status
