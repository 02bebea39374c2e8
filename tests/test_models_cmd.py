"""`huozi-local models` and `model_states`: what is known, what is on disk, what fits here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hub_server import closed_port_url, running_hub

from huozi_local.cli import main
from huozi_local.core.catalog import get_family, parse_model_spec
from huozi_local.core.config import Paths
from huozi_local.core.errors import HuoziError
from huozi_local.core.fetch.download import download_model
from huozi_local.core.fetch.hub import RemoteFile, RepoListing
from huozi_local.core.fetch.model_folder import family_model_path, partial_download_path
from huozi_local.core.fetch.targets import family_with_listing, resolve_target
from huozi_local.core.planning.hardware import Machine
from huozi_local.core.planning.planner import choose_plan, rank_quants
from huozi_local.testing.tiny_model import TinyModels

COMMUNITY_REPO = "mradermacher/huozi3.5-GGUF"


@pytest.fixture
def paths(huozi_home: Path) -> Paths:
    return Paths.from_env()


def models_json(capsys: pytest.CaptureFixture[str], *extra: str) -> list[dict[str, object]]:
    assert main(["models", "--json", *extra]) == 0
    data: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return data


def by_spec(rows: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(row["spec"]): row for row in rows}


@pytest.fixture
def machine(described_machine: Machine) -> Machine:
    """The machine the command plans for (conftest's), so the test compares like with like."""
    return described_machine


def test_models_lists_every_quant_missing_with_the_planners_verdict(
    paths: Paths, capsys: pytest.CaptureFixture[str], machine: Machine
) -> None:
    rows = by_spec(models_json(capsys, "--offline"))
    assert {"huozi3:q4_0", "huozi3:q2_k", "huozi3.5:q4_k_m"} <= rows.keys()
    assert all(row["state"] == "missing" for row in rows.values())
    assert rows["huozi3:q4_0"]["size_bytes"] == get_family("huozi3").quant("q4_0").size_bytes
    assert rows["huozi3.5:q4_k_m"]["community"] is True
    for family in ("huozi3", "huozi3.5"):
        for option in rank_quants(get_family(family), machine):
            assert rows[f"{family}:{option.quant}"]["fits"] == option.verdict


def test_models_shows_partial_repaired_unverified_and_hf_files(
    paths: Paths, tiny_models: TinyModels, capsys: pytest.CaptureFixture[str]
) -> None:
    legacy = tiny_models.get("split", "q4_0", rig="chat")
    part = partial_download_path(paths, "hf", "HIT-SCIR/huozi3-gguf", "huozi3-q4_0.gguf")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 4096)
    by_hand = family_model_path(paths, "huozi3.5", "q2_k")
    by_hand.parent.mkdir(parents=True)
    by_hand.write_bytes(legacy.read_bytes()[:1024])
    with running_hub() as fake:
        fake.add_file("HIT-SCIR/huozi3-gguf", "huozi3-q2_k.gguf", legacy)
        fake.add_file("someone/other-GGUF", "other.gguf", legacy)
        download_model("huozi3:q2_k", paths, endpoint=fake.hub_url)
        download_model("hf:someone/other-GGUF/other.gguf", paths, endpoint=fake.hub_url)
    rows = by_spec(models_json(capsys, "--offline"))
    assert rows["huozi3:q4_0"]["state"] == "partial"
    assert rows["huozi3:q4_0"]["downloaded_bytes"] == 4096
    assert rows["huozi3:q2_k"]["state"] == "repaired"
    assert rows["huozi3:q2_k"]["path"] == str(family_model_path(paths, "huozi3", "q2_k"))
    assert rows["huozi3.5:q2_k"]["state"] == "unverified"
    other = rows["hf:someone/other-GGUF/other.gguf"]
    assert other["family"] == "hf" and other["state"] == "repaired"

    assert main(["models", "--offline"]) == 0
    table = capsys.readouterr().out
    assert "huozi3:q2_k" in table and "repaired" in table and "partial" in table


