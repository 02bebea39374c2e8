"""Machine detection from injected probes (never from the machine running the test), and clean
degradation of every GPU probe. The real probes run once, checked only for their contract."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from huozi_local.cli import main
from huozi_local.core.planning.build_info import (
    BuildDevice,
    BuildInfo,
    reinstall_command,
    running_under_pipx,
)
from huozi_local.core.planning.hardware import (
    GPU,
    IGNORE_LOCAL_GPUS_ENV,
    GiB,
    Machine,
    MiB,
    detect_machine,
    metal_default_working_set,
    reinstall_hint,
)
from huozi_local.core.planning.probes import (
    probe_cpu,
    probe_cuda,
    probe_nvidia_smi,
    probe_nvml,
    probe_ram,
    probe_rocm,
)

CPU_BUILD = BuildInfo(
    True, "0.3.36", False, (BuildDevice("CPU", "x86-64", "cpu", 8 * GiB, 16 * GiB),), "CPU : AVX2"
)


@pytest.fixture(autouse=True)
def probes_see_local_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """conftest hides local GPUs from CLI children; these tests inject the GPUs they describe."""
    monkeypatch.delenv(IGNORE_LOCAL_GPUS_ENV, raising=False)


def _no_command(argv: Sequence[str]) -> str:
    raise FileNotFoundError(argv[0])


def absent(name: str) -> None:
    return None


def test_a_machine_without_gpus_plans_for_the_cpu(tmp_path: Path) -> None:
    machine = detect_machine(
        build=CPU_BUILD,
        nvml_loader=_missing,
        run=_no_command,
        which=absent,
        drm=tmp_path / "no-drm",
        system="Linux",
        arch="x86_64",
    )
    assert (machine.os, machine.arch) == ("linux", "x86_64")
    assert machine.gpus == () and machine.planning_backend == "cpu"
    assert "NVML unavailable: No module named 'pynvml'" in machine.notes
    assert "nvidia-smi not found" in machine.notes
    assert "no GPU found: planning for the CPU" in machine.notes
    assert machine.build == CPU_BUILD
    assert reinstall_hint(machine) is None


def test_a_mac_is_described_on_any_machine(tmp_path: Path) -> None:
    def sysctl(argv: Sequence[str]) -> str:
        answers = {"iogpu.wired_limit_mb": "0", "machdep.cpu.brand_string": "Apple M3 Max"}
        if argv[:2] == ["sysctl", "-n"] and argv[2] in answers:
            return answers[argv[2]] + "\n"
        raise FileNotFoundError(argv[0])

    metal_build = BuildInfo(True, "0.3.36", True, (BuildDevice("Metal", "M3", "gpu", 1, 1),))
    machine = detect_machine(
        build=metal_build,
        nvml_loader=_missing,
        run=sysctl,
        which=absent,
        drm=tmp_path / "no-drm",
        system="Darwin",
        arch="arm64",
    )
    assert (machine.os, machine.arch) == ("macos", "arm64")
    assert [(g.name, g.backend) for g in machine.gpus] == [("Apple M3 Max GPU", "metal")]
    assert machine.planning_backend == "metal" and machine.is_unified_memory


def test_the_real_probes_keep_their_contract() -> None:
    """Whatever this machine has: GPUs, or notes that say why none were found; never a raise."""
    for gpus, notes in (probe_nvml(), probe_nvidia_smi()):
        assert all(g.backend == "cuda" and g.vram_total_bytes > 0 for g in gpus)
        assert gpus or notes
    machine = detect_machine()
    assert machine.ram_total_bytes > 0 and 1 <= machine.physical_cores <= machine.logical_cores
    assert machine.gpus or "no GPU found: planning for the CPU" in machine.notes
    assert machine.planning_backend in {"cpu", *(g.backend for g in machine.gpus)}


class FakeNVML:
    """A stand-in for pynvml: tests describe a card rather than read the machine's own."""

    def __init__(self, fail_at: str | None = None) -> None:
        self.fail_at = fail_at
        self.shut_down = False

    def _maybe_fail(self, name: str) -> None:
        if self.fail_at == name:
            raise RuntimeError(f"{name} exploded")

    def nvmlInit(self) -> None:
        self._maybe_fail("init")

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlSystemGetDriverVersion(self) -> bytes:
        return b"550.54"

    def nvmlDeviceGetCount(self) -> int:
        self._maybe_fail("count")
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(total=24 * GiB, free=23 * GiB)

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        return (8, 9)

    def nvmlDeviceGetName(self, handle: int) -> str:
        return "NVIDIA GeForce RTX 4090"


