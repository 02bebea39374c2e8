"""Which model the app opens with, and how it is loaded (no Textual here: workers call this).

The app takes a `BackendLoader` by injection, so tests and benchmarks drive the real engine with
tiny models while a remote endpoint (`huozi-local tui --endpoint URL`) plugs in the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from huozi_local.core.chat.types import ChatBackend
from huozi_local.core.config import Paths, Settings
from huozi_local.core.errors import HuoziError
from huozi_local.core.planning.hardware import Machine
from huozi_local.core.planning.plan_model import Plan
from huozi_local.core.progress import ProgressCallback
from huozi_local.tui.session import ModelInfo


@dataclass(frozen=True)
class ModelChoice:
    """A model on disk and the plan it loads with (threads, flash attention, KV cache type)."""

    path: Path
    label: str
    quant: str
    plan: Plan

    @property
    def n_ctx(self) -> int:
        return self.plan.n_ctx

    @property
    def n_gpu_layers(self) -> int:
        return self.plan.n_gpu_layers

    def info(self, backend: ChatBackend) -> ModelInfo:
        """What the status bar shows for this model once `backend` has loaded it.

        The context is the backend's, not the plan's: llama.cpp pads the requested n_ctx up to a
        multiple of 256, and the padded size is what a conversation really gets.
        """
        return ModelInfo(self.label, self.quant, self.n_gpu_layers, backend.n_ctx)


BackendLoader = Callable[
    [ModelChoice, ProgressCallback | None, threading.Event | None], ChatBackend
]


def saved_model_choice(settings: Settings, paths: Paths, machine: Machine) -> ModelChoice | None:
    """The model the last run used (Settings.model), when it is still on this disk."""
    if not settings.model:
        return None
    from huozi_local.core.fetch.model_folder import resolve_local_model

    try:
        resolved = resolve_local_model(settings.model, paths)
    except HuoziError:
        return None
    label = resolved.family or resolved.display_name
    return choice_for(resolved.path, label, resolved.quant or "", settings, machine)


def choice_for(
    path: Path, label: str, quant: str, settings: Settings, machine: Machine | None = None
) -> ModelChoice:
    """The planner's load options for the settings as they stand (planner.plan_for_settings)."""
    from huozi_local.core.planning.hardware import detect_machine
    from huozi_local.core.planning.planner import plan_for_settings

    plan = plan_for_settings(path, machine if machine is not None else detect_machine(), settings)
    return ModelChoice(path, label, quant, plan)


def load_local_engine(
    choice: ModelChoice,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> ChatBackend:
    """The real engine; the system prompt comes from the conversation, not the engine default.

    A load that offloads to a GPU first runs the measured fit (core/measured_fit.py).
    """
    from huozi_local.core.chat.engine import LlamaEngine

    kwargs = choice.plan.load_kwargs()
    if choice.plan.backend != "cpu" and choice.plan.n_gpu_layers:
        from huozi_local.core.measured_fit import fit_before_load
        from huozi_local.core.planning.hardware import detect_machine

        kwargs, _fit = fit_before_load(choice.path, detect_machine(), kwargs)
    return LlamaEngine.load(
        choice.path,
        system_prompt=None,
        progress=progress,
        cancel=cancel,
        **kwargs,
    )
