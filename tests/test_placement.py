"""MoE-aware placement: the experts of the first N layers in RAM, everything else on the GPU."""

from __future__ import annotations

import json

import pytest

from huozi_local.cli import main
from huozi_local.core.catalog import get_family
from huozi_local.core.gguf.header import read_gguf
from huozi_local.core.planning.hardware import GiB, Machine
from huozi_local.core.planning.memory_model import (
    ModelShape,
    Placement,
    cpu_bytes_per_token,
    device_breakdown,
    kv_cache_bytes,
)
from huozi_local.core.planning.plan_model import Plan
from huozi_local.core.planning.planner import best_plan_for_shape, evaluate_plan
from huozi_local.testing.tiny_model import TinyModels

HUOZI3 = get_family("huozi3")
Q4_0 = ModelShape.from_manifest(HUOZI3, HUOZI3.quant("q4_0"))


def test_the_header_counts_each_layers_expert_tensors(tiny_models: TinyModels) -> None:
    gguf = read_gguf(tiny_models.get("merged", "f32"))
    experts = gguf.layer_expert_bytes()
    # 3 matrices (gate, up, down) of 8 experts x n_embd x n_ff in f32 per layer
    assert experts == [3 * 8 * 256 * 512 * 4] * gguf.n_layers
    assert all(e < layer for e, layer in zip(experts, gguf.layer_bytes(), strict=True))
    shape = ModelShape.from_gguf(gguf)
    assert shape.is_moe and shape.layer_expert_bytes == tuple(experts)


def test_manifest_shapes_know_the_experts() -> None:
    # Mixtral q4_0: the experts are ~97% of a layer (3 x 8 x 4096 x 14336 weights)
    assert Q4_0.is_moe
    share = Q4_0.expert_bytes(0) / Q4_0.layer_bytes[0]
    assert 0.95 < share < 0.99


def test_device_breakdown_moves_exactly_the_held_back_experts() -> None:
    everything = device_breakdown(Q4_0, n_gpu_layers=33, n_cpu_moe=0, n_ctx=2048)
    assert everything.weights == sum(Q4_0.layer_bytes) + Q4_0.output_bytes
    assert everything.kv == kv_cache_bytes(Q4_0, 2048, 32)
    assert everything.overhead == 0  # an RPC device: only what llama.cpp allocates
    for n_cpu_moe in (1, 10, 32):
        held = device_breakdown(Q4_0, n_gpu_layers=33, n_cpu_moe=n_cpu_moe, n_ctx=2048)
        moved = sum(Q4_0.expert_bytes(i) for i in range(n_cpu_moe))
        assert held.weights == everything.weights - moved
        assert held.kv == everything.kv  # attention and its KV cache stay on the device
    # With 17 layers offloaded (layers 16-31 and the output), n_cpu_moe 20 takes the experts of
    # layers 16-19 off the device; those of layers 0-15 were never on it.
    split = device_breakdown(Q4_0, n_gpu_layers=17, n_cpu_moe=0, n_ctx=2048)
    both = device_breakdown(Q4_0, n_gpu_layers=17, n_cpu_moe=20, n_ctx=2048)
    assert split.weights - both.weights == sum(Q4_0.expert_bytes(i) for i in range(16, 20))
    assert device_breakdown(Q4_0, n_gpu_layers=0, n_cpu_moe=5, n_ctx=2048).total == 0


def test_cpu_bytes_per_token_counts_only_the_experts_a_token_uses() -> None:
    n = Q4_0.n_layers
    full = Placement.from_n_gpu_layers(n + 1, n)
    assert cpu_bytes_per_token(Q4_0, full) == 0
    one = Placement.from_n_gpu_layers(n + 1, n, n_cpu_moe=1)
    assert cpu_bytes_per_token(Q4_0, one) == round(Q4_0.expert_bytes(0) * 2 / 8)
    # a whole layer on the CPU also costs its attention and its KV cache
    layer = Placement.from_n_gpu_layers(n, n)
    attention = Q4_0.layer_bytes[0] - Q4_0.expert_bytes(0)
    assert cpu_bytes_per_token(Q4_0, layer) == round(
        attention + Q4_0.expert_bytes(0) * 2 / 8 + kv_cache_bytes(Q4_0, 2048, 1)
    )


