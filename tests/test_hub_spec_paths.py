"""A hub spec names a file under the models folder, never a path elsewhere on the disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from huozi_local.cli import main
from huozi_local.core.catalog import parse_model_spec
from huozi_local.core.config import Paths
from huozi_local.core.errors import HuoziError
from huozi_local.core.fetch.model_folder import (
    hf_model_path,
    original_copy_path,
    partial_download_path,
)

ESCAPING_SPECS = [
    "hf:a/b//tmp/x.gguf",  # an empty part: the filename became the absolute /tmp/x.gguf
    "hf:/a/b/x.gguf",
    "hf:a/b/../../../x.gguf",
    "hf:a/../b/x.gguf",
    "hf:a/b/./x.gguf",
    "hf:a/b/sub\\..\\..\\x.gguf",
    "hf:a/b/C:/x.gguf",
]


@pytest.mark.parametrize("spec", ESCAPING_SPECS)
def test_hub_spec_with_absolute_empty_or_dotdot_part_is_refused(spec: str) -> None:
    with pytest.raises(HuoziError, match="not allowed in a hub path"):
        parse_model_spec(spec)


def test_hub_spec_with_a_subfolder_is_still_accepted() -> None:
    spec = parse_model_spec("hf:owner/repo/q4/model-q4_0.gguf")
    assert (spec.repo_id, spec.filename) == ("owner/repo", "q4/model-q4_0.gguf")


@pytest.mark.parametrize("spec", ["hf:a/b//tmp/x.gguf", "hf:a/b/../../../x.gguf"])
def test_download_of_escaping_hub_spec_exits_2_before_touching_the_network(
    huozi_home: Path, capsys: pytest.CaptureFixture[str], spec: str
) -> None:
    assert main(["download", spec]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("huozi-local: ") and "not allowed in a hub path" in err
    assert len(err.splitlines()) == 1


WHERE: list[Callable[[Paths], Path]] = [
    lambda paths: hf_model_path(paths, "a/b", "../../../../x.gguf"),
    lambda paths: hf_model_path(paths, "a/b", "/tmp/x.gguf"),
    lambda paths: partial_download_path(paths, "hf", "a/b", "../../../../x.gguf"),
    lambda paths: original_copy_path(paths, "a/b", "../../../x.gguf"),
]


@pytest.mark.parametrize("where", WHERE)
def test_model_folder_paths_never_resolve_outside_the_models_folder(
    huozi_home: Path, where: Callable[[Paths], Path]
) -> None:
    """The second line of defence: names that reach the layout functions without a parsed spec
    (a hub listing, a sidecar) are checked where they become paths."""
    with pytest.raises(HuoziError, match="would lie outside"):
        where(Paths.from_env())
