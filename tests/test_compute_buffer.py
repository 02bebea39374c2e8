"""The compute-buffer model against what llama.cpp allocates at huozi3's real tensor shapes.

A 2-layer slice with the official dimensions (hidden 4096, 32 heads, 8 KV heads, FFN 14336,
8 experts / 2 used, 57002-token vocabulary) is written as a sparse file (no disk, no time) and
loaded by the real llama.cpp on the CPU; its log says what it reserved. Estimates are checked
within 3% over contexts, ubatch sizes and flash attention.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from huozi_local.core.devices.buffers import capture_llama_log
from huozi_local.core.gguf.header import read_gguf
from huozi_local.core.planning.memory_model import ModelShape, Placement, estimate_memory
from huozi_local.testing.real_shape import RealShape, write_real_shape_gguf

MiB = 1024**2
BUFFER_LINE = re.compile(r"CPU\s+(compute|output) buffer size\s*=\s*([0-9.]+) MiB")


@pytest.fixture(scope="module")
def real_slice(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    import llama_cpp

    path = write_real_shape_gguf(tmp_path_factory.mktemp("real") / "huozi3-slice.gguf")
    params = llama_cpp.llama_model_default_params()
    params.use_extra_bufts = False  # no repacking: the mapped zeros are never read
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    assert model, "llama.cpp could not load the real-shape slice"
    yield path, model
    llama_cpp.llama_model_free(model)


def _reserved_on_cpu(model: Any, n_ctx: int, n_ubatch: int, flash_attn: bool) -> int:
    """The CPU compute + output buffers llama.cpp logs when it makes a context."""
    import llama_cpp

    with capture_llama_log() as lines:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_ubatch, n_ubatch
        params.flash_attn_type = 1 if flash_attn else 0
        ctx = llama_cpp.llama_init_from_model(model, params)
        assert ctx
        llama_cpp.llama_free(ctx)
    sizes = [float(m.group(2)) for m in map(BUFFER_LINE.search, "".join(lines).splitlines()) if m]
    assert len(sizes) == 2, "llama.cpp logged no CPU compute/output buffer"
    return round(sum(sizes) * MiB)


def test_the_slice_has_the_official_shapes(real_slice: tuple[Path, Any]) -> None:
    gguf = read_gguf(real_slice[0])
    assert (gguf.n_embd, gguf.n_head, gguf.n_head_kv, gguf.n_ff) == (4096, 32, 8, 14336)
    assert (gguf.n_expert, gguf.n_expert_used, gguf.vocab_size) == (8, 2, 57002)
    assert gguf.n_layers == RealShape().n_layers == 2
    assert real_slice[0].stat().st_blocks * 512 < 64 * MiB  # sparse: the data is a hole


@pytest.mark.parametrize(
    ("n_ctx", "n_ubatch", "flash_attn"),
    [
        (2048, 512, True),
        (2048, 512, False),
        (8192, 512, True),
        (8192, 512, False),  # attention scores dominate
        (4096, 256, False),
        (16384, 128, False),
        (2048, 64, True),
    ],
)
def test_cpu_compute_buffer_is_within_3_percent(
    real_slice: tuple[Path, Any], n_ctx: int, n_ubatch: int, flash_attn: bool
) -> None:
    path, model = real_slice
    shape = ModelShape.from_gguf(read_gguf(path))
    estimate = estimate_memory(
        shape,
        Placement(0, False),
        backend="cpu",
        n_ctx=n_ctx,
        n_ubatch=n_ubatch,
        flash_attn=flash_attn,
    )
    allocated = _reserved_on_cpu(model, n_ctx, n_ubatch, flash_attn)
    assert abs(estimate.cpu.compute / allocated - 1) < 0.03, (estimate.cpu.compute, allocated)
