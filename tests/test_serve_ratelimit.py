"""The rate limit per client through real gunicorn over HTTP (shared by the workers), the token
bucket and its table, and the settings."""

from __future__ import annotations

import hashlib
import http.client
import json
import multiprocessing
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from helpers.server import Server, assert_start_refused
from helpers.tiny_models import write_repository

from serve.config import ConfigError, load_settings
from serve.ratelimit import (
    SLOTS,
    TABLE_FILE,
    WAYS,
    BucketTable,
    RateLimit,
    client_address,
    open_limiter,
    parse_proxy_hops,
    parse_rate_limit,
)

TOKEN_A = "token-aaaaaaaaaaaaaaaaaaaa"
TOKEN_B = "token-bbbbbbbbbbbbbbbbbbbb"
HOUR = 3600
CONNECTIONS = 200  # new connections to try before concluding that one worker takes them all


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("ratelimit") / "models")


def host_port(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


class Client:
    """One keep-alive connection, optionally from another loopback address."""

    def __init__(self, server: Server, source: str = "127.0.0.1") -> None:
        host, port = host_port(server)
        self.connection = http.client.HTTPConnection(host, port, timeout=30,
                                                     source_address=(source, 0))

    def get(self, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        self.connection.request("GET", path, headers=headers)
        response = self.connection.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body

    def worker(self) -> int:
        """The pid of the worker holding this connection (/healthz is never limited)."""
        status, _, body = self.get("/healthz")
        assert status == 200
        return json.loads(body)["pid"]

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    for client in opened:
        client.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_limited(status: int, headers: dict[str, str], body: bytes, v2: bool = False) -> None:
    assert status == 429
    retry = int(headers["retry-after"])
    assert 1 <= retry <= HOUR
    error = json.loads(body)["error"]
    if v2:
        assert isinstance(error, str) and "rate limit" in error
    else:
        assert (error["status"], error["code"]) == (429, "rate_limited")


def test_burst_per_token_shared_by_two_workers(
    repo: Path, gunicorn: Callable[..., Server], clients: list[Client]
) -> None:
    # 1 request an hour refills nothing during the test: exactly the burst goes through.
    server = gunicorn(GAN_MODELS_DIR=str(repo), GAN_WORKERS="2", GAN_DEFAULT_MODEL="tiny",
                      GAN_API_TOKEN=f"{TOKEN_A},{TOKEN_B}", GAN_RATE_LIMIT="1/h,4",
                      GAN_KEEPALIVE="60")
    # One keep-alive connection held by each of the two workers.
    by_worker: dict[int, Client] = {}
    for _ in range(CONNECTIONS):
        client = Client(server)
        clients.append(client)
        by_worker.setdefault(client.worker(), client)
        if len(by_worker) == 2:
            break
    assert len(by_worker) == 2, f"only worker {list(by_worker)} took {CONNECTIONS} connections"
    first, second = by_worker.values()

    # Token A's burst of 4, spent on both workers in turn: the 5th is refused by either.
    for client in (first, second, first, second):
        status, _, body = client.get("/models", **bearer(TOKEN_A))
        assert status == 200, body
    for client in (first, second):
        assert_limited(*client.get("/models", **bearer(TOKEN_A)))
        assert_limited(*client.get("/generate?seed=1", **bearer(TOKEN_A)))
        assert_limited(*client.get("/v2/models/tiny", **bearer(TOKEN_A)), v2=True)
    # Token B has a bucket of its own.
    for client in (second, first, second, first):
        assert client.get("/models/tiny", **bearer(TOKEN_B))[0] == 200
    assert_limited(*second.get("/models", **bearer(TOKEN_B)))
    # Exempt routes are never limited; a request without a token is a 401, not a 429.
    for client in (first, second):
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/v2/health/ready"):
            assert client.get(path)[0] == 200, path
        assert client.get("/models")[0] == 401
    spec = requests.get(f"{server.url}/openapi.json", timeout=30).json()
    response = spec["paths"]["/generate"]["post"]["responses"]["429"]
    assert "Retry-After" in response["headers"]
    assert "429" not in spec["paths"]["/healthz"]["get"]["responses"]


def test_by_address_without_auth(
    repo: Path, gunicorn: Callable[..., Server], clients: list[Client]
) -> None:
    server = gunicorn(GAN_MODELS_DIR=str(repo), GAN_WORKERS="1", GAN_DEFAULT_MODEL="tiny",
                      GAN_RATE_LIMIT="1/h,2")
    one, two = Client(server, "127.0.0.1"), Client(server, "127.0.0.2")
    clients += [one, two]
    assert [one.get("/models")[0] for _ in range(2)] == [200, 200]
    assert_limited(*one.get("/models"))
    # X-Forwarded-For is not trusted by default: it does not make another client.
    assert_limited(*one.get("/models", **{"X-Forwarded-For": "203.0.113.9"}))
    # Another address is another client.
    assert [two.get("/models")[0] for _ in range(2)] == [200, 200]
    assert_limited(*two.get("/models"))
    assert one.get("/healthz")[0] == 200


def test_by_forwarded_address_behind_a_trusted_proxy(
    repo: Path, gunicorn: Callable[..., Server], clients: list[Client]
) -> None:
    server = gunicorn(GAN_MODELS_DIR=str(repo), GAN_WORKERS="1", GAN_DEFAULT_MODEL="tiny",
                      GAN_RATE_LIMIT="1/h,2", GAN_TRUSTED_PROXY_HOPS="1")
    proxy = Client(server)
    clients.append(proxy)

    def via_proxy(forwarded: str) -> tuple[int, dict[str, str], bytes]:
        return proxy.get("/models", **{"X-Forwarded-For": forwarded})

    assert [via_proxy("198.51.100.1")[0] for _ in range(2)] == [200, 200]
    assert_limited(*via_proxy("198.51.100.1"))
    # A client's own entries left of the proxy's are not believed.
    assert_limited(*via_proxy("10.0.0.1, 198.51.100.1"))
    assert [via_proxy("198.51.100.2")[0] for _ in range(2)] == [200, 200]
    assert_limited(*via_proxy("198.51.100.2"))


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"GAN_RATE_LIMIT": "10"}, "GAN_RATE_LIMIT must be off or RATE/UNIT[,BURST]"),
        ({"GAN_RATE_LIMIT": "0/s"}, "GAN_RATE_LIMIT must be off"),
        ({"GAN_RATE_LIMIT": "10/s,0"}, "GAN_RATE_LIMIT must be off"),
        ({"GAN_RATE_LIMIT": "10/d"}, "GAN_RATE_LIMIT must be off"),
        ({"GAN_TRUSTED_PROXY_HOPS": "-1"}, "GAN_TRUSTED_PROXY_HOPS must be an integer from 0 to 16"),
    ],
)
def test_bad_rate_limit_settings_stop_gunicorn(repo: Path, env: dict[str, str], fragment: str) -> None:
    assert_start_refused(fragment, GAN_MODELS_DIR=str(repo), **env)


