"""ggml devices and RPC for real: a `huozi-local worker` subprocess serving this CPU on 127.0.0.1.

The client registers it, llama.cpp sees a GPU-typed device "RPC0", and a tiny model is placed on
it (layers, KV, compute), with `n_cpu_moe` keeping chosen experts in CPU memory.

ggml's device registry is global and has no way to unregister, so every client runs in a child
process: a worker registered in the test process would outlive its worker and reach every later
test's loads.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from huozi_local.core.devices.buffers import device_of_buffer, parse_buffers
from huozi_local.core.devices.endpoints import Endpoint, parse_endpoints, probe_worker
from huozi_local.core.errors import HuoziError
from huozi_local.testing.rpc_worker import RpcWorker, free_port, in_child
from huozi_local.testing.tiny_model import TinyModels

MiB = 1024**2
ROOT = Path(__file__).resolve().parents[1]


LOAD = """
import json
from pathlib import Path
from huozi_local.core.chat.loader import LoadOptions, dry_run_buffers, load_llama
from huozi_local.core.devices.buffers import capture_llama_log, parse_buffers

def load_options(n_cpu_moe):
    return LoadOptions(n_ctx=512, n_gpu_layers=99, n_threads=1, seed=1, rpc_servers=(endpoint,),
                       n_cpu_moe=n_cpu_moe)

def real_load(n_cpu_moe, prompt=None):
    with capture_llama_log() as chunks:
        llm = load_llama(Path(model), load_options(n_cpu_moe))
    text = None
    if prompt:
        text = llm.create_completion(prompt, max_tokens=6, temperature=0)["choices"][0]["text"]
    llm.close()
    report = parse_buffers("".join(chunks))
    return {name: d.to_dict() for name, d in report.devices.items()}, text
