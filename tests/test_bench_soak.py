"""bench/soak.py: its verdict, its error counting, and a short soak of the real service and the
plain baseline it starts on the committed models."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
from helpers.server import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("soak", ROOT / "bench" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def growth_row(pid, rss=0.0, anon=0.0, pss=0.0, replaced=False):
    return {"pid": pid, "replaced": replaced, "rss_growth_pct": rss, "anon_growth_pct": anon,
            "pss_growth_pct": pss}


def test_verdict_fails_on_errors_growth_and_replaced_workers(soak):
    # PSS does not decide: other processes' starts and exits move it.
    assert soak.verdict(0, [growth_row(1, 4.9, 4.9, pss=40.0), growth_row(2)], 5.0) == []
    assert soak.verdict(3, [growth_row(1)], 5.0) == ["3 errors"]
    assert soak.verdict(0, [growth_row(1, rss=5.0)], 5.0) == ["worker 1 RSS grew +5.0% (limit 5%)"]
    assert soak.verdict(0, [growth_row(1, anon=7.3)], 5.0) == ["worker 1 anon grew +7.3% (limit 5%)"]
    assert soak.verdict(1, [growth_row(7, replaced=True)], 5.0) == [
        "1 error", "worker 7 exited or was replaced during the soak"]


def test_connection_errors_are_counted(soak):
    mix = soak.Mix(("m",), post=True)
    load = soak.drive(f"http://127.0.0.1:{free_port()}", mix, 1, 0.2, 0, 0)  # nothing listens there
    assert load.requests == 0
    assert load.errors["ConnectionRefusedError"] == load.error_count > 0


def test_mix_sends_every_kind_with_new_seeds(soak):
    import random

    mix, rng = soak.Mix(("a", "b"), post=True), random.Random(0)
    requests = [mix.request(rng, i * soak.SEED_STRIDE) for i in range(2000)]
    kinds = {kind for kind, *_ in requests}
    assert kinds == {f"{m} n={n}" for m in ("GET", "POST") for n in (1, 16, 64)}
    share_n1 = sum(kind.endswith(" n=1") for kind, *_ in requests) / len(requests)
    assert 0.85 < share_n1 < 0.95  # 90% drawn
    seeds = []
    for _, method, path, body in requests:
        if method == "POST":
            seeds += json.loads(body)["seeds"]
        else:
            query = dict(part.split("=") for part in path.split("?")[1].split("&"))
            seeds += range(int(query["seed"]), int(query["seed"]) + int(query["n"]))
    assert len(seeds) == len(set(seeds))  # no seed asked for twice


def test_short_soak_of_the_service_and_the_plain_baseline(soak, tmp_path, capsys):
    out = tmp_path / "soak.jsonl"
    code = soak.main(["--duration", "2", "--concurrency", "2", "--warmup", "0.5", "--sample-every", "0.5",
                      "--out", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    printed = capsys.readouterr().out
    assert {r["kind"] for r in records} == {"run", "memory", "load", "growth", "result"}

    loads = {r["target"]: r for r in records if r["kind"] == "load"}
    assert set(loads) == {"service", "plain"}
    for r in loads.values():
        assert r["requests"] > 0 and r["requests_per_s"] > 0, r
        assert r["errors"] == r["warmup_errors"] == 0, r
        assert math.isfinite(r["p50_ms"]) and r["p99_ms"] >= r["p50_ms"] > 0, r
        assert sum(k["requests"] for k in r["by_kind"].values()) == r["requests"]
    assert {k.split()[0] for k in loads["service"]["by_kind"]} <= {"GET", "POST"}
    assert {k.split()[0] for k in loads["plain"]["by_kind"]} == {"GET"}

    for target in ("service", "plain"):
        rows = [r for r in records if r["kind"] == "growth" and r["target"] == target]
        assert len(rows) >= 1
        for row in rows:
            samples = [r for r in records if r["kind"] == "memory" and r["pid"] == row["pid"]]
            assert samples[0]["phase"] == "start" and samples[-1]["phase"] == "end"
            assert len(samples) == row["samples"] >= 3  # start, at least one on the way, end
            for key in ("pss", "rss", "anon"):
                first, last = samples[0][f"{key}_mib"], samples[-1][f"{key}_mib"]
                assert first > 0 and row[f"{key}_growth_pct"] == pytest.approx((last - first) / first * 100)
            assert samples[0]["rss_mib"] >= max(samples[0]["pss_mib"], samples[0]["anon_mib"])

    (result,) = [r for r in records if r["kind"] == "result"]
    service_rows = [r for r in records if r["kind"] == "growth" and r["target"] == "service"]
    assert result["reasons"] == soak.verdict(0, service_rows, 5.0)
    assert code == (0 if result["ok"] else 1)
    assert "service / plain: req/s" in printed and "anon start" in printed