# --- Units: parsing, the bucket, the table -------------------------------------------------


def test_rate_limit_parsing() -> None:
    assert parse_rate_limit("off") is None
    assert parse_rate_limit("10/s") == RateLimit(10.0, "s", 10)
    assert parse_rate_limit(" 10/S , 25 ") == RateLimit(10.0, "s", 25)
    assert parse_rate_limit("600/m") == RateLimit(600.0, "m", 10)  # burst: a second's worth
    assert parse_rate_limit("1/h").burst == 1
    assert parse_rate_limit("0.5/s,3") == RateLimit(0.5, "s", 3)
    assert parse_rate_limit("90/m").rate == 1.5
    assert str(parse_rate_limit("600/m,20")) == "600 requests per minute (burst 20)"
    for bad in ("", "on", "10", "10/", "/s", "-1/s", "0/s", "0.0/m", "10/s,", "10/s,0", "10/s,-2",
                "10/s,1.5", "10/day", "1e3/s", "10/s/s"):
        with pytest.raises(ValueError, match="GAN_RATE_LIMIT"):
            parse_rate_limit(bad)


def test_proxy_hops_parsing() -> None:
    assert [parse_proxy_hops(raw) for raw in ("0", " 1 ", "16")] == [0, 1, 16]
    for bad in ("", "-1", "17", "one", "1.0", "²"):
        with pytest.raises(ValueError, match="GAN_TRUSTED_PROXY_HOPS"):
            parse_proxy_hops(bad)


def test_settings_are_checked_and_off_by_default() -> None:
    settings = load_settings({})
    assert (settings.rate_limit, settings.trusted_proxy_hops) == (None, 0)
    assert load_settings({"GAN_RATE_LIMIT": "5/s,9"}).rate_limit == RateLimit(5.0, "s", 9)
    with pytest.raises(ConfigError, match="GAN_RATE_LIMIT"):
        load_settings({"GAN_RATE_LIMIT": "fast"})


def test_client_address() -> None:
    environ = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "10.0.0.1, 192.0.2.7,192.0.2.8"}
    assert client_address(environ, 0) == "127.0.0.1"
    assert client_address(environ, 1) == "192.0.2.8"
    assert client_address(environ, 2) == "192.0.2.7"
    assert client_address(environ, 3) == "10.0.0.1"
    assert client_address(environ, 4) == "127.0.0.1"  # fewer entries than proxies: not believed
    assert client_address({"REMOTE_ADDR": "127.0.0.1"}, 1) == "127.0.0.1"
    assert client_address({"REMOTE_ADDR": "::1", "HTTP_X_FORWARDED_FOR": " , "}, 1) == "::1"


def test_bucket_burst_refill_and_retry_after() -> None:
    table = BucketTable(RateLimit(2.0, "s", 3))  # 2 a second, 3 at once
    assert [table.take(b"a", now=100.0) for _ in range(3)] == [0, 0, 0]
    assert table.take(b"a", now=100.0) == 1  # 0.5 s to the next token: rounded up to 1
    assert table.take(b"b", now=100.0) == 0  # another client
    assert table.take(b"a", now=100.5) == 0  # refilled one
    assert table.take(b"a", now=100.5) == 1
    assert [table.take(b"a", now=110.0) for _ in range(4)] == [0, 0, 0, 1]  # full again, not more
    slow = BucketTable(RateLimit(1.0, "m", 1))
    assert slow.take(b"a", now=0.0) == 0
    assert slow.take(b"a", now=0.0) == 60
    assert slow.take(b"a", now=45.2) == 15  # whole seconds, rounded up
    assert slow.take(b"a", now=60.0) == 0