"""


def test_endpoints_parse_and_reject_in_one_line() -> None:
    assert parse_endpoints("10.0.0.2:50052, [::1]:7000,10.0.0.2:50052") == (
        Endpoint("10.0.0.2", 50052),
        Endpoint("::1", 7000),
    )
    assert str(Endpoint("::1", 7000)) == "[::1]:7000"
    for bad in ("10.0.0.2", "host:0", "host:port", ":50052", "h:70000"):
        with pytest.raises(HuoziError, match="not an RPC worker address"):
            parse_endpoints(bad)


def test_probe_names_a_closed_port_and_a_non_rpc_server() -> None:
    with pytest.raises(HuoziError, match=r"no RPC worker answers at 127\.0\.0\.1"):
        probe_worker(Endpoint("127.0.0.1", free_port()), timeout=2)
    with socket.socket() as server:  # answers, but not with llama.cpp's HELLO
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        endpoint = Endpoint("127.0.0.1", server.getsockname()[1])
        with pytest.raises(HuoziError, match="does not answer"):
            probe_worker(endpoint, timeout=1)


def test_buffer_names_map_to_devices() -> None:
    assert device_of_buffer("RPC0[127.0.0.1:50052]") == "RPC0"
    assert device_of_buffer("CUDA0") == "CUDA0"
    assert device_of_buffer("CUDA_Host") == "CPU"
    assert device_of_buffer("CPU_REPACK") == "CPU"
    report = parse_buffers(
        "load_tensors: RPC0[127.0.0.1:1] model buffer size =    18.62 MiB\n"
        "llama_kv_cache: RPC0[127.0.0.1:1] KV buffer size =     0.50 MiB\n"
        "sched_reserve:        CPU compute buffer size =     2.26 MiB\n"
        "something else = 3 MiB\n"
    )
    assert report.device("RPC0").weights == round(18.62 * MiB)
    assert report.device("RPC0").kv == MiB // 2
    assert report.device("CPU").compute == round(2.26 * MiB)
    assert len(report.lines) == 3


@pytest.fixture(scope="module")
def worker() -> Iterator[RpcWorker]:
    with RpcWorker() as running:
        yield running


def test_worker_device_registers_as_a_gpu(worker: RpcWorker) -> None:
    found = in_child(
        """
        import json
        from huozi_local.core.devices import ggml
        from huozi_local.core.devices.endpoints import parse_endpoint
        first = ggml.add_rpc_servers([parse_endpoint(endpoint)])
        again = ggml.add_rpc_servers([parse_endpoint(endpoint)])
        listed = ggml.list_devices()
        print(json.dumps({
            "kinds": [d.kind for d in first], "rpc": [d.is_rpc for d in first],
            "description": first[0].description, "total": first[0].memory_total_bytes,
            "once": again == first, "listed": [d.name for d in listed],
            "registered": [d.name for d in ggml.registered_rpc_devices()],
        }))
        """,
        endpoint=str(worker.endpoint),
    )
    assert found["kinds"] == ["gpu"] and found["rpc"] == [True]
    assert found["description"] == str(worker.endpoint) and found["total"] > 0
    assert found["once"]  # registered once per process, however often asked
    # A GPU build lists its own devices too (CUDA0, Metal, ...): only the worker's is asserted.
    assert found["listed"].count("RPC0") == 1 and "CPU" in found["listed"]
    assert found["registered"] == ["RPC0"]


def test_layers_go_to_the_worker_and_experts_stay_on_the_cpu(
    worker: RpcWorker, tiny_models: TinyModels
) -> None:
    found = in_child(
        LOAD
        + textwrap.dedent(
            """
        all_on_worker, text = real_load(0, "你好")
        experts_in_ram, _ = real_load(4)
        print(json.dumps({"all": all_on_worker, "moe": experts_in_ram, "text": text}))
        """
        ),
        endpoint=str(worker.endpoint),
        model=str(tiny_models.get("merged", "q4_0", "chat")),
    )
    assert found["text"].startswith("你好")  # the rigged model computed on the worker
    on_worker, moe_on_cpu = found["all"]["RPC0"], found["moe"]["RPC0"]
    assert on_worker["weights"] > 0 and on_worker["kv"] > 0 and on_worker["compute"] > 0
    # 4 layers x 3 expert tensors of 8 x 256 x 512 q4_0 weights left the worker for RAM
    experts = 4 * 3 * 8 * 256 * 512 * 18 // 32
    assert on_worker["weights"] - moe_on_cpu["weights"] == pytest.approx(experts, abs=0.02 * MiB)
    assert moe_on_cpu["kv"] == on_worker["kv"]


def test_dry_run_predicts_the_compute_buffers_of_the_real_load(
    worker: RpcWorker, tiny_models: TinyModels
) -> None:
    found = in_child(
        LOAD
        + textwrap.dedent(
            """
        dry = dry_run_buffers(Path(model), load_options(2))
        real, _ = real_load(2)
        print(json.dumps({"dry": {k: d.to_dict() for k, d in dry.devices.items()}, "real": real}))
        """
        ),
        endpoint=str(worker.endpoint),
        model=str(tiny_models.get("merged", "q4_0", "chat")),
    )
    dry, real = found["dry"], found["real"]
    assert dry["RPC0"]["weights"] == 0  # no_alloc: nothing was allocated
    assert dry["RPC0"]["compute"] == real["RPC0"]["compute"] > 0
    assert dry["CPU"]["compute"] == real["CPU"]["compute"]


@pytest.fixture(scope="module")
def real_shape_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """huozi3's official shapes, 2 layers, q4_0, sparse (no disk, nothing to download)."""
    from huozi_local.testing.real_shape import RealShape, write_real_shape_gguf

    return write_real_shape_gguf(
        tmp_path_factory.mktemp("real-shape") / "huozi3-2l.gguf", RealShape(n_layers=2)
    )


