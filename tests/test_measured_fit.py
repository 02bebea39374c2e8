"""The measured fit: a no_alloc dry run on a real worker's device corrects the plan before a load.

The machine is injected (this CPU plus one RPC worker's device with a chosen amount of memory),
the dry run is llama.cpp's own; the client runs in a child process because ggml's device
registry cannot forget a worker (see test_rpc_devices.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from huozi_local.core.measured_fit import needs_fit
from huozi_local.core.planning.hardware import GPU, Machine
from huozi_local.testing.real_shape import RealShape, write_real_shape_gguf
from huozi_local.testing.rpc_worker import RpcWorker, in_child

GiB = 1024**3
MiB = 1024**2

FIT = """
import json
from dataclasses import replace
from pathlib import Path
from huozi_local.core.devices import ggml
from huozi_local.core.devices.endpoints import parse_endpoint
from huozi_local.core.measured_fit import measured_fit
from huozi_local.core.planning.hardware import GPU, Machine

ggml.add_rpc_servers([parse_endpoint(endpoint)])
cpu = Machine.synthetic("cpu", 0, 64 * 1024**3)
worker_gpu = GPU(0, "RPC worker", "rpc", vram, vram)
machine = replace(cpu, gpus=(worker_gpu,))
asked = {"n_ctx": 2048, "n_gpu_layers": 3, "n_cpu_moe": n_cpu_moe, "flash_attn": True,
         "kv_cache_type": "f16", "n_threads": 1}
kwargs, fit = measured_fit(Path(model), machine, asked)
print(json.dumps({"kwargs": kwargs, "fit": fit.to_dict(), "summary": fit.summary()}))
"""


def _fit_in_child(model: Path, worker: RpcWorker, vram: int, n_cpu_moe: int) -> Any:
    return in_child(
        FIT, endpoint=str(worker.endpoint), model=str(model), vram=vram, n_cpu_moe=n_cpu_moe
    )


@pytest.fixture(scope="module")
def real_shape_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_real_shape_gguf(
        tmp_path_factory.mktemp("fit") / "huozi3-2l.gguf", RealShape(n_layers=2)
    )


def test_only_loads_that_offload_are_fitted() -> None:
    cpu = Machine.synthetic("cpu", 0, 64 * GiB)
    cuda = Machine.synthetic("cuda", 12 * GiB, 64 * GiB)
    assert not needs_fit(cpu, {"n_gpu_layers": 33})
    assert not needs_fit(cuda, {"n_gpu_layers": 0})
    assert needs_fit(cuda, {"n_gpu_layers": 5}) and needs_fit(cuda, {"n_gpu_layers": -1})
    rpc_only = replace(cpu, gpus=(GPU(0, "worker", "rpc", GiB, GiB),))
    assert rpc_only.planning_backend == "rpc" and needs_fit(rpc_only, {"n_gpu_layers": 3})


def test_a_placement_that_fits_is_kept_with_llamas_compute_buffers(real_shape_slice: Path) -> None:
    with RpcWorker() as worker:
        found = _fit_in_child(real_shape_slice, worker, vram=4 * GiB, n_cpu_moe=2)
    fit = found["fit"]
    assert not fit["adjusted"] and fit["fits"]
    assert found["kwargs"]["n_gpu_layers"] == 3 and found["kwargs"]["n_cpu_moe"] == 2
    assert fit["measured_compute"] == fit["dry_run_buffers"]["RPC0"]["compute"] > 100 * MiB
    assert fit["dry_run_buffers"]["RPC0"]["weights"] == 0  # nothing was loaded or allocated
    assert fit["gpu_bytes"] <= fit["budget"]


def test_a_placement_over_the_budget_moves_experts_to_ram_until_it_fits(
    real_shape_slice: Path,
) -> None:
    # 1 GiB minus the 512 MiB headroom: both layers' experts (1.6 GB) cannot stay on the device.
    with RpcWorker() as worker:
        found = _fit_in_child(real_shape_slice, worker, vram=1 * GiB, n_cpu_moe=0)
    fit, kwargs = found["fit"], found["kwargs"]
    assert fit["adjusted"] and fit["fits"]
    assert kwargs["n_gpu_layers"] == 3 and kwargs["n_cpu_moe"] == 2  # every layer still there
    assert fit["gpu_bytes"] <= fit["budget"] == 512 * MiB
    assert "placement adjusted to n_gpu_layers 3, n_cpu_moe 2" in found["summary"]
