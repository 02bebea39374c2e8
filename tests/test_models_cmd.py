"""`huozi-local models` and `model_states`: what is known, what is on disk, what fits here."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_process import cli
from hub_server import closed_port_url, running_hub

from huozi_local.cli import main
from huozi_local.core.catalog import get_family, parse_model_spec
from huozi_local.core.config import Paths
from huozi_local.core.errors import HuoziError
from huozi_local.core.fetch.download import download_model
from huozi_local.core.fetch.hub import RemoteFile, RepoListing
from huozi_local.core.fetch.model_folder import (
    family_model_path,
    imported_model_path,
    partial_download_path,
    resolve_local_model,
)
from huozi_local.core.fetch.targets import family_with_listing, resolve_target
from huozi_local.core.planning.hardware import Machine
from huozi_local.core.planning.planner import choose_plan, rank_quants
from huozi_local.testing.tiny_model import RIG_TEXT, TinyModels

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


BROKEN_KINDS = ("dangling_link", "unreadable_file", "folder", "not_gguf", "pipe")


def make_broken(path: Path, kind: str) -> Path:
    """An entry named like a model that is none; reading a pipe would wait forever."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "dangling_link":
        path.symlink_to(path.parent / "deleted-long-ago.gguf")
    elif kind == "unreadable_file":
        if os.geteuid() == 0:  # root reads a chmod 000 file; this one fails a read for anyone
            path.symlink_to("/proc/self/mem")
        else:
            path.write_bytes(b"GGUF" + bytes(60))
            path.chmod(0)
    elif kind == "folder":
        path.mkdir()
    elif kind == "not_gguf":
        path.write_text("<html>a saved error page</html>\n")
    else:
        os.mkfifo(path)
    return path


def notes_about(path: Path, records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if str(path) in r.getMessage()]


@pytest.mark.parametrize("kind", BROKEN_KINDS)
@pytest.mark.parametrize("place", ["family", "imported", "hf"])
def test_a_broken_entry_in_the_models_folder_is_skipped_with_one_note(
    paths: Paths,
    tiny_models: TinyModels,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    place: str,
    kind: str,
) -> None:
    """`models` lists the rest and the default model is the next usable one (a real link)."""
    if place == "imported":
        good = imported_model_path(paths, "good.gguf")
        broken = imported_model_path(paths, "broken.gguf")  # newer than the good one
    else:
        good = family_model_path(paths, "huozi3", "q2_k")
        broken = {
            "family": family_model_path(paths, "huozi3", "q4_0"),  # preferred to q2_k
            "hf": paths.models_dir / "hf" / "someone--other-GGUF" / "broken.gguf",
        }[place]
    good.parent.mkdir(parents=True, exist_ok=True)
    good.symlink_to(tiny_models.get("merged", "q4_0", "chat"))
    make_broken(broken, kind)
    caplog.set_level(logging.WARNING, logger="huozi_local")

    rows = by_spec(models_json(capsys, "--offline"))
    assert len(notes_about(broken, caplog.records)) == 1
    assert str(broken) not in {
        str(row["path"]) for row in rows.values() if row["state"] != "missing"
    }
    assert str(good) in {str(row["path"]) for row in rows.values()}
    if place == "family":
        assert rows["huozi3:q4_0"]["state"] == "missing"
        assert rows["huozi3:q2_k"]["state"] == "unverified"

    caplog.clear()
    assert resolve_local_model(None, paths).path == good
    assert len(notes_about(broken, caplog.records)) == (0 if place == "hf" else 1)


def test_broken_entries_leave_models_and_commands_without_model_working(
    huozi_home: Path, paths: Paths, tiny_models: TinyModels
) -> None:
    """As a user runs them: every broken entry is one line on stderr, once; the rest works."""
    good = family_model_path(paths, "huozi3", "q2_k")
    good.parent.mkdir(parents=True)
    good.symlink_to(tiny_models.get("merged", "q4_0", "chat"))
    in_family = [
        make_broken(family_model_path(paths, "huozi3", "q4_0"), "dangling_link"),
        make_broken(family_model_path(paths, "huozi3.5", "q4_k_m"), "folder"),
    ]
    elsewhere = [
        make_broken(imported_model_path(paths, "notes.gguf"), "not_gguf"),
        make_broken(imported_model_path(paths, "locked.gguf"), "unreadable_file"),
        make_broken(paths.models_dir / "hf" / "someone--other-GGUF" / "pipe.gguf", "pipe"),
    ]

    listed = cli("models", "--offline", "--json", home=huozi_home)
    assert listed.returncode == 0, listed.stderr
    assert by_spec(json.loads(listed.stdout))["huozi3:q2_k"]["path"] == str(good)
    lines = listed.stderr.splitlines()
    assert len(lines) == len(in_family + elsewhere)
    for broken in in_family + elsewhere:
        assert len([line for line in lines if str(broken) in line]) == 1, listed.stderr

    asked = cli("ask", "你好", home=huozi_home)  # no --model: the default is found past them
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout == RIG_TEXT + "\n"
    for broken in in_family:
        assert len([line for line in asked.stderr.splitlines() if str(broken) in line]) == 1


def test_models_shows_the_size_of_the_file_imported_into_a_slot(
    paths: Paths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A different file imported as huozi3:q4_0 was listed with the official file's 26.6 GB."""
    from huozi_local.testing.crafted_gguf import write_crafted_gguf

    src = write_crafted_gguf(tmp_path / "mine.gguf")
    assert main(["import", str(src)]) == 0
    capsys.readouterr()
    row = by_spec(models_json(capsys, "--offline"))["huozi3:q4_0"]
    assert row["state"] == "imported"
    assert row["size_bytes"] == src.stat().st_size