def test_refused_requests_do_not_count() -> None:
    table = BucketTable(RateLimit(1.0, "s", 1))
    assert table.take(b"a", now=0.0) == 0
    assert [table.take(b"a", now=0.1 * i) for i in range(1, 10)] == [1] * 9
    assert table.take(b"a", now=1.0) == 0  # refused ones took nothing


def keys_in_one_set(count: int) -> list[bytes]:
    """Client keys whose buckets all fall into the table's first set of slots."""
    keys = []
    for i in range(1_000_000):
        key = b"key %d" % i
        digest = hashlib.blake2b(key, digest_size=16).digest()
        if int.from_bytes(digest[:8], "little") % (SLOTS // WAYS) == 0:
            keys.append(key)
            if len(keys) == count:
                return keys
    raise AssertionError("no such keys")


def test_memory_is_bounded_and_a_full_set_forgets_the_least_recent(tmp_path: Path) -> None:
    path = tmp_path / TABLE_FILE
    table = BucketTable(RateLimit(1.0, "h", 1), path)
    size = path.stat().st_size
    assert size == 64 + SLOTS * 32
    # Far more clients than slots: none is ever refused its first request, the file stays.
    assert [i for i in range(4 * SLOTS) if table.take(b"client %d" % i, now=1.0)] == []
    assert path.stat().st_size == size

    table = BucketTable(RateLimit(1.0, "h", 1))
    keys = keys_in_one_set(WAYS + 1)
    for t, key in enumerate(keys[:WAYS]):  # fill the set, each bucket spent
        assert table.take(key, now=float(t)) == 0
    assert table.take(keys[0], now=8.0) > 0  # keys[0] is now the most recently seen
    assert table.take(keys[WAYS], now=9.0) == 0  # a 9th client takes the slot of keys[1]
    assert table.take(keys[1], now=10.0) == 0  # forgotten: a full bucket again (lenient)
    assert table.take(keys[0], now=10.0) > 0  # kept: still refused
    assert table.take(keys[WAYS], now=10.0) > 0


def test_table_is_shared_through_its_file(tmp_path: Path) -> None:
    path = tmp_path / TABLE_FILE
    limit = RateLimit(1.0, "h", 2)
    one, two = BucketTable(limit, path, owner=7), BucketTable(limit, path, owner=7)
    assert one.take(b"a", now=0.0) == 0
    assert two.take(b"a", now=0.0) == 0
    assert one.take(b"a", now=0.0) > 0 and two.take(b"a", now=0.0) > 0
    # The same owner and limit (a worker replaced after a crash or a HUP) keep the buckets ...
    assert BucketTable(limit, path, owner=7).take(b"a", now=0.0) > 0
    # ... a new master, or a new limit, starts afresh.
    assert BucketTable(limit, path, owner=8).take(b"a", now=0.0) == 0
    assert BucketTable(RateLimit(1.0, "h", 3), path, owner=8).take(b"a", now=0.0) == 0


def test_a_clock_from_before_a_reboot_starts_afresh() -> None:
    table = BucketTable(RateLimit(1.0, "h", 1))
    assert table.take(b"a", now=5000.0) == 0
    assert table.take(b"a", now=5000.0) > 0
    assert table.take(b"a", now=10.0) == 0


def _take_many(path: str, count: int, results: multiprocessing.Queue) -> None:
    table = BucketTable(RateLimit(1.0, "h", 50), Path(path), owner=1)
    results.put(sum(1 for _ in range(count) if table.take(b"shared") == 0))


def test_workers_never_exceed_the_burst_together(tmp_path: Path) -> None:
    path = tmp_path / TABLE_FILE
    BucketTable(RateLimit(1.0, "h", 50), path, owner=1)  # created before the "workers" start
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    processes = [context.Process(target=_take_many, args=(str(path), 40, results))
                 for _ in range(4)]
    for process in processes:
        process.start()
    allowed = sum(results.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert allowed == 50  # 160 asked, 4 processes on one table: exactly the burst went through


def test_limiter_uses_the_metrics_directory_under_gunicorn(tmp_path: Path) -> None:
    limit = RateLimit(1.0, "h", 1)
    assert open_limiter(None, 0, {}) is None
    own = open_limiter(limit, 0, {})
    assert own is not None and own.table.path is None
    shared = open_limiter(limit, 0, {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert shared is not None and shared.table.path == tmp_path / TABLE_FILE
    assert shared.check(shared.address_key({"REMOTE_ADDR": "192.0.2.1"})) == 0
    assert shared.check(shared.address_key({"REMOTE_ADDR": "192.0.2.1"})) > 0
    assert shared.check(shared.address_key({"REMOTE_ADDR": "192.0.2.2"})) == 0
