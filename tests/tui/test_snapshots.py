"""Snapshots of the main screens with Chinese text (pytest-textual-snapshot's snap_compare).

Deterministic by construction: a fixed terminal size, a HUOZI_HOME under the test's own HOME
(shown as `~/huozi-snapshot`, so every run, and two runs at once, draw the same text), a
described machine and disk, and stored reply statistics instead of live timings. Regenerate after an
intended change with `pytest tests/tui/test_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from textual.pilot import Pilot
from tui_helpers import wait_for

from huozi_local.core.config import Paths, Settings
from huozi_local.core.fetch.sources import DownloadSource, ProbeResult, SourceKind
from huozi_local.core.planning.hardware import Machine
from huozi_local.core.store.conversations import ConversationStore
from huozi_local.testing.conversations import SHOWCASE_ANSWER, SHOWCASE_QUESTION
from huozi_local.testing.tiny_model import TinyModels
from huozi_local.tui.app import HuoziApp, create_app
from huozi_local.tui.model_choice import load_local, plan_file
from huozi_local.tui.options import AppOptions
from huozi_local.tui.session import ModelInfo

GIB = 1024**3
SIZE = (110, 34)

QUESTION, ANSWER = SHOWCASE_QUESTION, SHOWCASE_ANSWER


@pytest.fixture
def fixed_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Paths]:
    """HOME is the test's own folder (conftest): this one is new for every test and run."""
    home = Path.home() / "huozi-snapshot"
    monkeypatch.setenv("HUOZI_HOME", str(home))
    yield Paths.from_env()


SOURCES = (
    DownloadSource(SourceKind.HF, "https://huggingface.co"),
    DownloadSource(SourceKind.MIRROR, "https://hf-mirror.com"),
    DownloadSource(SourceKind.MODELSCOPE, "https://www.modelscope.cn"),
)


def described_network(
    sources: Sequence[DownloadSource],
    cancel: threading.Event,
    on_result: Callable[[ProbeResult], None],
) -> list[ProbeResult]:
    """A network like many in mainland China: the hub times out, the mirror answers."""
    results = [
        ProbeResult(sources[0], False, "timed out", elapsed_s=4.0),
        ProbeResult(sources[1], True, elapsed_s=0.3),
        ProbeResult(sources[2], True, fix="pipx inject huozi-local modelscope", elapsed_s=0.2),
    ]
    for result in results:
        on_result(result)
    return results


def options() -> AppOptions:
    return AppOptions(
        machine_probe=lambda: Machine.synthetic("cuda", 12 * GIB, 32 * GIB, cores=8),
        disk_probe=lambda _folder: 200 * GIB,
        sources=SOURCES,
        source_prober=described_network,
    )


def chat_app(paths: Paths, tiny_models: TinyModels) -> HuoziApp:
    store = ConversationStore.open(paths.database_file)
    older = store.create_conversation(title="旅行计划：去西安看兵马俑")
    store.add_message(older.id, "user", "西安有什么好吃的？")
    current = store.create_conversation()
    store.add_message(current.id, "user", QUESTION)
    meta = {"stop_reason": "stop", "prompt_tokens": 57, "completion_tokens": 96}
    store.add_message(current.id, "assistant", ANSWER, meta={**meta, "tokens_per_s": 21.5})
    model = tiny_models.get("merged", "q4_0", rig="chat")
    settings = Settings(n_ctx=2048, n_gpu_layers=0)
    machine = Machine.synthetic("cpu", 0, 24 * GIB, cores=2)
    planned = plan_file(
        model, label="huozi3", quant="q2_k", spec="huozi3:q2_k", settings=settings, machine=machine
    )
    backend = load_local(planned, machine).backend
    info = ModelInfo("huozi3", "q2_k", 16, 2048)
    return create_app(
        settings=settings,
        paths=paths,
        store=store,
        backend=backend,
        model_info=info,
        options=options(),
    )


def test_chat_screen(fixed_home: Paths, tiny_models: TinyModels, snap_compare: object) -> None:
    app = chat_app(fixed_home, tiny_models)

    async def type_a_draft(pilot: object) -> None:
        await pilot.press(*"再介绍一下")  # type: ignore[attr-defined]
        await pilot.pause()  # type: ignore[attr-defined]

    assert snap_compare(app, terminal_size=SIZE, run_before=type_a_draft)  # type: ignore[operator]


def test_setup_screen(fixed_home: Paths, snap_compare: object) -> None:
    app = create_app(settings=Settings(), paths=fixed_home, options=options())

    async def probes_in(pilot: Pilot[None]) -> None:
        await wait_for(pilot, lambda: getattr(app.screen, "probes_done", False), "the probes")

    assert snap_compare(app, terminal_size=SIZE, run_before=probes_in)  # type: ignore[operator]


def test_settings_screen(fixed_home: Paths, tiny_models: TinyModels, snap_compare: object) -> None:
    installed = fixed_home.models_dir / "huozi3" / "huozi3-q2_k.gguf"
    installed.parent.mkdir(parents=True)
    shutil.copyfile(tiny_models.get("merged", "q4_0", rig="chat"), installed)
    app = chat_app(fixed_home, tiny_models)
    app.settings.model = "huozi3:q2_k"
    assert snap_compare(app, terminal_size=(110, 55), press=["ctrl+s"])  # type: ignore[operator]
