"""The gunicorn worker: whole requests only, keep-alive, slow clients never hold a worker."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from helpers.server import Server, start_gunicorn
from helpers.tiny_models import write_model, write_repository

from serve.worker import ClientError, frame

LIMITS = {"max_head": 1000, "max_line": 100, "max_body": 50}


def framed(data: bytes) -> int | None:
    return frame(data, **LIMITS).end


# --- Framing -----------------------------------------------------------------------------
def test_frame_waits_for_the_whole_head_and_body() -> None:
    request = b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
    assert framed(request) == len(request)
    assert framed(request[:-1]) is None
    assert framed(request[:20]) is None
    assert framed(request + b"GET / HTTP/1.1\r\n") == len(request)  # a pipelined next request
    assert framed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == len(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_frame_chunked_bodies() -> None:
    head = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\n\r\n"
    assert framed(head + body) == len(head + body)
    for cut in range(len(body)):
        assert framed(head + body[:cut]) is None
    trailers = b"5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n"
    assert framed(head + trailers) == len(head + trailers)
    with pytest.raises(ClientError) as e:
        framed(head + b"zz\r\n")
    assert e.value.status == 400


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"POST /x HTTP/1.1\r\nContent-Length: 51\r\n\r\n", 413),
        (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n" + b"a" * 32 + b"\r\n20\r\n", 413),
        (b"GET /" + b"a" * 200, 414),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200, 431),
    ],
)
def test_frame_refuses_what_exceeds_the_limits(data: bytes, status: int) -> None:
    with pytest.raises(ClientError) as e:
        framed(data)
    assert e.value.status == status


def test_frame_reports_expect_continue_until_the_body_is_in() -> None:
    head = b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    waiting = frame(head, **LIMITS)
    assert waiting.end is None and waiting.expects_continue


# --- Through gunicorn --------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, gunicorn: Callable[..., Server]) -> Server:
    repo = write_repository(tmp_path_factory.mktemp("worker") / "models")
    return gunicorn(
        GAN_MODELS_DIR=str(repo), GAN_WORKERS="2", GAN_DEFAULT_MODEL="tiny",
        GAN_CLIENT_TIMEOUT="2", GAN_MAX_BODY_BYTES="4096",
    )


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def exchange(server: Server, data: bytes, timeout: float = 30) -> bytes:
    """Send raw bytes on a new connection; everything the server sends until it closes."""
    with socket.create_connection(address(server), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def json_error(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def test_keep_alive_serves_requests_on_one_connection(server: Server) -> None:
    connection = http.client.HTTPConnection(*address(server), timeout=30)
    connection.connect()
    local = connection.sock.getsockname()
    bodies = []
    for seed in (1, 2, 1):
        connection.request("GET", f"/generate?seed={seed}")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Connection") == "keep-alive"
        bodies.append(response.read())
    assert connection.sock.getsockname() == local  # never reconnected
    assert bodies[0] == bodies[2] != bodies[1]
    connection.close()


def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    request = "GET /generate?seed={} HTTP/1.1\r\nHost: x\r\n{}\r\n"
    data = (request.format(1, "") + request.format(2, "Connection: close\r\n")).encode()
    answer = exchange(server, data)
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    expected = [requests.get(f"{server.url}/generate?seed={s}", timeout=30).content for s in (1, 2)]
    assert answer.find(expected[0]) < answer.find(expected[1])
    assert -1 not in (answer.find(expected[0]), answer.find(expected[1]))


def test_expect_continue_gets_one_interim_response(server: Server) -> None:
    body = json.dumps({"seeds": [3]}).encode()
    head = (
        "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Expect: 100-continue\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(address(server), timeout=30) as sock:
        sock.sendall(head)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"  # before the body is sent
        sock.sendall(body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    answer = b"".join(chunks)
    assert answer.startswith(b"HTTP/1.1 200 OK") and b"100 Continue" not in answer


def test_chunked_body_is_served_and_one_over_the_limit_refused(server: Server) -> None:
    body = json.dumps({"seeds": [4]}).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:5], body[5:])) + b"0\r\n\r\n"
    head = (
        b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    answer = exchange(server, head + chunked)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["seeds"] == [4]

    # 8 KiB in chunks, over GAN_MAX_BODY_BYTES (4096): refused before the app sees any of it.
    big = (b"400\r\n" + b"x" * 1024 + b"\r\n") * 8 + b"0\r\n\r\n"
    status, error = json_error(exchange(server, head + big))
    assert status == 413 and error["error"]["code"] == "body_too_large"


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "uri_too_long"),
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431, "headers_too_large"),
        (b"NOT A REQUEST\r\n\r\n", 400, "bad_request"),
        (b"POST /generate HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400,
         "bad_request"),
    ],
)
def test_errors_before_the_app_are_json(server: Server, data: bytes, status: int, code: str) -> None:
    got, error = json_error(exchange(server, data))
    assert (got, error["error"]["status"], error["error"]["code"]) == (status, status, code)


def worker_pids(server: Server) -> set[int]:
    """The pids of both workers, from new connections until each has answered."""
    pids: set[int] = set()
    for _ in range(400):  # attempts before concluding that one worker takes every connection
        pids.add(requests.get(f"{server.url}/healthz", timeout=30).json()["pid"])
        if len(pids) == 2:
            break
    return pids


def test_incomplete_body_times_out_with_408_and_keeps_the_worker(server: Server) -> None:
    before = worker_pids(server)
    head = b"POST /generate HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    status, error = json_error(exchange(server, head + b'{"seeds":', timeout=30))
    assert status == 408 and error["error"]["code"] == "request_timeout"
    assert worker_pids(server) == before  # no worker was restarted


def test_slow_clients_do_not_hold_the_workers(server: Server) -> None:
    # Twenty clients trickle their headers; with gunicorn's sync worker the first two would
    # each hold one of the two workers until they finished.
    stop = threading.Event()
    slow = [socket.create_connection(address(server), timeout=30) for _ in range(20)]

    def trickle() -> None:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 50
        for i in range(len(request)):
            if stop.is_set():
                return
            for sock in slow:
                try:
                    sock.send(request[i : i + 1])
                except OSError:
                    pass
            time.sleep(0.05)

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        time.sleep(0.3)  # the slow requests are under way
        for seed in range(10):
            # A generous bound: the point is that these are answered at all meanwhile.
            response = requests.get(f"{server.url}/generate?seed={seed}", timeout=5)
            assert response.status_code == 200
        assert thread.is_alive()  # the slow clients were still sending
    finally:
        stop.set()
        thread.join()
        for sock in slow:
            sock.close()


def test_keepalive_zero_closes_after_each_response(tmp_path: Path, gunicorn: Callable[..., Server]) -> None:
    repo = write_repository(tmp_path / "models")
    server = gunicorn(GAN_MODELS_DIR=str(repo), GAN_WORKERS="1", GAN_KEEPALIVE="0")
    response = requests.get(f"{server.url}/healthz", timeout=30)
    assert response.headers["Connection"] == "close"


@pytest.mark.parametrize(
    ("setting", "log_format", "logged"),
    [("on", "text", True), ("off", "text", False), ("on", "json", True), ("off", "json", False)],
)
def test_access_log_setting(tmp_path: Path, setting: str, log_format: str, logged: bool) -> None:
    server = start_gunicorn(tmp_path, GAN_MODELS_DIR=str(write_repository(tmp_path / "models")),
                            GAN_WORKERS="1", GAN_ACCESS_LOG=setting, GAN_LOG_FORMAT=log_format)
    try:
        assert requests.get(f"{server.url}/healthz?probe=access", timeout=30).status_code == 200
    finally:
        log = server.stop()
    text_line = '"GET /healthz?probe=access HTTP/1.1" 200' in log
    json_line = '"path":"/healthz","query":"probe=access","status":200' in log
    assert (text_line, json_line) == ((logged, False) if log_format == "text" else (False, logged))


def test_sighup_serves_a_new_version_in_every_worker_without_dropping_a_request(
    tmp_path: Path,
) -> None:
    repo = write_repository(tmp_path / "models")
    # No timed rescan: only the signal can bring version 3 in.
    server = start_gunicorn(tmp_path, GAN_MODELS_DIR=str(repo), GAN_WORKERS="2",
                            GAN_DEFAULT_MODEL="tiny", GAN_RELOAD_INTERVAL="0")
    failures: list[str] = []
    served: list[tuple[str, int]] = []  # (version, worker pid) of every answer
    stop = threading.Event()

    def load() -> None:
        with requests.Session() as session:  # keep-alive connections, as real clients use
            seed = 0
            while not stop.is_set():
                seed += 1
                try:
                    response = session.get(f"{server.url}/generate?seed={seed}", timeout=30)
                except requests.RequestException as e:
                    failures.append(repr(e))
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                else:
                    served.append((response.headers["X-Model-Version"],
                                   int(response.headers["X-Worker-Pid"])))

    clients = [threading.Thread(target=load) for _ in range(4)]
    try:
        for thread in clients:
            thread.start()
        time.sleep(0.5)
        write_model(repo, "tiny", 3, weight_seed=7)
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30  # a bound for the new workers to boot
        while time.monotonic() < deadline:
            recent = served[-40:]
            if len(recent) == 40 and {version for version, _ in recent} == {"3"}:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        stop.set()
        for thread in clients:
            thread.join()
        # Every worker now serves version 3 (new connections reach both of them).
        versions: dict[int, set[str]] = {}
        for seed in range(400):  # attempts before concluding that one worker takes them all
            response = requests.get(f"{server.url}/generate?seed={seed}", timeout=30)
            versions.setdefault(int(response.headers["X-Worker-Pid"]), set()).add(
                response.headers["X-Model-Version"]
            )
            if len(versions) == 2:
                break
    finally:
        stop.set()
        server.stop()
    assert not failures, failures[:5]
    assert {version for version, _ in served[-40:]} == {"3"}
    assert list(versions.values()) == [{"3"}, {"3"}]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_full_worker_stops_accepting_without_spinning(tmp_path: Path) -> None:
    repo = write_repository(tmp_path / "models")
    server = start_gunicorn(tmp_path, GAN_MODELS_DIR=str(repo), GAN_WORKERS="1",
                            GUNICORN_CMD_ARGS="--worker-connections 2")
    try:
        worker = int(requests.get(f"{server.url}/healthz", timeout=30).json()["pid"])
        held = [socket.create_connection(address(server), timeout=30) for _ in range(2)]
        time.sleep(0.2)  # both accepted: the worker is full
        waiting = socket.create_connection(address(server), timeout=30)  # in the backlog
        waiting.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        before = cpu_seconds(worker)
        time.sleep(1.0)
        # Polling a listener it cannot accept from would burn the whole second.
        assert cpu_seconds(worker) - before < 0.5
        waiting.settimeout(0.2)
        with pytest.raises(TimeoutError):
            waiting.recv(1)  # not served while the worker is full
        held[0].close()  # a slot frees: the waiting client is accepted and answered
        waiting.settimeout(30)
        assert waiting.recv(65536).startswith(b"HTTP/1.1 200 OK")
        waiting.close()
        held[1].close()
    finally:
        server.stop()


def test_a_response_is_collected_whole_before_it_is_sent() -> None:
    # gunicorn's Response writes headers and body separately; through _Output neither reaches
    # the socket, so the worker sends the response in one write.
    from gunicorn import http
    from gunicorn.config import Config
    from gunicorn.http import wsgi

    from serve.worker import _Output

    class Socket:
        sent = 0

        def sendall(self, data: bytes) -> None:
            self.sent += 1

        def send(self, data: bytes) -> int:
            self.sent += 1
            return len(data)

    cfg = Config()
    request = next(http.get_parser(cfg, iter([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]), ("127.0.0.1", 1)))
    sock = Socket()
    output = _Output(sock)  # type: ignore[arg-type]
    response, _ = wsgi.create(request, output, ("127.0.0.1", 1), ("127.0.0.1", 2), cfg)
    response.start_response("200 OK", [("Content-Length", "5")])
    response.write(b"hello")
    response.close()
    assert sock.sent == 0
    assert output.data.startswith(b"HTTP/1.1 200 OK\r\n") and output.data.endswith(b"\r\n\r\nhello")