def test_nvml_reports_a_gpu() -> None:
    fake = FakeNVML()
    gpus, notes = probe_nvml(lambda: fake)
    assert notes == [] and fake.shut_down
    assert gpus == [GPU(0, "NVIDIA GeForce RTX 4090", "cuda", 24 * GiB, 23 * GiB, "550.54", "8.9")]


def _missing() -> Any:
    raise ImportError("No module named 'pynvml'")


@pytest.mark.parametrize("loader", [_missing, lambda: FakeNVML("init"), lambda: FakeNVML("count")])
def test_nvml_failures_become_notes(loader: Any) -> None:
    gpus, notes = probe_nvml(loader)
    assert gpus == [] and len(notes) == 1


def _smi(output: str | Exception) -> Any:
    def run(argv: Sequence[str]) -> str:
        assert argv[0] == "nvidia-smi"
        if isinstance(output, Exception):
            raise output
        return output

    return run


def present(name: str) -> str:
    return f"/usr/bin/{name}"


def test_nvidia_smi_fallback_parses_csv() -> None:
    csv = "NVIDIA GeForce RTX 3060, 12288, 11800, 535.104.05, 8.6\n"
    gpus, notes = probe_cuda(_missing, _smi(csv), present)
    assert notes == ["NVML unavailable: No module named 'pynvml'"]
    assert gpus == [
        GPU(0, "NVIDIA GeForce RTX 3060", "cuda", 12288 * MiB, 11800 * MiB, "535.104.05", "8.6")
    ]


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (subprocess.CalledProcessError(9, "nvidia-smi"), "nvidia-smi failed"),
        (OSError("exec format error"), "nvidia-smi failed"),
        (subprocess.TimeoutExpired("nvidia-smi", 10), "nvidia-smi failed"),
        ("NVIDIA-SMI has failed because it couldn't communicate with the driver", "not understood"),
        ("GPU, lots, [N/A], x, y\n", "not understood"),
    ],
)
def test_nvidia_smi_failures_become_notes(output: str | Exception, expected: str) -> None:
    gpus, notes = probe_nvidia_smi(_smi(output), present)
    assert gpus == [] and expected in notes[0]


def test_detect_machine_survives_every_gpu_probe_failing(tmp_path: Path) -> None:
    machine = detect_machine(
        nvml_loader=lambda: FakeNVML("init"),
        run=_smi(subprocess.CalledProcessError(1, "nvidia-smi")),
        which=present,
        drm=tmp_path / "no-drm",
        build=BuildInfo(False, "not installed", False),
        system="Linux",
    )
    assert machine.gpus == () and machine.planning_backend == "cpu"
    assert any("nvidia-smi failed" in n for n in machine.notes)


def test_gpu_without_gpu_build_gets_the_reinstall_command(tmp_path: Path) -> None:
    def with_nvidia_card(build: BuildInfo) -> Machine:
        return detect_machine(
            nvml_loader=lambda: FakeNVML(), build=build, drm=tmp_path / "no-drm", system="Linux"
        )

    cpu_build = BuildInfo(True, "0.3.36", False, (BuildDevice("CPU", "x", "cpu", 1, 1),))
    machine = with_nvidia_card(cpu_build)
    assert machine.gpus[0].name == "NVIDIA GeForce RTX 4090"
    assert machine.planning_backend == "cpu" and machine.unusable_gpus == machine.gpus
    hint = reinstall_hint(machine)
    assert hint is not None and 'CMAKE_ARGS="-DGGML_CUDA=on"' in hint
    assert "--force-reinstall --no-cache-dir llama-cpp-python" in hint
    cuda_build = BuildInfo(
        True, "0.3.36", True, (BuildDevice("CUDA0", "RTX 4090", "gpu", 23 * GiB, 24 * GiB),)
    )
    usable = with_nvidia_card(cuda_build)
    assert usable.planning_backend == "cuda" and reinstall_hint(usable) is None


