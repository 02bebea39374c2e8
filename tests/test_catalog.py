"""The model manifests: what they say, that they parse, and that the wheel carries them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from huozi_local.core import huozi
from huozi_local.core.catalog import get_family, load_families, parse_model_spec, quant_rank
from huozi_local.core.chat.types import SamplingOptions
from huozi_local.core.config import Settings
from huozi_local.core.errors import HuoziError

PROJECT = Path(__file__).resolve().parents[1]


def test_huozi3_manifest_matches_the_official_release() -> None:
    family = get_family("huozi3")
    assert family.repo_id == family.modelscope_id == "HIT-SCIR/huozi3-gguf"
    assert not family.community
    assert family.stop_token_ids == (huozi.END_OF_UTTERANCE_ID,)
    assert family.template == "huozi"
    assert "HIT-SCIR" in family.license
    arch = family.architecture
    assert (arch.n_layers, arch.n_embd, arch.n_head, arch.n_head_kv, arch.head_dim) == (
        32,
        4096,
        32,
        8,
        128,
    )
    assert (arch.n_ff, arch.n_expert, arch.n_expert_used) == (14336, 8, 2)
    assert (arch.n_vocab, arch.context_length, arch.rope_theta) == (57002, 32768, 1e6)
    assert [q.quant for q in family.by_quality()] == ["q4_0", "q2_k"]
    q4 = family.quant("q4_0")
    assert q4.filename == "huozi3-q4_0.gguf" and q4.needs_repair
    assert q4.sha256 == "822496198e521bc2d847eb140bd44016e7690a93177a9ad143316155afaf0e69"
    assert 26e9 < q4.size_bytes < 27e9
    assert 17e9 < family.quant("q2_k").size_bytes < 18e9
    with pytest.raises(HuoziError, match="available: q2_k, q4_0"):
        family.quant("q8_0")


def test_huozi3_listing_refreshes_sizes_and_hashes() -> None:
    family = get_family("huozi3")
    listed = family.quants_from_listing(
        [
            ("huozi3-q2_k.gguf", 17_425_000_000, "ab" * 32),
            ("huozi3-q4_0.gguf", 26_440_000_000, None),
            ("README.md", 4000, None),
        ]
    )
    assert listed.quant("q2_k").size_bytes == 17_425_000_000
    assert listed.quant("q2_k").sha256 == "ab" * 32
    assert listed.quant("q4_0").sha256 == family.quant("q4_0").sha256
    assert all(q.needs_repair for q in listed.quants)


def test_huozi35_is_community_built_and_quants_come_from_the_listing() -> None:
    family = get_family("huozi3.5")
    assert family.community and "community" in family.display_name.lower()
    assert family.architecture == get_family("huozi3").architecture
    assert family.stop_token_ids == (huozi.END_OF_UTTERANCE_ID,)
    listing = [
        ("huozi3.5.Q2_K.gguf", 17_300_000_000, None),
        ("huozi3.5.IQ4_XS.gguf", 25_000_000_000, "cd" * 32),
        ("huozi3.5.Q8_0.gguf.part1of2", 25_000_000_000, None),
        ("huozi3.5.Q6_K.gguf", 38_400_000_000, None),
        ("README.md", 5000, None),
        (".gitattributes", 2000, None),
    ]
    listed = family.quants_from_listing(listing)
    assert [(q.quant, q.filename) for q in listed.quants] == [
        ("q2_k", "huozi3.5.Q2_K.gguf"),
        ("iq4_xs", "huozi3.5.IQ4_XS.gguf"),
        ("q6_k", "huozi3.5.Q6_K.gguf"),
    ]
    assert listed.quant("iq4_xs").sha256 == "cd" * 32
    assert not any(q.needs_repair for q in listed.quants)
    assert [q.quant for q in listed.by_quality()] == ["q6_k", "iq4_xs", "q2_k"]
    assert quant_rank("q6_k") > quant_rank("iq4_xs") > quant_rank("q2_k") > quant_rank("weird")


def test_model_specs() -> None:
    assert str(parse_model_spec("huozi3:Q2_K")) == "huozi3:q2_k"
    assert parse_model_spec("huozi3.5").family == "huozi3.5"
    spec = parse_model_spec("hf:mradermacher/huozi3.5-GGUF/huozi3.5.Q4_K_M.gguf")
    assert (spec.kind, spec.repo_id, spec.filename) == (
        "hf",
        "mradermacher/huozi3.5-GGUF",
        "huozi3.5.Q4_K_M.gguf",
    )
    assert parse_model_spec("./models/x.gguf").kind == "path"
    with pytest.raises(HuoziError, match="unknown model family"):
        parse_model_spec("huozi9")


def test_every_manifest_in_the_folder_parses() -> None:
    names = {p.stem for p in (PROJECT / "models").glob("*.toml")}
    assert names == set(load_families()) >= {"huozi3", "huozi3.5"}


@pytest.mark.slow
def test_the_wheel_carries_the_manifests(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(PROJECT)],
        check=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("huozi_local-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {"huozi_local/models/huozi3.toml", "huozi_local/models/huozi3.5.toml"} <= names
        archive.extractall(tmp_path / "installed")
    # The unpacked wheel, not the checkout, finds its own manifests.
    probe = (
        "import huozi_local, huozi_local.core.catalog as c; "
        "print(huozi_local.__file__); print(sorted(c.load_families()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(tmp_path / "installed"), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    where, families = done.stdout.strip().splitlines()
    assert where.startswith(str(tmp_path / "installed"))
    assert families == "['huozi3', 'huozi3.5']"


def test_one_source_of_sampling_defaults() -> None:
    """The README's llama.cpp command (temp 0.2, repeat penalty 1.1), for every front end."""
    options, settings = SamplingOptions(), Settings()
    read_by_both = ("temperature", "top_p", "repeat_penalty", "max_tokens")
    assert [getattr(options, k) for k in read_by_both] == [
        getattr(settings, k) for k in read_by_both
    ]
    assert (options.temperature, options.repeat_penalty) == (0.2, 1.1)
    assert settings.system_prompt == huozi.DEFAULT_SYSTEM_PROMPT
