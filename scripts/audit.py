"""Audit the serving dependencies for known vulnerabilities with pip-audit.

    .venv/bin/python scripts/audit.py [-r serve/requirements.txt] [--service pypi|osv]

Audits the packages a requirements file pins and every package they depend on, at the
versions installed in this interpreter's environment (so Werkzeug, Jinja2 and the like are
audited with Flask). pip-audit gets the whole list pinned, with ``--no-deps --disable-pip``, so
it resolves and installs nothing, and answers in JSON, which this script reads rather than its
exit status alone: pip-audit exits 0 and prints "No known vulnerabilities found" even when it
could not look up a single package.

Exit status and the last line printed:

- 0: every package was looked up and none has a known vulnerability;
- 1: a known vulnerability (each is listed), or the audit failed for another reason;
- 75 (EX_TEMPFAIL): the audit did not run, or not for every package, because the vulnerability
  service cannot be reached or has no data for them: a one-line WARNING, and not a pass.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

PASSED, FAILED, NOT_RUN = 0, 1, 75
ROOT = Path(__file__).resolve().parent.parent
# What pip-audit prints when it cannot reach the service (its fatal tip, or the traceback of a
# network error) or when the service answers with an HTTP error.
_UNREACHABLE = re.compile(
    r"your network may be blocking this service|Could not connect to PyPI|ConnectionError|"
    r"ConnectTimeout|ReadTimeout|Max retries exceeded|NameResolutionError|Failed to resolve|"
    r"Connection refused|Network is unreachable|SSLError|ProxyError|HTTPError"
)
_NOT_FOUND = "Dependency not found"


class AuditError(Exception):
    """The audit could not be set up (a requirements file or an environment it cannot use)."""


def pinned_requirements(path: Path) -> list[Requirement]:
    """The requirements of ``path``, each pinned with ``==`` (comments and blank lines skipped)."""
    requirements = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            requirement = Requirement(text)
        except InvalidRequirement as e:
            raise AuditError(f"{path}:{number}: {e}") from None
        specifiers = list(requirement.specifier)
        if len(specifiers) != 1 or specifiers[0].operator != "==":
            raise AuditError(f"{path}:{number}: {text!r} is not pinned with ==")
        requirements.append(requirement)
    return requirements


def closure(requirements: list[Requirement]) -> dict[str, str]:
    """Canonical name -> version of the requirements (their pinned versions) and of every
    package they depend on (the versions installed here), markers and extras applied."""
    versions = {canonicalize_name(r.name): next(iter(r.specifier)).version for r in requirements}
    pending = [(r.name, frozenset(r.extras)) for r in requirements]
    seen: set[tuple[str, frozenset[str]]] = set()
    missing = []
    while pending:
        name, extras = pending.pop()
        if (canonicalize_name(name), extras) in seen:
            continue
        seen.add((canonicalize_name(name), extras))
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
            continue
        versions.setdefault(canonicalize_name(name), distribution.version)
        for text in distribution.requires or []:
            dependency = Requirement(text)
            if dependency.marker is not None and not any(
                dependency.marker.evaluate({"extra": extra}) for extra in {"", *extras}
            ):
                continue
            pending.append((dependency.name, frozenset(dependency.extras)))
    if missing:
        raise AuditError(
            f"not installed here, so their dependencies are unknown: {', '.join(sorted(missing))} "
            "(install the requirements first)"
        )
    return versions


def run_pip_audit(command: list[str], versions: dict[str, str], service: str) -> tuple[int, str, dict | None]:
    """pip-audit's exit status, standard error and JSON report (None if it wrote none)."""
    with tempfile.TemporaryDirectory(prefix="audit-") as directory:
        pinned = Path(directory) / "requirements.txt"
        pinned.write_text("".join(f"{name}=={version}\n" for name, version in sorted(versions.items())))
        report = Path(directory) / "report.json"
        try:
            result = subprocess.run(
                [*command, "-r", str(pinned), "--no-deps", "--disable-pip", "-s", service,
                 "-f", "json", "-o", str(report), "--progress-spinner", "off", "--aliases", "on",
                 "--desc", "off"],
                capture_output=True, text=True, timeout=600,
            )
        except FileNotFoundError:
            raise AuditError(f"{command[0]} is not installed (requirements-dev.txt pins pip-audit)") from None
        except subprocess.TimeoutExpired:
            return -1, "pip-audit did not finish within 600 s (ReadTimeout)", None
        try:
            data = json.loads(report.read_text())
        except (OSError, ValueError):
            data = None
    return result.returncode, result.stderr, data


