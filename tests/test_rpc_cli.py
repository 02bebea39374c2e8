"""`huozi-local worker` and `--rpc` as a user runs them: two processes, one real RPC worker each.

A worker serves one client at a time, so every test that connects from a subprocess has its own
worker (the test process itself never connects to it).
"""

from __future__ import annotations

import io
import json
import os
import queue
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cli_process import cli

from huozi_local.testing.rpc_worker import RpcWorker
from huozi_local.testing.tiny_model import RIG_TEXT, TinyModels

MiB = 1024**2
HANG_GUARD_S = 120  # far above a refusal: only a worker that started serving reaches it


def test_plan_counts_the_workers_device_as_a_gpu(tiny_models: TinyModels, huozi_home: Path) -> None:
    model = str(tiny_models.get("merged", "q4_0", "chat"))
    with RpcWorker() as worker:
        done = cli(
            "plan", "--model", model, "--rpc", str(worker.endpoint), "--json", home=huozi_home
        )
        assert done.returncode == 0, done.stderr
        plan = json.loads(done.stdout)
        assert plan["backend"] == "rpc" and plan["fully_on_gpu"]
        assert plan["breakdown"]["gpu"]["overhead"] == 0  # no runtime of ours on a worker
        assert plan["vram_budget_bytes"] > 1024 * MiB  # the worker's own memory
        small = cli(
            "plan", "--model", model, "--rpc", str(worker.endpoint), "--vram", "40MiB",
            "--json", home=huozi_home,
        )  # fmt: skip
        assert small.returncode == 0, small.stderr
        squeezed = json.loads(small.stdout)
        assert squeezed["vram_budget_bytes"] < 40 * MiB
        assert squeezed["vram_bytes"] <= squeezed["vram_budget_bytes"] or not squeezed["fits"]
        assert squeezed["n_gpu_layers"] < plan["n_gpu_layers"] or squeezed["n_cpu_moe"] > 0


def test_chat_runs_across_two_processes(tiny_models: TinyModels, huozi_home: Path) -> None:
    model = str(tiny_models.get("merged", "q4_0", "chat"))
    with RpcWorker() as worker:
        done = cli(
            "chat", "--model", model, "--rpc", str(worker.endpoint), "--json",
            stdin="你好\n再说一次\n", home=huozi_home,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    replies = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["text"] for r in replies] == [RIG_TEXT, RIG_TEXT]
    plan = replies[0]["plan"]
    assert plan["backend"] == "rpc" and plan["n_gpu_layers"] == plan["n_layers"] + 1
    fit = plan["measured_fit"]  # the dry run ran before the load, on the worker's device
    assert fit["dry_run_buffers"]["RPC0"]["compute"] == fit["measured_compute"] > 0
    assert fit["fits"] and not fit["adjusted"]


def test_a_worker_lost_mid_reply_ends_the_reply_and_the_chat_goes_on(
    tiny_models: TinyModels, huozi_home: Path
) -> None:
    model = str(tiny_models.get("merged", "q4_0", "loop"))  # never stops on its own
    saved = huozi_home / "kept.json"
    with RpcWorker() as worker:
        chat = subprocess.Popen(
            [sys.executable, "-m", "huozi_local", "chat", "--model", model,
             "--rpc", str(worker.endpoint), "--max-tokens", "100000"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "HUOZI_HOME": str(huozi_home)},
        )  # fmt: skip
        assert chat.stdin is not None and chat.stdout is not None and chat.stderr is not None
        chunks: queue.Queue[bytes] = queue.Queue()
        stdout = chat.stdout
        assert isinstance(stdout, io.BufferedReader)  # read1: what has arrived, without waiting

        def pump() -> None:
            for chunk in iter(lambda: stdout.read1(4096), b""):
                chunks.put(chunk)

        threading.Thread(target=pump, daemon=True).start()
        chat.stdin.write("你好\n".encode())
        chat.stdin.flush()
        streamed = b""
        while streamed.count(RIG_TEXT.encode()) < 3:  # well into the reply
            streamed += chunks.get(timeout=120)
        worker.stop()  # the machine goes away mid-reply
        chat.stdin.write(f"还在吗\n/save {saved}\n".encode())
        chat.stdin.close()
        assert chat.wait(timeout=120) == 0  # the chat went on to /save and ended normally
        errors = chat.stderr.read().decode()
    assert errors.count("the RPC worker went away") == 2, errors  # the reply, then the next turn
    assert "Traceback" not in errors
    rows = json.loads(saved.read_text(encoding="utf-8"))
    assert [r["content"] for r in rows if r["role"] == "user"] == ["你好", "还在吗"]


def test_unreachable_workers_and_bad_addresses_are_one_line(
    tiny_models: TinyModels, huozi_home: Path
) -> None:
    model = str(tiny_models.get("merged", "q4_0", "chat"))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    for args, message in (
        (("ask", "你好", "--model", model, "--rpc", f"127.0.0.1:{port}"), "no RPC worker answers"),
        (("plan", "--model", model, "--rpc", "nowhere"), "is not an RPC worker address"),
        (("tui", "--rpc", f"127.0.0.1:{port}"), "no RPC worker answers"),  # before the app opens
        (("serve", "--model", model, "--rpc", f"127.0.0.1:{port}"), "no RPC worker answers"),
        (("plan", "--model", model, "--rpc", "127.0.0.1:1", "--backend", "cuda"), "drop --backend"),
    ):
        done = cli(*args, home=huozi_home)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("huozi-local: ") and message in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_worker_refuses_a_busy_port_in_one_line(huozi_home: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        done = cli("worker", "--port", str(port), home=huozi_home)
    assert done.returncode == 2
    assert done.stderr.startswith(f"huozi-local: cannot listen on 127.0.0.1:{port}")


def test_doctor_says_the_build_serves_and_uses_workers(huozi_home: Path) -> None:
    done = cli("doctor", "--json", home=huozi_home)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["machine"]["build"]["supports_rpc"] is True
    text = cli("doctor", home=huozi_home)
    assert "RPC yes (huozi-local worker, --rpc HOST:PORT)" in text.stdout


@pytest.mark.parametrize("threads", ["513", "100000000"])
def test_worker_refuses_more_threads_than_ggml_can_run_in_one_line(
    threads: str, huozi_home: Path
) -> None:
    """Before: `worker --threads 100000000` was accepted, served, and died with std::bad_alloc
    (abort, core dump) when the first client computed a graph."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    try:
        done = subprocess.run(
            [sys.executable, "-m", "huozi_local", "worker", "--port", port, "--threads", threads],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env={**os.environ, "HUOZI_HOME": str(huozi_home)},
            timeout=HANG_GUARD_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker started serving with --threads {threads}")
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"huozi-local: --threads must be between 1 and 512 (ggml's most), not {threads}\n"
    )
