"""Which model the app opens, and how it is loaded (no Textual here: workers call this).

Planning and loading are core.loading's, the same path as the command line's: the app only says
which model and which Machine. The app takes a `BackendLoader` by injection, so tests and
benchmarks drive the real engine with tiny models (or wrap it) while a remote endpoint
(`huozi-local tui --endpoint URL`) plugs in beside it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from huozi_local.core.chat.types import ChatBackend
from huozi_local.core.config import Paths, Settings
from huozi_local.core.errors import HuoziError
from huozi_local.core.loading.cache import cache_for
from huozi_local.core.loading.inputs import LoadOverrides, PlanInputs, model_spec
from huozi_local.core.loading.load import PlannedLoad, load_planned, plan_load
from huozi_local.core.loading.model_file import model_file_at, open_model
from huozi_local.core.planning.hardware import Machine
from huozi_local.core.planning.plan_model import Plan
from huozi_local.core.progress import ProgressCallback
from huozi_local.tui.session import ModelInfo


@dataclass(frozen=True)
class LoadedBackend:
    """A backend ready to chat, and the plan it was really loaded with (after the fit)."""

    backend: ChatBackend
    plan: Plan

    def info(self, planned: PlannedLoad) -> ModelInfo:
        """What the status bar shows: the placement llama.cpp got (the measured fit may have
        moved it from the planned one) and the context it really allocated (padded to 256)."""
        plan = self.plan
        return ModelInfo(
            planned.label,
            planned.model.quant,
            plan.n_gpu_layers,
            self.backend.n_ctx,
            n_cpu_moe=plan.n_cpu_moe,
        )


BackendLoader = Callable[
    [PlannedLoad, Machine, ProgressCallback | None, threading.Event | None], LoadedBackend
]


def load_local(
    planned: PlannedLoad,
    machine: Machine,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> LoadedBackend:
    """The real engine through core.loading (measured fit included) on the app's Machine."""
    loaded = load_planned(planned, machine, progress=progress, cancel=cancel)
    return LoadedBackend(loaded.engine, loaded.plan)


def plan_saved_model(
    settings: Settings, overrides: LoadOverrides, paths: Paths, machine: Machine
) -> PlannedLoad:
    """The model this run opens (`--model`, else the saved one, else the best on disk) and its
    plan; HuoziError when it is not on this disk or not a model file."""
    model = open_model(model_spec(settings, overrides), paths)
    return plan_load(model, machine, PlanInputs.of(settings, overrides), cache_for(settings, paths))


def saved_model_plan_or_none(
    settings: Settings, overrides: LoadOverrides, paths: Paths, machine: Machine
) -> PlannedLoad | None:
    """`plan_saved_model`, or None when the saved model is gone (setup then opens)."""
    if not model_spec(settings, overrides):
        return None
    try:
        return plan_saved_model(settings, overrides, paths, machine)
    except HuoziError:
        return None


def plan_file(
    path: Path,
    *,
    label: str,
    quant: str,
    spec: str,
    settings: Settings,
    machine: Machine,
    overrides: LoadOverrides | None = None,
    paths: Paths | None = None,
) -> PlannedLoad:
    """The plan for a file setup just made ready (a download, an import); `paths`: where its
    prompt cache lives (none: no cache)."""
    model = model_file_at(path, label=label, quant=quant, spec=spec)
    cache = cache_for(settings, paths) if paths is not None else None
    return plan_load(model, machine, PlanInputs.of(settings, overrides), cache)