def last_line(text: str) -> str:
    """The last non-empty line of ``text`` (pip-audit's fatal message or an exception)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(nothing on standard error)"


def judge(status: int, stderr: str, data: dict | None, service: str) -> tuple[int, list[str]]:
    """The exit status and the lines to print for one pip-audit run."""
    if data is None or not isinstance(data.get("dependencies"), list):
        if _UNREACHABLE.search(stderr):
            reason = next((line.strip() for line in reversed(stderr.splitlines())
                           if _UNREACHABLE.search(line)), last_line(stderr))
            return NOT_RUN, [f"WARNING: dependency audit did not run: the vulnerability service "
                             f"({service}) cannot be reached: {reason[:300]}; vulnerabilities "
                             "were NOT checked"]
        return FAILED, [f"dependency audit: FAILED: pip-audit exited with {status}: "
                        f"{last_line(stderr)[:300]}"]
    dependencies = data["dependencies"]
    vulnerable = [d for d in dependencies if d.get("vulns")]
    skipped = [d for d in dependencies if "skip_reason" in d]
    audited = len(dependencies) - len(skipped)
    if vulnerable:
        lines = []
        for dependency in vulnerable:
            for vuln in dependency["vulns"]:
                ids = ", ".join([vuln["id"], *vuln.get("aliases", [])])
                fixed = ", ".join(vuln.get("fix_versions", [])) or "no fixed version yet"
                lines.append(f"  {dependency['name']} {dependency['version']}: {ids} (fixed in: {fixed})")
        count = sum(len(d["vulns"]) for d in vulnerable)
        lines.append(f"dependency audit: FAILED: {count} known vulnerabilities in "
                     f"{len(vulnerable)} of {audited} packages audited")
        return FAILED, lines
    if status != 0:
        return FAILED, [f"dependency audit: FAILED: pip-audit exited with {status} without "
                        f"reporting a vulnerability: {last_line(stderr)[:300]}"]
    if not dependencies:
        return FAILED, ["dependency audit: FAILED: pip-audit audited no package"]
    if skipped:
        names = ", ".join(d["name"] for d in skipped)
        why = last_line(skipped[0]["skip_reason"])
        if all(_NOT_FOUND in d["skip_reason"] for d in skipped):
            why = (f"the vulnerability service ({service}) had no record of them (pip-audit: "
                   f"\"{_NOT_FOUND} on PyPI\"), as where its API is out of reach and only the "
                   "package index is")
        if not audited:
            return NOT_RUN, [f"WARNING: dependency audit did not run: none of the {len(skipped)} "
                             f"packages was looked up ({names}): {why}; vulnerabilities were "
                             "NOT checked"]
        return NOT_RUN, [f"WARNING: dependency audit incomplete: {len(skipped)} of "
                         f"{len(dependencies)} packages not looked up ({names}): {why}; those were "
                         f"NOT checked, the other {audited} have no known vulnerabilities"]
    return PASSED, [f"dependency audit: passed: {audited} packages audited ({service}), "
                    "no known vulnerabilities"]


def main(argv: list[str] | None = None) -> int:
    """Run the audit; see the module's docstring for the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-r", "--requirement", type=Path, action="append",
                        help="a pinned requirements file (default: serve/requirements.txt)")
    parser.add_argument("-s", "--service", choices=("pypi", "osv"), default="pypi",
                        help="the vulnerability service pip-audit asks (default: pypi)")
    parser.add_argument("--pip-audit", default=str(Path(sys.executable).parent / "pip-audit"),
                        help="the pip-audit command (default: the one beside this Python)")
    args = parser.parse_args(argv)
    files = args.requirement or [ROOT / "serve" / "requirements.txt"]
    try:
        requirements = [r for path in files for r in pinned_requirements(path)]
        versions = closure(requirements)
        status, stderr, data = run_pip_audit([args.pip_audit], versions, args.service)
    except (AuditError, OSError) as e:
        print(f"dependency audit: FAILED: {e}", flush=True)
        return FAILED
    code, lines = judge(status, stderr, data, args.service)
    print("\n".join(lines), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
