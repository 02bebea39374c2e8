"""A real llama.cpp RPC worker (`huozi-local worker`) on 127.0.0.1 for tests and benchmarks.

On a CPU-only machine the worker serves its CPU, and the client sees it as a GPU-typed ggml
device ("RPC0"): llama.cpp splits layers, KV cache and compute buffers onto it exactly as onto a
graphics card, so placement and allocation are checked for real without one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from huozi_local.core.devices.endpoints import Endpoint, probe_worker
from huozi_local.core.errors import HuoziError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RpcWorker:
    """`python -m huozi_local worker` in a subprocess; a context manager that stops it."""

    def __init__(
        self,
        *,
        threads: int = 1,
        log: Path | None = None,
        cache: Path | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        self.endpoint = Endpoint("127.0.0.1", free_port())
        self._threads = threads
        self._log = log
        self._cache = cache
        self._idle_timeout = idle_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> RpcWorker:
        root = Path(__file__).resolve().parents[2]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
        }
        out = open(self._log, "wb") if self._log else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "huozi_local",
                "worker",
                "--port",
                str(self.endpoint.port),
                "--threads",
                str(self._threads),
                *(["--cache", str(self._cache)] if self._cache else []),
                *(["--idle-timeout", str(self._idle_timeout)] if self._idle_timeout else []),
            ],
            stdout=out,
            stderr=subprocess.STDOUT if self._log else subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}")
            try:
                probe_worker(self.endpoint, timeout=2.0)
                return self
            except HuoziError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        """Kill the worker at once, as a machine that goes away would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def __enter__(self) -> RpcWorker:
        return self.start()

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.stop()


def in_child(code: str, **values: object) -> Any:
    """Run `code` (which prints one JSON line last) in a fresh interpreter; return that JSON.

    ggml's device registry cannot forget a worker: a test that registers one does it in a child,
    so a later test's load never reaches a worker that has stopped. `values` become variables.
    """
    import json

    prelude = "".join(f"{name} = {value!r}\n" for name, value in values.items())
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
