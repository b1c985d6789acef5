"""bench/peers.py: its wrk output parser, and a short run of the whole benchmark against the
service and the plain app it starts, with each load generator."""

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "mnist-dcgan" / "7"

# Captured from `wrk -t1 -c8 -d2s --latency -s bench/generate.lua URL` (wrk 4.1.0), with a
# socket errors line in wrk's format added.
WRK_OUTPUT = """\
Running 2s test @ http://127.0.0.1:37613/
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   165.93ms   18.32ms 222.85ms   92.55%
    Req/Sec    46.15      7.31    50.00     85.00%
  Latency Distribution
     50%  167.40ms
     75%  171.80ms
     90%  175.90ms
     99%     1.02s
  94 requests in 2.03s, 1.29MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 3
Requests/sec:     46.22
Transfer/sec:    646.99KB
"""


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("peers", ROOT / "bench" / "peers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_parse_wrk_reads_rate_latency_and_errors(peers):
    result = peers.parse_wrk(WRK_OUTPUT)
    assert result.requests == 94
    assert result.seconds == pytest.approx(2.03)
    assert result.requests_per_s == pytest.approx(46.22)
    assert result.p50_ms == pytest.approx(167.4)
    assert result.p99_ms == pytest.approx(1020.0)
    assert (result.non_2xx, result.socket_errors, result.errors) == (3, 3, 6)
    assert result.bytes_read == round(1.29 * 2**20)


def test_parse_wrk_without_error_lines_and_in_microseconds(peers):
    text = WRK_OUTPUT.replace("  Socket errors: connect 0, read 2, write 0, timeout 1\n", "")
    text = text.replace("  Non-2xx or 3xx responses: 3\n", "").replace("167.40ms", "812.00us")
    result = peers.parse_wrk(text)
    assert result.errors == 0
    assert result.p50_ms == pytest.approx(0.812)


def test_parse_wrk_refuses_other_output(peers):
    with pytest.raises(peers.BenchError, match="cannot read wrk's output"):
        peers.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def run_bench(peers, tmp_path, monkeypatch, load, scenarios, duration, warmup):
    """Run peers.main on the committed model and return the JSON lines it wrote."""
    out = tmp_path / "peers.jsonl"
    argv = ["--model", str(MODEL), "--duration", str(duration), "--rounds", "1", "--warmup", str(warmup),
            "--scenarios", scenarios, "--load", load, "--json", str(out)]
    assert peers.main(argv) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def check_records(records, scenarios, load):
    kinds = {r["kind"] for r in records}
    assert kinds == {"run", "check", "load", "memory", "cold_start"}
    (run,) = [r for r in records if r["kind"] == "run"]
    assert (run["model"], run["version"], run["loader"]) == ("mnist-dcgan", 7, load)
    assert set(run["targets"]) == {"service", "plain"}

    (check,) = [r for r in records if r["kind"] == "check"]
    # the same generator, batched (plain) or one sample at a time (service): at most rounding apart
    assert check["target"] == "plain" and check["pixels"] > 0 and check["max_abs_diff"] <= 1

    loads = [r for r in records if r["kind"] == "load"]
    assert {(r["scenario"], r["target"]) for r in loads} == {
        (s, t) for s in scenarios for t in ("service", "plain")
    }
    for r in loads:
        assert r["requests"] > 0 and r["requests_per_s"] > 0, r
        assert r["errors"] == r["non_2xx"] == r["socket_errors"] == 0, r
        assert math.isfinite(r["p50_ms"]) and r["p99_ms"] >= r["p50_ms"] > 0, r
        assert r["images_per_s"] == pytest.approx(r["requests_per_s"] * r["n"])
        assert r["bytes_read"] > 0 and r["loader"] == load

    memory = {r["target"]: r for r in records if r["kind"] == "memory"}
    assert set(memory) == {"service", "plain"}
    for r in memory.values():
        assert r["processes"] >= 2  # the gunicorn master and its workers
        assert r["rss_mib"] >= r["pss_mib"] > 0

    cold = {r["target"]: r for r in records if r["kind"] == "cold_start"}
    assert set(cold) == {"service", "plain"}
    assert all(0 < r["ready_s"] <= r["first_image_s"] for r in cold.values())


def test_python_load_generator(peers, tmp_path, monkeypatch, capsys):
    records = run_bench(peers, tmp_path, monkeypatch, "python", "n1-c1,hello-c8", 0.5, 0.2)
    check_records(records, ["n1-c1", "hello-c8"], "python")
    printed = capsys.readouterr().out
    assert "service/plain req/s" in printed and "PSS" in printed


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_load_generator(peers, tmp_path, monkeypatch):
    records = run_bench(peers, tmp_path, monkeypatch, "wrk", "n1-c1", 1, 0)
    check_records(records, ["n1-c1"], "wrk")
