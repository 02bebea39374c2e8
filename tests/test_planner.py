"""The memory model against the model's published measurements, and the planner's properties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from huozi_local.cli import main
from huozi_local.core.catalog import get_family
from huozi_local.core.errors import GGUFError
from huozi_local.core.gguf.header import read_gguf
from huozi_local.core.planning.hardware import GiB, Machine
from huozi_local.core.planning.memory_model import (
    MiB,
    ModelShape,
    Placement,
    estimate_memory,
    kv_cache_bytes,
    parse_size,
)
from huozi_local.core.planning.planner import (
    Plan,
    choose_plan,
    evaluate_plan,
    memory_budget,
    plan_for_file,
    plan_rank,
    rank_quants,
)
from huozi_local.testing.tiny_model import TinyModels

HUOZI3 = get_family("huozi3")

# The README's nvidia-smi readings at -c 2048 (llama.cpp, February 2024), read as GB = 10^9 bytes:
# with GB the three imply one consistent overhead; as GiB they would disagree by 1.3 GiB.
PUBLISHED = [("q4_0", 999, 28e9), ("q2_k", 999, 18e9), ("q2_k", 16, 9.6e9)]


@pytest.mark.parametrize(("quant", "ngl", "published"), PUBLISHED)
def test_published_gpu_memory_is_reproduced_within_5_percent(
    quant: str, ngl: int, published: float
) -> None:
    shape = ModelShape.from_manifest(HUOZI3, HUOZI3.quant(quant))
    # Layers counted as llama.cpp counted them then: ngl repeating layers, output only above 32.
    placement = Placement.from_n_gpu_layers(ngl, shape.n_layers, legacy=True)
    estimate = estimate_memory(shape, placement, backend="cuda", n_ctx=2048)
    assert abs(estimate.vram_bytes / published - 1) < 0.05


def test_layer_placement_follows_llama_cpp() -> None:
    assert Placement.from_n_gpu_layers(16, 32) == Placement(15, True)  # i_gpu_start = n+1-ngl
    assert Placement.from_n_gpu_layers(16, 32, legacy=True) == Placement(16, False)
    assert Placement.from_n_gpu_layers(33, 32) == Placement(32, True)
    assert Placement.from_n_gpu_layers(999, 32, legacy=True) == Placement(32, True)
    assert Placement.from_n_gpu_layers(32, 32, legacy=True) == Placement(32, False)
    assert Placement.from_n_gpu_layers(0, 32) == Placement(0, False)


def test_kv_cache_matches_the_architecture() -> None:
    shape = ModelShape.from_manifest(HUOZI3, HUOZI3.quant("q4_0"))
    assert kv_cache_bytes(shape, 2048, 32) == 256 * MiB  # 128 KiB per token
    assert kv_cache_bytes(shape, 32768, 32) == 4 * GiB
    assert kv_cache_bytes(shape, 2048, 32, "q8_0") == 256 * MiB * 34 // 64


def test_manifest_shape_adds_up_to_the_file_size() -> None:
    for quant in HUOZI3.quants:
        shape = ModelShape.from_manifest(HUOZI3, quant)
        assert abs(shape.weight_bytes - quant.size_bytes) < 1000
        assert shape.non_layer_bytes["token_embd.weight"] < shape.layer_bytes[0]


def _grid() -> dict[str, list[Machine]]:
    return {
        "cpu": [Machine.synthetic("cpu", 0, r * GiB) for r in (16, 32, 64)],
        "cuda": [Machine.synthetic("cuda", v * GiB, 64 * GiB) for v in (6, 8, 12, 16, 24, 48, 80)],
        "metal": [Machine.synthetic("metal", 0, r * GiB) for r in (16, 32, 64, 128)],
    }


@pytest.mark.parametrize("family_name", ["huozi3", "huozi3.5"])
@pytest.mark.parametrize("backend", ["cpu", "cuda", "metal"])
def test_more_memory_never_gives_a_worse_plan(family_name: str, backend: str) -> None:
    family = get_family(family_name)
    plans = [choose_plan(family, machine) for machine in _grid()[backend]]
    ranks = [plan_rank(p) for p in plans]
    assert ranks == sorted(ranks)
    assert plans[-1].fits


@pytest.mark.parametrize("backend", ["cpu", "cuda", "metal"])
def test_a_plan_never_exceeds_its_budgets(backend: str) -> None:
    for machine in _grid()[backend]:
        budget = memory_budget(machine)
        for option in rank_quants(get_family("huozi3.5"), machine):
            plan = option.plan
            if plan.fits:
                assert plan.vram_bytes <= budget.vram
                assert plan.ram_bytes <= budget.ram
                assert budget.ram <= machine.ram_available_bytes - GiB
                for gpu in machine.usable_gpus:
                    assert budget.vram <= gpu.vram_free_bytes - 512 * MiB
            assert (option.verdict == "no") == (not plan.fits)
            on_gpu_or_cpu_only = plan.fully_on_gpu or plan.backend == "cpu"
            assert option.verdict != "fits" or on_gpu_or_cpu_only
            assert option.verdict != "partial" or not on_gpu_or_cpu_only


def test_the_grid_choices_follow_the_rules() -> None:
    grid = _grid()
    cpu16, cpu32 = (choose_plan(HUOZI3, m) for m in grid["cpu"][:2])
    assert not cpu16.fits and "does not fit: needs RAM" in cpu16.reason("shortfall")
    assert cpu32.fits and cpu32.quant == "q4_0" and cpu32.n_gpu_layers == 0
    cuda = [choose_plan(HUOZI3, m) for m in grid["cuda"]]
    assert [p.fully_on_gpu for p in cuda] == [False] * 4 + [True] * 3
    assert cuda[4].quant == "q2_k"  # 24 GiB: q2_k fits entirely, q4_0 does not
    assert cuda[5].quant == "q4_0" and cuda[5].n_ctx == 32768
    # 6-16 GiB: MoE placement, every layer on the GPU and the overflow experts in RAM
    assert all(p.n_gpu_layers == 33 and 0 < p.n_cpu_moe < 32 for p in cuda[:4])
    assert [p.n_cpu_moe for p in cuda[:4]] == sorted((p.n_cpu_moe for p in cuda[:4]), reverse=True)
    metal = [choose_plan(HUOZI3, m) for m in grid["metal"]]
    assert [p.fits for p in metal] == [False, True, True, True]
    assert metal[2].quant == "q4_0" and metal[2].fully_on_gpu


@settings(max_examples=60, deadline=None)
@given(
    backend=st.sampled_from(["cpu", "cuda", "metal"]),
    small=st.tuples(st.integers(0, 96), st.integers(8, 192)),
    extra=st.tuples(st.integers(0, 32), st.integers(0, 64)),
)
def test_monotone_for_any_hardware(
    backend: str, small: tuple[int, int], extra: tuple[int, int]
) -> None:
    vram, ram = small
    vram = 0 if backend in ("cpu", "metal") else vram
    less = Machine.synthetic(backend, vram * GiB, ram * GiB)
    more_vram = 0 if backend in ("cpu", "metal") else (vram + extra[0]) * GiB
    more = Machine.synthetic(backend, more_vram, (ram + extra[1]) * GiB)
    assert plan_rank(choose_plan(HUOZI3, less)) <= plan_rank(choose_plan(HUOZI3, more))


def test_evaluate_plan_is_the_given_configuration() -> None:
    shape = ModelShape.from_manifest(HUOZI3, HUOZI3.quant("q2_k"))
    gpu = Machine.synthetic("cuda", 12 * GiB, 64 * GiB)
    plan = evaluate_plan(shape, gpu, n_gpu_layers=17, n_ctx=4096, quant="q2_k")
    assert (plan.n_gpu_layers, plan.n_ctx, plan.gpu_repeating_layers) == (17, 4096, 16)
    cpu = Machine.synthetic("cpu", 0, 64 * GiB)
    assert evaluate_plan(shape, cpu, n_gpu_layers=20, n_ctx=2048).n_gpu_layers == 0
    no_fa = evaluate_plan(
        shape, gpu, n_gpu_layers=1, n_ctx=2048, flash_attn=False, kv_cache_type="q8_0"
    )
    assert no_fa.kv_cache_type == "f16"  # a quantized V cache needs flash attention
    too_many = evaluate_plan(shape, gpu, n_gpu_layers=33, n_ctx=2048)
    assert not too_many.fits and too_many.vram_bytes > too_many.vram_budget_bytes


def test_plan_for_file_reads_the_real_header(tiny_models: TinyModels) -> None:
    path = tiny_models.get(layout="merged", quant="q4_0")
    gguf = read_gguf(path)
    shape = ModelShape.from_gguf(gguf)
    assert shape.n_layers == 4 and shape.n_vocab == 57002 and shape.n_expert == 8
    assert shape.weight_bytes == gguf.tensor_bytes
    plan = plan_for_file(path, Machine.synthetic("cpu", 0, 16 * GiB), max_ctx=4096)
    assert plan.fits and plan.quant == "q4_0" and plan.n_ctx == min(4096, gguf.context_length)
    cuda = plan_for_file(path, Machine.synthetic("cuda", 8 * GiB, 16 * GiB))
    assert cuda.fully_on_gpu and cuda.n_gpu_layers == 5
    fixed = plan_for_file(path, Machine.synthetic("cuda", 8 * GiB, 16 * GiB), n_gpu_layers=2)
    assert fixed.n_gpu_layers == 2 and not fixed.fully_on_gpu


def test_plan_for_file_rejects_a_truncated_file(tmp_path: Path, tiny_models: TinyModels) -> None:
    source = tiny_models.get(layout="merged", quant="q4_0").read_bytes()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(source[:5000])
    with pytest.raises(GGUFError):
        plan_for_file(broken, Machine.synthetic("cpu", 0, 16 * GiB))


def test_parse_size() -> None:
    assert parse_size("8GiB") == 8 * GiB
    assert parse_size("24GB") == 24 * 10**9
    assert parse_size("512MiB") == 512 * MiB
    assert parse_size("1.5 gib") == int(1.5 * GiB)
    for bad in ("", "GB", "8x", "-1GB", "eight GB", "nanGB"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_plan_command_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--model", "huozi3", "--backend", "cuda", "--vram", "24GiB", "--ram", "64GiB"]
    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("quant", "n_gpu_layers", "n_layers", "n_ctx", "vram_bytes", "ram_bytes", "fits"):
        assert key in data
    assert data["quant"] == "q2_k" and data["fits"] and data["n_gpu_layers"] == 33
    assert len(data["reasons"]) >= 5


def test_plan_command_evaluates_given_layers(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--model", "huozi3:q2_k", "--vram", "12GB", "--ram", "32GB", "--json"]
    assert main([*argv, "--gpu-layers", "17", "--ctx", "2048"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["n_gpu_layers"], data["n_ctx"], data["backend"]) == (17, 2048, "cuda")
    assert main(["plan", "--model", "huozi3", "--ram", "16GiB"]) == 0
    assert "DOES NOT FIT" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--vram", "lots"], "not a size"),
        (["--backend", "cuda"], "needs --vram"),
        (["--model", "nowhere/missing.gguf"], "no such model file"),
        (["--model", "nosuchfamily"], "unknown model family"),
        (["--model", "huozi3:q9_x"], "no quant"),
        (["--ctx", "0"], "must be positive"),
    ],
)
def test_plan_command_bad_input_is_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_plan_inputs_explicit_then_settings_then_planner(tiny_models: TinyModels) -> None:
    """One rule for every front end: this run's overrides win, then the settings ("auto" and
    the old 0 / -1: planned), then the planner."""
    from huozi_local.core.config import ALL_LAYERS, Settings
    from huozi_local.core.loading.inputs import LoadOverrides, PlanInputs
    from huozi_local.core.loading.load import plan_load
    from huozi_local.core.loading.model_file import model_file_at

    path = tiny_models.get("merged", "q4_0")
    model = model_file_at(path, label="tiny", quant="", spec="")
    machine = Machine.synthetic("cuda", 24 * GiB, 64 * GiB)

    def plan(settings: Settings, overrides: LoadOverrides | None = None) -> Plan:
        return plan_load(model, machine, PlanInputs.of(settings, overrides)).plan

    planned = plan(Settings())
    assert planned == plan_for_file(path, machine)
    saved = Settings(n_ctx=1024, n_gpu_layers=2)
    from_settings = plan(saved)
    assert (from_settings.n_ctx, from_settings.n_gpu_layers) == (1024, 2)
    explicit = plan(saved, LoadOverrides(n_ctx=512, n_gpu_layers=ALL_LAYERS))
    assert (explicit.n_ctx, explicit.n_gpu_layers) == (512, read_gguf(path).n_layers + 1)
    assert planned.n_threads == from_settings.n_threads == explicit.n_threads