def _allocations(model: Path, endpoint: Endpoint, cases: str) -> list[dict[str, Any]]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "huozi_local.testing.rpc_allocation", "--model", str(model),
         "--rpc", str(endpoint), "--placements", cases],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_device_estimate_matches_llamas_allocation_at_real_shapes(
    worker: RpcWorker, real_shape_slice: Path
) -> None:
    # All on the worker but the experts; one whole layer and its experts plus the output;
    # without flash attention (the n_ctx x n_head score matrix) at a longer context.
    rows = _allocations(real_shape_slice, worker.endpoint, "3:2:2048:1,2:0:2048:1,3:2:4096:0")
    for row in rows:
        real, estimate = row["llama"], row["estimate"]
        assert real["weights"] == pytest.approx(estimate["weights"], rel=0.001), row["case"]
        assert real["kv"] == estimate["kv"], row["case"]
        assert estimate["total"] == pytest.approx(real["total"], rel=0.03), row["case"]
        assert row["fit_total"] == pytest.approx(real["total"], rel=0.001), row["case"]
    # Moving the output and layer 1 with its experts, and layer 0's attention back: llama.cpp
    # moved exactly what the plan moved.
    moved = rows[1]["llama"]["weights"] - rows[0]["llama"]["weights"]
    planned = rows[1]["estimate"]["weights"] - rows[0]["estimate"]["weights"]
    assert moved == pytest.approx(planned, rel=0.001)
    assert moved > 3 * 8 * 4096 * 14336 * 18 // 32 * 0.9  # mostly layer 1's experts


def test_the_planned_placement_stays_under_the_budget_on_the_worker(
    worker: RpcWorker, real_shape_slice: Path, huozi_home: Path
) -> None:
    env = {**os.environ, "HUOZI_HOME": str(huozi_home)}
    done = subprocess.run(
        [sys.executable, "-m", "huozi_local", "plan", "--model", str(real_shape_slice),
         "--rpc", str(worker.endpoint), "--vram", "1GiB", "--ctx", "2048", "--json"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["fits"] and plan["backend"] == "rpc"
    assert plan["n_gpu_layers"] == plan["n_layers"] + 1 and plan["n_cpu_moe"] > 0  # MoE placement
    case = f"{plan['n_gpu_layers']}:{plan['n_cpu_moe']}:{plan['n_ctx']}:{int(plan['flash_attn'])}"
    (row,) = _allocations(real_shape_slice, worker.endpoint, case)
    allocated = row["llama"]["total"]
    assert allocated <= plan["vram_budget_bytes"]
    assert plan["breakdown"]["gpu"]["total"] == pytest.approx(allocated, rel=0.03)


class CountingRelay:
    """A TCP relay on 127.0.0.1 in front of a worker that counts the bytes clients send it:
    what the worker's tensor cache saves is bytes on the wire, so that is what is measured."""

    def __init__(self, target: Endpoint) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = Endpoint("127.0.0.1", int(self._listener.getsockname()[1]))
        self.sent = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            worker = socket.create_connection((self._target.host, self._target.port))
            threading.Thread(target=self._pump, args=(client, worker, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(worker, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 20):
                if counted:
                    with self._lock:
                        self.sent += len(data)
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def take(self) -> int:
        """Bytes sent to the worker since the last call."""
        with self._lock:
            sent, self.sent = self.sent, 0
        return sent

    def close(self) -> None:
        self._listener.close()


def test_a_worker_with_a_cache_is_sent_hashes_not_bytes_on_the_next_load(
    real_shape_slice: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "tensor-cache"
    with RpcWorker(cache=cache) as cached:
        relay = CountingRelay(cached.endpoint)
        try:
            # The output alone on the worker: output.weight is 131 MB, over the 10 MiB hash
            # limit; each load is a client process of its own, as a user's second run is.
            (first,) = _allocations(real_shape_slice, relay.endpoint, "1:0:2048:1")
            first_sent = relay.take()
            (second,) = _allocations(real_shape_slice, relay.endpoint, "1:0:2048:1")
            second_sent = relay.take()
        finally:
            relay.close()
    assert first["llama"] == second["llama"] and first["llama"]["weights"] > 100 * MiB
    assert first_sent > first["llama"]["weights"]  # the first load sends the tensors' bytes
    assert second_sent < 10 * MiB  # the next sends their hashes: the worker loads its copies
    kept = list(cache.iterdir())
    assert kept and all(f.stat().st_size > 10 * MiB for f in kept)
