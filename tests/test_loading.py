"""One way to load a model (core.loading): the header read once, this run's overrides apart from
the saved settings, "auto" and "all" said one way, and the same plan for every front end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomlkit

from huozi_local.core.config import ALL_LAYERS, Paths, Settings
from huozi_local.core.errors import HuoziError
from huozi_local.core.loading.inputs import (
    LoadOverrides,
    PlanInputs,
    model_spec,
    overrides_after_edit,
)
from huozi_local.core.loading.load import plan_load
from huozi_local.core.loading.model_file import model_file_at, open_model
from huozi_local.core.planning.hardware import GiB, Machine
from huozi_local.testing.tiny_model import TinyModels

COUNT_OPENS = """
import json, os, sys
model = os.path.realpath(sys.argv[1])
opened = []

def hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        if os.path.realpath(os.fsdecode(args[0])) == model:
            opened.append(event)

sys.addaudithook(hook)
from huozi_local.cli import main
code = main(sys.argv[2:])
sys.stdout.flush()
print(json.dumps({"code": code, "opened": len(opened)}), file=sys.stderr)
"""


def _opens_during(model: Path, *args: str, home: Path) -> int:
    """How often Python opens the model file while `huozi-local ARGS` runs (llama.cpp's own
    open is C code, not counted): an audit hook sees every open() and os.open()."""
    env = {**os.environ, "HUOZI_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-c", COUNT_OPENS, str(model), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stderr.strip().splitlines()[-1])
    assert found["code"] == 0
    return int(found["opened"])


@pytest.mark.slow
def test_a_load_from_the_command_line_reads_the_header_once(
    tiny_models: TinyModels, huozi_home: Path
) -> None:
    """The header was parsed at every step (resolve, --ctx check, plan, engine): two opens of a
    27 GB file's header for a CPU load, four with --rpc. Now it is read once and passed down."""
    from huozi_local.testing.rpc_worker import RpcWorker

    model = tiny_models.get("merged", "q4_0", rig="chat")
    ask = ("ask", "你好", "--model", str(model), "--max-tokens", "4", "--json")
    assert _opens_during(model, *ask, home=huozi_home) == 1
    assert _opens_during(model, *ask, "--ctx", "512", "--gpu-layers", "0", home=huozi_home) == 1
    with RpcWorker() as worker:  # an RPC device: planned, dry-run fitted and loaded on it
        assert _opens_during(model, *ask, "--rpc", str(worker.endpoint), home=huozi_home) == 1


def test_overrides_win_for_this_run_and_give_way_to_what_the_user_edits() -> None:
    saved = Settings(model="huozi3:q4_0", n_ctx=4096, cpu_moe=2)
    flags = LoadOverrides(model="huozi3:q2_k", n_cpu_moe=5)
    assert model_spec(saved, flags) == "huozi3:q2_k"
    assert PlanInputs.of(saved, flags) == PlanInputs(32768, 4096, None, 5)
    # The person changes the MoE setting in the app: theirs from now on; --model still holds.
    edited = Settings(model="huozi3:q4_0", n_ctx=4096, cpu_moe=3)
    left = overrides_after_edit(flags, saved, edited)
    assert left == LoadOverrides(model="huozi3:q2_k")
    assert PlanInputs.of(edited, left).n_cpu_moe == 3


def test_auto_and_all_are_said_one_way_and_old_configs_keep_working(huozi_home: Path) -> None:
    path = Paths.from_env().config_file
    path.parent.mkdir(parents=True)
    # Written by an earlier release: 0 and -1 meant "planned".
    path.write_text("n_ctx = 0\nn_gpu_layers = -1\ncpu_moe = -1\n", encoding="utf-8")
    old = Settings.load(path)
    assert (old.n_ctx, old.n_gpu_layers, old.cpu_moe) == (None, None, None)
    old.n_gpu_layers = ALL_LAYERS
    old.save(path)
    written = tomlkit.parse(path.read_text(encoding="utf-8")).unwrap()
    assert (written["n_ctx"], written["n_gpu_layers"], written["cpu_moe"]) == (
        "auto",
        "all",
        "auto",
    )
    again = Settings.load(path)
    assert (again.n_ctx, again.n_gpu_layers, again.cpu_moe) == (None, ALL_LAYERS, None)
    path.write_text('n_gpu_layers = "most"\n', encoding="utf-8")
    with pytest.raises(HuoziError, match=r"'n_gpu_layers' must be \"auto\" or \"all\" or an"):
        Settings.load(path)


def test_all_layers_means_every_layer_of_this_model(tiny_models: TinyModels) -> None:
    model = model_file_at(tiny_models.get("merged", "q4_0"), label="t", quant="", spec="")
    gpu = Machine.synthetic("cuda", 24 * GiB, 64 * GiB)
    inputs = PlanInputs(n_ctx=512, n_gpu_layers=ALL_LAYERS)
    plan = plan_load(model, gpu, inputs).plan
    assert plan.n_gpu_layers == model.gguf.n_layers + 1 and plan.fully_on_gpu


