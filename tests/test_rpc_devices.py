"""ggml devices and RPC for real: a `huozi-local worker` subprocess serving this CPU on 127.0.0.1.

The client registers it, llama.cpp sees a GPU-typed device "RPC0", and a tiny model is placed on
it (layers, KV, compute), with `n_cpu_moe` keeping chosen experts in CPU memory.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from huozi_local.core.chat.loader import dry_run_buffers, load_llama
from huozi_local.core.devices import ggml
from huozi_local.core.devices.buffers import capture_llama_log, device_of_buffer, parse_buffers
from huozi_local.core.devices.endpoints import Endpoint, parse_endpoints, probe_worker
from huozi_local.core.errors import HuoziError
from huozi_local.testing.rpc_worker import RpcWorker, free_port
from huozi_local.testing.tiny_model import TinyModels

MiB = 1024**2


@pytest.fixture(scope="module")
def worker() -> Iterator[RpcWorker]:
    with RpcWorker() as running:
        yield running


def _load_kwargs(worker: RpcWorker, **extra: object) -> dict[str, object]:
    return {
        "n_ctx": 512,
        "n_gpu_layers": 99,
        "n_threads": 1,
        "flash_attn": False,
        "kv_cache_type": "f16",
        "seed": 1,
        "progress": None,
        "cancel": None,
        "rpc_servers": [str(worker.endpoint)],
        **extra,
    }


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


def test_worker_device_registers_as_a_gpu(worker: RpcWorker) -> None:
    devices = ggml.add_rpc_servers([worker.endpoint])
    assert [d.kind for d in devices] == ["gpu"]
    assert devices[0].is_rpc and devices[0].description == str(worker.endpoint)
    assert devices[0].memory_total_bytes > 0
    assert ggml.add_rpc_servers([worker.endpoint]) == devices  # registered once per process
    assert devices[0] in ggml.list_devices()


def test_layers_go_to_the_worker_and_experts_stay_on_the_cpu(
    worker: RpcWorker, tiny_models: TinyModels
) -> None:
    path = tiny_models.get("merged", "q4_0", "chat")
    reports = {}
    for n_cpu_moe in (0, 4):
        with capture_llama_log() as chunks:
            llm = load_llama(path, **_load_kwargs(worker, n_cpu_moe=n_cpu_moe))  # type: ignore[arg-type]
        try:
            text = llm.create_completion("你好", max_tokens=6, temperature=0)["choices"][0]["text"]
        finally:
            llm.close()
        assert text.startswith("你好")  # the rigged model computes on the worker
        reports[n_cpu_moe] = parse_buffers("".join(chunks))
    on_worker, moe_on_cpu = reports[0].device("RPC0"), reports[4].device("RPC0")
    assert on_worker.weights > 0 and on_worker.kv > 0 and on_worker.compute > 0
    # 4 layers x 3 expert tensors of 8 x 256 x 512 q4_0 weights left the worker for RAM
    experts = 4 * 3 * 8 * 256 * 512 * 18 // 32
    assert on_worker.weights - moe_on_cpu.weights == pytest.approx(experts, abs=0.02 * MiB)
    assert moe_on_cpu.kv == on_worker.kv


def test_dry_run_predicts_the_compute_buffers_of_the_real_load(
    worker: RpcWorker, tiny_models: TinyModels
) -> None:
    path = tiny_models.get("merged", "q4_0", "chat")
    kwargs = _load_kwargs(worker, n_cpu_moe=2)
    dry = dry_run_buffers(path, **kwargs)
    with capture_llama_log() as chunks:
        llm = load_llama(path, **kwargs)  # type: ignore[arg-type]
    llm.close()
    real = parse_buffers("".join(chunks))
    assert dry.device("RPC0").weights == 0  # no_alloc: nothing was allocated
    assert dry.device("RPC0").compute == real.device("RPC0").compute > 0
    assert dry.device("CPU").compute == real.device("CPU").compute
