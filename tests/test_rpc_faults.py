"""`--rpc` to a worker that misbehaves after the handshake, and a worker held by an idle client.

Each misbehaving worker is a real `huozi-local worker` behind `FaultyWorker`, which at a chosen
command stalls (keeps the connection open and says nothing), hangs up, or answers bytes that
are no reply: at registration (the first command after the HELLO), during the load, or in the
middle of a reply. The client is `huozi-local ask` in a child process, as a user runs it, with
a short `HUOZI_RPC_TIMEOUT` so a stall is noticed quickly; a test's only clock is the child's
own timeout, which turns a hang into a failure.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from huozi_local.core.devices import rpc_wire
from huozi_local.testing import rpc_faults
from huozi_local.testing.rpc_faults import Fault, FaultyWorker
from huozi_local.testing.rpc_worker import RpcWorker, free_port
from huozi_local.testing.tiny_model import RIG_TEXT, TinyModels

pytestmark = pytest.mark.slow
HANG_S = 180  # a child still running after this has hung: the failure these tests catch
FAULTS: tuple[Fault, ...] = ("stall", "close", "garbage")
PHASES = {  # where the worker misbehaves: (command, how many times it is passed on first)
    "registration": (rpc_faults.DEVICE_COUNT, 0),
    "load": (rpc_faults.SET_TENSOR, 2),
    "reply": (rpc_faults.GRAPH_RECOMPUTE, 2),
}


def run_cli(*args: str, home: Path, timeout_s: str = "3") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HUOZI_HOME": str(home), "HUOZI_RPC_TIMEOUT": timeout_s}
    return subprocess.run(
        [sys.executable, "-m", "huozi_local", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_S,
    )


def assert_one_line(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.startswith("huozi-local: "), done.stderr[-3000:]
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr[-3000:]
    for fragment in fragments:
        assert fragment in done.stderr
    for crash in ("Remote RPC server crashed", "Traceback", "backtrace", "gdb"):
        assert crash not in done.stderr


@pytest.fixture(scope="module")
def worker() -> Iterator[RpcWorker]:
    with RpcWorker() as running:
        yield running


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("fault", FAULTS)
def test_a_worker_that_stalls_hangs_up_or_answers_garbage_is_one_line_and_exit_2(
    worker: RpcWorker, tiny_models: TinyModels, huozi_home: Path, fault: Fault, phase: str
) -> None:
    """Today: a stall hung `ask` for good at every phase; a hang-up or garbage aborted the
    process with llama.cpp's backtrace at registration and hung it during the load."""
    command, passed = PHASES[phase]
    model = str(tiny_models.get("merged", "q4_0", "loop"))
    with FaultyWorker(worker.endpoint, fault, command, nth=passed + 1) as faulty:
        done = run_cli(
            "ask", "你好", "--model", model, "--max-tokens", "200", "--rpc", str(faulty.endpoint),
            home=huozi_home,
        )  # fmt: skip
        assert faulty.triggered.is_set()  # the fault happened where this test put it
    # a stalled worker either owes a reply or stops taking a long request (SET_TENSOR's bytes
    # fill the socket buffers first): both are the deadline
    reasons = {
        "stall": ("did not answer", "took no request for"),
        "close": ("closed the connection", "dropped the connection"),
        "garbage": ("sent a malformed reply", "sent bytes that answer no request"),
    }[fault]
    assert_one_line(done, f"the RPC worker went away ({faulty.endpoint} ")
    assert any(reason in done.stderr for reason in reasons), done.stderr