def test_the_same_load_is_recognised_and_a_changed_one_is_not(tiny_models: TinyModels) -> None:
    """What decides a reload: what the plan would tell llama.cpp, not which setting moved."""
    model = model_file_at(tiny_models.get("merged", "q4_0"), label="t", quant="", spec="")
    gpu = Machine.synthetic("cuda", 24 * GiB, 64 * GiB)
    cpu = Machine.synthetic("cpu", 0, 24 * GiB)
    first = plan_load(model, gpu, PlanInputs(n_ctx=1024))
    assert first.same_load(plan_load(model, gpu, PlanInputs(n_ctx=1024)))
    assert not first.same_load(plan_load(model, gpu, PlanInputs(n_ctx=1024, n_cpu_moe=1)))
    assert not first.same_load(plan_load(model, gpu, PlanInputs(n_ctx=2048)))
    # On a CPU there are no experts to keep off a GPU: the same load either way.
    on_cpu = plan_load(model, cpu, PlanInputs(n_ctx=1024))
    assert on_cpu.same_load(plan_load(model, cpu, PlanInputs(n_ctx=1024, n_cpu_moe=3)))


def test_open_model_reads_the_header_and_names_the_model(
    tiny_models: TinyModels, huozi_home: Path
) -> None:
    paths = Paths.from_env()
    installed = paths.models_dir / "huozi3" / "huozi3-q4_0.gguf"
    installed.parent.mkdir(parents=True)
    installed.symlink_to(tiny_models.get("merged", "q4_0"))
    opened = open_model("huozi3", paths)
    assert (opened.label, opened.quant, opened.spec) == ("huozi3", "q4_0", "huozi3:q4_0")
    assert opened.gguf.n_layers == 4 and opened.display_name == "huozi3:q4_0"


def test_command_line_overrides_are_never_saved(tiny_models: TinyModels, huozi_home: Path) -> None:
    """`huozi-local --model X --cpu-moe 4` used to write both into the settings the app saves."""
    import argparse

    from huozi_local.commands.app import _build
    from huozi_local.core.store.conversations import ConversationStore

    paths = Paths.from_env()
    settings = Settings(model="", temperature=0.3)
    store = ConversationStore.open(paths.database_file)
    model = tiny_models.get("merged", "q4_0", rig="chat")
    args = argparse.Namespace(model=str(model), endpoint=None, api_key=None, cpu_moe=4)
    try:
        app = _build(args, paths, settings, store)
        assert app.overrides == LoadOverrides(model=str(model), n_cpu_moe=4)
        app.save_settings()
    finally:
        store.close()
    saved = Settings.load(paths.config_file)
    assert (saved.model, saved.cpu_moe, saved.temperature) == ("", None, 0.3)


def test_core_never_probes_the_machine() -> None:
    """The caller owns the machine: only front ends call detect_machine (tests describe one)."""
    core = Path(__file__).resolve().parents[1] / "huozi_local" / "core"
    callers = [
        str(path.relative_to(core))
        for path in core.rglob("*.py")
        if "detect_machine(" in path.read_text(encoding="utf-8")
        and path.name not in ("hardware.py", "probes.py")
    ]
    assert callers == []


def test_the_child_process_counter_sees_a_second_read(
    tiny_models: TinyModels, huozi_home: Path
) -> None:
    """The open counter itself: `inspect` reads the header once, and a script reading it twice
    is counted twice (so a count of 1 above means something)."""
    model = tiny_models.get("merged", "q4_0")
    assert _opens_during(model, "inspect", str(model), "--json", home=huozi_home) == 1
    twice = textwrap.dedent(
        """
        import sys
        from huozi_local.core.gguf.header import read_gguf
        read_gguf(sys.argv[1]); read_gguf(sys.argv[1])
        """
    )
    counted = COUNT_OPENS.replace(
        "from huozi_local.cli import main\ncode = main(sys.argv[2:])", twice + "\ncode = 0"
    )
    done = subprocess.run(
        [sys.executable, "-c", counted, str(model)], capture_output=True, text=True, timeout=120
    )
    assert json.loads(done.stderr.strip().splitlines()[-1])["opened"] == 2


def test_prompt_cache_caps_come_from_the_settings_or_what_the_plan_leaves(
    tiny_models: TinyModels, huozi_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huozi_local.core import disk
    from huozi_local.core.loading.cache import cache_limits, prompt_cache_folder

    paths = Paths.from_env()
    model = model_file_at(tiny_models.get("merged", "q4_0"), label="t", quant="", spec="")
    plan = plan_load(model, Machine.synthetic("cpu", 0, 24 * GiB), PlanInputs()).plan
    monkeypatch.setattr(disk, "free_disk_bytes", lambda folder: 50 * 10**9)
    auto = cache_limits(Settings(), paths, plan)
    assert auto is not None and auto.folder == prompt_cache_folder(paths)
    spare = plan.ram_budget_bytes - plan.ram_bytes
    assert auto.ram_bytes == min(2048 * 1024**2, spare // 2)
    assert auto.disk_bytes == 5 * 10**9  # a tenth of the free space
    monkeypatch.setattr(disk, "free_disk_bytes", lambda folder: 10**13)
    assert (cache_limits(Settings(), paths, plan) or auto).disk_bytes == 20 * 10**9
    fixed = cache_limits(Settings(prompt_cache_ram_mib=10, prompt_cache_disk_mib=0), paths, plan)
    assert fixed is not None and (fixed.ram_bytes, fixed.disk_bytes) == (10 * 1024**2, 0)
    assert cache_limits(Settings(prompt_cache=False), paths, plan) is None