def test_community_quants_come_from_the_hub_listing_then_its_cache(
    paths: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_hub() as fake:
        fake.add_file(COMMUNITY_REPO, "huozi3.5.Q4_K_M.gguf", b"x" * 4000)
        fake.add_file(COMMUNITY_REPO, "huozi3.5.IQ3_XS.gguf", b"y" * 3000)
        fake.add_file(COMMUNITY_REPO, "README.md", b"card")
        online = by_spec(models_json(capsys, "--endpoint", fake.hub_url))
    community = {k: v for k, v in online.items() if k.startswith("huozi3.5:")}
    assert set(community) == {"huozi3.5:q4_k_m", "huozi3.5:iq3_xs"}
    assert community["huozi3.5:iq3_xs"]["size_bytes"] == 3000
    # The listing was cached: offline (and with the hub gone) the same quants are listed.
    offline = by_spec(models_json(capsys, "--offline", "--endpoint", closed_port_url()))
    assert {k for k in offline if k.startswith("huozi3.5:")} == set(community)


def test_no_quant_means_the_planners_choice_for_this_machine(
    paths: Paths, machine: Machine
) -> None:
    family = get_family("huozi3")
    listing = RepoListing(
        family.repo_id,
        "hf",
        "main",
        tuple(
            RemoteFile(family.repo_id, q.filename, q.size_bytes, q.sha256) for q in family.quants
        ),
        0.0,
    )
    expected = choose_plan(family_with_listing(family, listing), machine).quant
    target = resolve_target(parse_model_spec("huozi3"), paths, "hf", listing, machine)
    assert target.quant == expected
    assert target.final_path == family_model_path(paths, "huozi3", str(expected))
    # The caller owns the machine: without one there is no choice to make, and it says so.
    with pytest.raises(HuoziError, match="which quant of huozi3"):
        resolve_target(parse_model_spec("huozi3"), paths, "hf", listing)


def test_download_with_no_model_offline_names_the_planners_file(
    huozi_home: Path, capsys: pytest.CaptureFixture[str], machine: Machine
) -> None:
    expected = choose_plan(get_family("huozi3"), machine).quant
    assert main(["download", "--offline"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"huozi3:{expected}" in err


def test_huozi_models_dir_holds_the_models_even_under_huozi_home(
    huozi_home: Path,
    tmp_path: Path,
    tiny_models: TinyModels,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The narrower setting wins: it is what a full disk's message tells people to set."""
    big_disk = tmp_path / "big-disk" / "models"
    monkeypatch.setenv("HUOZI_MODELS_DIR", str(big_disk))
    paths = Paths.from_env()
    assert paths.models_dir == big_disk and paths.data_dir == huozi_home / "data"
    with running_hub() as fake:
        fake.add_file("HIT-SCIR/huozi3-gguf", "huozi3-q2_k.gguf", tiny_models.get("split", "q4_0"))
        download_model("huozi3:q2_k", paths, endpoint=fake.hub_url)
    assert not (huozi_home / "models").exists()
    row = by_spec(models_json(capsys, "--offline"))["huozi3:q2_k"]
    assert row["state"] == "repaired" and Path(str(row["path"])).is_relative_to(big_disk)


def test_without_huozi_home_the_models_dir_moves_only_the_models(tmp_path: Path) -> None:
    alone = Paths.from_env({"HUOZI_MODELS_DIR": str(tmp_path / "m")})
    default = Paths.from_env({})
    assert alone.models_dir == tmp_path / "m" and default.models_dir == default.data_dir / "models"
    assert (alone.config_dir, alone.data_dir, alone.cache_dir) == (
        default.config_dir, default.data_dir, default.cache_dir,
    )  # fmt: skip
    assert Paths.from_env({"HUOZI_MODELS_DIR": ""}).models_dir == default.models_dir