@pytest.mark.parametrize("command", ["ask", "chat"])
def test_ctrl_c_ends_a_reply_stalled_on_a_worker(
    worker: RpcWorker, tiny_models: TinyModels, huozi_home: Path, command: str
) -> None:
    """Today Ctrl-C did nothing while the worker said nothing: the wait was in C.

    With a deadline far away only Ctrl-C can end it. The first Ctrl-C cannot stop a call that
    waits on the worker: in `chat` it asks the reply to stop (as on a healthy worker), in `ask`
    it may land just before such a call; a second one leaves at once. SIGINT is sent until the
    command has ended, at most four times.
    """
    model = str(tiny_models.get("merged", "q4_0", "loop"))
    faulty = FaultyWorker(worker.endpoint, "stall", rpc_faults.GRAPH_RECOMPUTE, nth=3)
    args = ["ask", "你好"] if command == "ask" else ["chat"]
    env = {**os.environ, "HUOZI_HOME": str(huozi_home), "HUOZI_RPC_TIMEOUT": "3600"}
    with faulty:
        child = subprocess.Popen(
            [sys.executable, "-m", "huozi_local", *args, "--model", model,
             "--max-tokens", "2000", "--rpc", str(faulty.endpoint)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        assert child.stdin is not None and child.stderr is not None
        if command == "chat":
            child.stdin.write("你好\n".encode())
            child.stdin.flush()
        assert faulty.triggered.wait(HANG_S), "the reply never reached the stall"
        signals = 0
        while child.poll() is None and signals < 4:
            child.send_signal(signal.SIGINT)
            signals += 1
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        if child.poll() is None:
            child.kill()
        child.wait(timeout=60)
        errors = child.stderr.read().decode()
    assert child.returncode == 130, f"still running after {signals} Ctrl-C: {errors[-2000:]}"
    assert errors.strip().splitlines()[-1] == "huozi-local: interrupted"
    assert "Traceback" not in errors and "Remote RPC server crashed" not in errors


def hello(sock: socket.socket) -> None:
    """llama.cpp's HELLO and its reply: from here on the worker serves this connection."""
    sock.sendall(struct.pack("<BQ", rpc_wire.HELLO, 24) + bytes(24))
    reply = b""
    while len(reply) < 8 + 28:
        chunk = sock.recv(64)
        assert chunk, "the worker hung up on the HELLO"
        reply += chunk


def test_an_idle_client_gives_way_to_one_that_waits(
    tiny_models: TinyModels, huozi_home: Path
) -> None:
    """Today one idle connection locked every other client out of the worker for good."""
    model = str(tiny_models.get("merged", "q4_0", "chat"))
    with RpcWorker(idle_timeout=0.2) as worker:
        idle = socket.create_connection((worker.endpoint.host, worker.endpoint.port))
        with idle:
            hello(idle)  # served, then silent
            done = run_cli("ask", "你好", "--model", model, "--rpc", str(worker.endpoint),
                           home=huozi_home)  # fmt: skip
            idle.settimeout(HANG_S)
            assert idle.recv(1) == b""  # the worker hung up on it
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == RIG_TEXT


def test_an_idle_client_keeps_the_worker_while_nobody_waits() -> None:
    """Giving way is for a client that waits: alone, an idle client is never cut off."""
    with RpcWorker(idle_timeout=0.1) as worker:
        client = socket.create_connection((worker.endpoint.host, worker.endpoint.port))
        with client:
            hello(client)
            client.settimeout(HANG_S)
            time.sleep(1.0)  # idle ten times the timeout (no race: nobody else connects)
            client.sendall(struct.pack("<BQ", 15, 0))  # DEVICE_COUNT
            reply = b""
            while len(reply) < 12:
                chunk = client.recv(64)
                assert chunk, "the worker hung up on an idle client nobody was waiting for"
                reply += chunk
    assert struct.unpack("<QI", reply) == (4, 1)  # one device: this machine's CPU


def test_bad_deadlines_are_one_line(huozi_home: Path) -> None:
    closed = f"127.0.0.1:{free_port()}"
    done = run_cli("plan", "--rpc", closed, home=huozi_home, timeout_s="soon")
    assert_one_line(done, "HUOZI_RPC_TIMEOUT='soon' is not a number of seconds")
    done = run_cli("worker", "--port", str(free_port()), "--idle-timeout", "-1", home=huozi_home)
    assert_one_line(done, "--idle-timeout must be 0 or more seconds")


def test_replies_are_walked_across_any_split_and_garbage_is_named() -> None:
    tracker = rpc_wire.ReplyTracker()
    tracker.expect(rpc_wire.owed_reply(15))  # DEVICE_COUNT: 4 bytes
    payload = struct.pack("<QI", 4, 1)
    for i in range(len(payload)):  # one byte at a time: headers split anywhere
        assert tracker.feed(payload[i : i + 1]) is None
    assert tracker.head() is None
    assert tracker.feed(b"x") == "sent bytes that answer no request"
    tracker = rpc_wire.ReplyTracker()
    tracker.expect(rpc_wire.owed_reply(11))  # GET_DEVICE_MEMORY: 16 bytes
    assert tracker.feed(struct.pack("<Q", 4)) == "sent a malformed reply to GET_DEVICE_MEMORY"