def test_reinstall_command_for_pipx() -> None:
    assert reinstall_command("cuda", pipx=True) == (
        'CMAKE_ARGS="-DGGML_CUDA=on" pipx runpip huozi-local install --upgrade '
        "--force-reinstall --no-cache-dir llama-cpp-python"
    )
    assert "-DGGML_METAL=on" in str(reinstall_command("metal", pipx=False))
    assert reinstall_command("vulkan") is None
    assert running_under_pipx("/home/a/.local/share/pipx/venvs/huozi-local")
    assert not running_under_pipx("/work/venv")


def test_probe_files(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384000 kB\nMemFree: 100 kB\nMemAvailable: 8192000 kB\n")
    assert probe_ram(meminfo)[:2] == (16384000 * 1024, 8192000 * 1024)
    cpuinfo = tmp_path / "cpuinfo"
    blocks = [
        f"processor\t: {i}\nmodel name\t: Test CPU\nphysical id\t: 0\ncore id\t\t: {i // 2}\n"
        for i in range(8)
    ]
    cpuinfo.write_text("\n".join(blocks))
    name, physical, _logical, _notes = probe_cpu(cpuinfo)
    assert (name, physical) == ("Test CPU", 4)
    card = tmp_path / "drm" / "card0" / "device"
    card.mkdir(parents=True)
    (card / "mem_info_vram_total").write_text(str(16 * GiB))
    (card / "mem_info_vram_used").write_text(str(1 * GiB))
    (tmp_path / "drm" / "card0-DP-1").mkdir()
    gpus, _ = probe_rocm(tmp_path / "drm")
    assert [(g.backend, g.vram_total_bytes, g.vram_free_bytes) for g in gpus] == [
        ("rocm", 16 * GiB, 15 * GiB)
    ]


def test_synthetic_machines() -> None:
    mac = Machine.synthetic("metal", 0, 64 * GiB)
    assert mac.gpus[0].vram_total_bytes == metal_default_working_set(64 * GiB) == 48 * GiB
    assert metal_default_working_set(32 * GiB) == 32 * GiB * 2 // 3
    assert mac.planning_backend == "metal" and mac.is_unified_memory
    assert Machine.synthetic("cpu", 0, 32 * GiB).planning_backend == "cpu"
    with pytest.raises(ValueError):
        Machine.synthetic("tpu", 0, GiB)


def test_doctor_command(capsys: pytest.CaptureFixture[str], described_machine: Machine) -> None:
    assert described_machine.gpus == ()  # conftest's machine, not this one
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "GPU:    none found" in out and "llama-cpp-python: " in out and "why:" in out
    assert main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["planning_backend"] == "cpu" and data["reinstall_hint"] is None
    assert data["machine"]["gpus"] == [] and data["plan"]["n_gpu_layers"] == 0
    assert main(["doctor", "--model", "/nonexistent/x.gguf"]) == 2
    assert "no such model file" in capsys.readouterr().err


def test_ignoring_local_gpus_leaves_the_cpu_and_rpc_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cuda_build = BuildInfo(
        True,
        "0.3.36",
        True,
        (
            BuildDevice("CUDA0", "RTX 4090", "gpu", 23 * GiB, 24 * GiB),
            BuildDevice("RPC0", "127.0.0.1:50052", "gpu", 7 * GiB, 8 * GiB),
        ),
    )

    def detect() -> Machine:
        return detect_machine(
            nvml_loader=lambda: FakeNVML(), build=cuda_build, drm=tmp_path / "d", system="Linux"
        )

    assert detect().planning_backend == "cuda"
    monkeypatch.setenv(IGNORE_LOCAL_GPUS_ENV, "1")
    ignored = detect()
    assert [g.backend for g in ignored.gpus] == ["rpc"] and ignored.planning_backend == "rpc"
    assert f"local GPUs ignored ({IGNORE_LOCAL_GPUS_ENV} is set)" in ignored.notes
