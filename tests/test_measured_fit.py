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

from huozi_local.core.loading.fit import needs_fit
from huozi_local.core.planning.hardware import GPU, Machine
from huozi_local.core.planning.memory_model import ModelShape
from huozi_local.core.planning.plan_model import evaluate_plan
from huozi_local.testing.real_shape import RealShape, write_real_shape_gguf
from huozi_local.testing.rpc_worker import RpcWorker, in_child

GiB = 1024**3
MiB = 1024**2

FIT = """
import json
from dataclasses import replace
from huozi_local.core.devices import ggml
from huozi_local.core.devices.endpoints import parse_endpoint
from huozi_local.core.gguf.header import read_gguf
from huozi_local.core.loading.fit import measured_fit
from huozi_local.core.planning.hardware import GPU, Machine
from huozi_local.core.planning.planner import plan_for_file

ggml.add_rpc_servers([parse_endpoint(endpoint)])
cpu = Machine.synthetic("cpu", 0, 64 * 1024**3)
worker_gpu = GPU(0, "RPC worker", "rpc", vram, vram)
machine = replace(cpu, gpus=(worker_gpu,))
gguf = read_gguf(model)
asked = plan_for_file(gguf, machine, n_ctx=2048, n_gpu_layers=3, n_cpu_moe=n_cpu_moe)
plan = measured_fit(gguf, machine, asked)
print(json.dumps({"plan": plan.to_dict(), "summary": plan.reason("measured_fit")}))
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


def test_only_loads_that_offload_are_fitted(real_shape_slice: Path) -> None:
    from huozi_local.core.gguf.header import read_gguf

    shape = ModelShape.from_gguf(read_gguf(real_shape_slice))
    cpu = Machine.synthetic("cpu", 0, 64 * GiB)
    cuda = Machine.synthetic("cuda", 12 * GiB, 64 * GiB)
    rpc_only = replace(cpu, gpus=(GPU(0, "worker", "rpc", GiB, GiB),))

    def asks(machine: Machine, n_gpu_layers: int) -> bool:
        plan = evaluate_plan(shape, machine, n_gpu_layers=n_gpu_layers, n_ctx=2048)
        return needs_fit(machine, plan)

    assert not asks(cpu, 3)
    assert not asks(cuda, 0)
    assert asks(cuda, 2) and asks(cuda, 3)
    assert rpc_only.planning_backend == "rpc" and asks(rpc_only, 3)


def test_a_placement_that_fits_is_kept_with_llamas_compute_buffers(real_shape_slice: Path) -> None:
    with RpcWorker() as worker:
        found = _fit_in_child(real_shape_slice, worker, vram=4 * GiB, n_cpu_moe=2)
    plan = found["plan"]
    fit = plan["measured_fit"]
    assert not fit["adjusted"] and fit["fits"] and plan["fits"]
    assert plan["n_gpu_layers"] == 3 and plan["n_cpu_moe"] == 2
    # the plan carries llama.cpp's figure, not the estimate
    assert plan["breakdown"]["gpu"]["compute"] == fit["measured_compute"]
    assert fit["measured_compute"] == fit["dry_run_buffers"]["RPC0"]["compute"] > 100 * MiB
    assert fit["dry_run_buffers"]["RPC0"]["weights"] == 0  # nothing was loaded or allocated
    assert fit["gpu_bytes"] <= fit["budget"]


def test_a_placement_over_the_budget_moves_experts_to_ram_until_it_fits(
    real_shape_slice: Path,
) -> None:
    # 1 GiB minus the 512 MiB headroom: both layers' experts (1.6 GB) cannot stay on the device.
    with RpcWorker() as worker:
        found = _fit_in_child(real_shape_slice, worker, vram=1 * GiB, n_cpu_moe=0)
    plan = found["plan"]
    fit = plan["measured_fit"]
    assert fit["adjusted"] and fit["fits"] and plan["fits"]
    assert (fit["planned_n_gpu_layers"], fit["planned_n_cpu_moe"]) == (3, 0)
    assert plan["n_gpu_layers"] == 3 and plan["n_cpu_moe"] == 2  # every layer still there
    assert plan["vram_bytes"] == fit["gpu_bytes"] <= fit["budget"] == 512 * MiB
    assert "placement adjusted to n_gpu_layers 3, n_cpu_moe 2" in found["summary"]
    # the whole plan was evaluated again at the new placement, not patched
    assert any("experts of layers 0-1 in RAM" in line for line in plan["reasons"])