def test_12_gib_puts_every_layer_on_the_gpu_and_overflow_experts_in_ram(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["plan", "--model", "huozi3:q4_0", "--backend", "cuda", "--vram", "12GiB"]
    assert main([*argv, "--ram", "64GiB", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fits"] and data["n_gpu_layers"] == 33 and 0 < data["n_cpu_moe"] < 32
    assert data["breakdown"]["gpu"]["total"] == data["vram_bytes"] <= data["vram_budget_bytes"]
    why = [r for r in data["reasons"] if r.startswith("placement: MoE")]
    assert len(why) == 1 and f"n_cpu_moe {data['n_cpu_moe']}" in why[0]
    assert "whole-layer split" in why[0]
    # the choice is the cheaper one: the best whole-layer split reads more from RAM per token
    machine = Machine.synthetic("cuda", 12 * GiB, 64 * GiB)
    split = best_plan_for_shape(Q4_0, machine, n_cpu_moe=0)
    assert split.fits and split.n_gpu_layers < 33
    assert data["cpu_bytes_per_token"] < split.cpu_bytes_per_token
    # one fewer expert layer in RAM would not fit
    tighter = evaluate_plan(
        Q4_0, machine, n_gpu_layers=33, n_ctx=2048, n_cpu_moe=data["n_cpu_moe"] - 1
    )
    assert not tighter.fits
    assert main([*argv, "--ram", "64GiB"]) == 0
    text = capsys.readouterr().out
    assert f"n_cpu_moe:    {data['n_cpu_moe']} (experts of layers 0-" in text


@pytest.mark.parametrize("quant", ["q4_0", "q2_k"])
def test_the_choice_is_the_fitting_placement_that_reads_least(quant: str) -> None:
    shape = ModelShape.from_manifest(HUOZI3, HUOZI3.quant(quant))
    n = shape.n_layers
    for vram in range(4, 34, 3):
        machine = Machine.synthetic("cuda", vram * GiB, 64 * GiB)
        chosen = best_plan_for_shape(shape, machine, n_ctx=2048)

        def at(ngl: int, moe: int, machine: Machine = machine) -> int | None:
            plan = evaluate_plan(shape, machine, n_gpu_layers=ngl, n_ctx=2048, n_cpu_moe=moe)
            return plan.cpu_bytes_per_token if plan.fits else None

        splits = [at(ngl, 0) for ngl in range(n + 2)]
        moe = [at(n + 1, k) for k in range(n + 1)]
        least = min(c for c in splits + moe if c is not None)
        assert chosen.fits and chosen.cpu_bytes_per_token == least
        if chosen.fully_on_gpu:
            assert chosen.n_cpu_moe == 0 and least == 0


def test_dense_models_and_cpu_machines_never_hold_experts_back() -> None:
    dense = ModelShape(
        name="dense",
        n_layers=4,
        layer_bytes=(100 * 2**20,) * 4,
        non_layer_bytes={"token_embd.weight": 2**20, "output.weight": 2**20},
        n_embd=256,
        n_head=8,
        n_head_kv=2,
        head_dim=32,
        n_vocab=1000,
        n_ff=512,
        n_expert=0,
        n_expert_used=0,
        context_length=4096,
    )
    gpu = Machine.synthetic("cuda", 2 * GiB, 8 * GiB)
    assert evaluate_plan(dense, gpu, n_gpu_layers=5, n_ctx=2048, n_cpu_moe=3).n_cpu_moe == 0
    cpu = Machine.synthetic("cpu", 0, 64 * GiB)
    assert evaluate_plan(Q4_0, cpu, n_gpu_layers=33, n_ctx=2048, n_cpu_moe=3).n_cpu_moe == 0


def test_cpu_moe_forces_n_cpu_moe(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--model", "huozi3:q4_0", "--vram", "16GiB", "--ram", "64GiB", "--json"]
    assert main([*argv, "--cpu-moe", "30"]) == 0
    data = json.loads(capsys.readouterr().out)
    # the experts of 30 layers in RAM leave room for every layer's attention
    assert (data["n_cpu_moe"], data["n_gpu_layers"]) == (30, 33)
    assert any(r.startswith("placement: as asked (n_cpu_moe 30)") for r in data["reasons"])
    assert main([*argv, "--cpu-moe", "0", "--gpu-layers", "10"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["n_cpu_moe"], data["n_gpu_layers"]) == (0, 10)


@pytest.mark.parametrize("command", ["plan", "ask", "chat", "tui", "serve"])
def test_a_negative_cpu_moe_is_one_line(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    extra = ["hello"] if command == "ask" else []
    assert main([command, *extra, "--cpu-moe", "-2"]) == 2
    err = capsys.readouterr().err
    assert "--cpu-moe must be 0 or more" in err and len(err.strip().splitlines()) == 1


def test_the_cpu_moe_setting_is_used_unless_the_command_line_says_otherwise(
    tiny_models: TinyModels,
) -> None:
    from huozi_local.core.config import Settings
    from huozi_local.core.loading.inputs import LoadOverrides, PlanInputs
    from huozi_local.core.loading.load import plan_load
    from huozi_local.core.loading.model_file import model_file_at

    model = model_file_at(tiny_models.get("merged", "f32"), label="tiny", quant="", spec="")
    machine = Machine.synthetic("cuda", 24 * GiB, 64 * GiB)

    def plan(settings: Settings, overrides: LoadOverrides | None = None) -> Plan:
        return plan_load(model, machine, PlanInputs.of(settings, overrides)).plan

    assert plan(Settings()).n_cpu_moe == 0  # everything fits
    saved = Settings(cpu_moe=3)
    assert plan(saved).n_cpu_moe == 3
    assert plan(saved, LoadOverrides(n_cpu_moe=1)).n_cpu_moe == 1
    assert plan(saved).n_gpu_layers == 5  # all 4 layers + output


def test_the_plans_n_cpu_moe_reaches_the_engine(tiny_models: TinyModels) -> None:
    """What the planner chose is what the engine is loaded with (every front end loads through
    core.loading, which tells the loader the plan's placement)."""
    from huozi_local.core.chat.engine import LlamaEngine
    from huozi_local.core.chat.types import ChatMessage, ReplyResult, SamplingOptions, TextDelta
    from huozi_local.core.config import Settings
    from huozi_local.core.loading.fit import load_options
    from huozi_local.core.loading.inputs import PlanInputs
    from huozi_local.core.loading.load import plan_load
    from huozi_local.core.loading.model_file import model_file_at
    from huozi_local.testing.tiny_model import RIG_TEXT

    path = tiny_models.get("merged", "f32", "chat")
    model = model_file_at(path, label="tiny", quant="", spec="")
    machine = Machine.synthetic("cuda", 24 * GiB, 64 * GiB)
    plan = plan_load(model, machine, PlanInputs.of(Settings(n_ctx=512, cpu_moe=3))).plan
    options = load_options(plan)
    assert options.n_cpu_moe == plan.n_cpu_moe == 3
    engine = LlamaEngine.load(model.gguf, options)
    try:
        events = list(
            engine.stream_reply(
                [ChatMessage("user", "你好")], SamplingOptions(temperature=0.0, max_tokens=32)
            )
        )
    finally:
        engine.close()
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == RIG_TEXT and isinstance(events[-1], ReplyResult)
