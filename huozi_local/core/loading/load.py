"""Plan a model for the caller's Machine, then fit it with llama.cpp's help and load it.

Two steps because the app shows the plan (the model's name, where its layers go) before the
slow part starts in a worker; the CLI calls them back to back. Both take the ModelFile (the
header parsed once) and the Machine the caller described.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from huozi_local.core.chat.engine import LlamaEngine
from huozi_local.core.chat.growing_context import starting_n_ctx
from huozi_local.core.chat.prompt_cache import CacheLimits, NoticeSink, PromptCache, cache_key
from huozi_local.core.config import ALL_LAYERS
from huozi_local.core.errors import PlanDoesNotFit
from huozi_local.core.loading.fit import fit_before_load, load_options
from huozi_local.core.loading.inputs import PlanInputs
from huozi_local.core.loading.model_file import ModelFile
from huozi_local.core.planning.hardware import Machine
from huozi_local.core.planning.plan_model import Plan
from huozi_local.core.planning.planner import plan_for_file
from huozi_local.core.progress import ProgressCallback


@dataclass(frozen=True)
class PlannedLoad:
    """A model and the plan it would load with, before anything is loaded."""

    model: ModelFile
    inputs: PlanInputs
    plan: Plan
    cache: CacheLimits | None = None
    """The prompt cache's caps for this load (None: no cache)."""

    @property
    def label(self) -> str:
        return self.model.label

    def same_load(self, other: PlannedLoad) -> bool:
        """Would `other` give llama.cpp exactly the load this one gives it (the same file, the
        same context, placement, threads and KV cache)? Any setting that changes what the plan
        tells the loader makes them differ: that is what a reload is needed for."""
        return other.model.path == self.model.path and load_options(other.plan) == load_options(
            self.plan
        )


@dataclass(frozen=True)
class LoadedModel:
    """The engine, and the plan it was really loaded with (after the measured fit)."""

    engine: LlamaEngine
    model: ModelFile
    plan: Plan


def plan_load(
    model: ModelFile,
    machine: Machine,
    inputs: PlanInputs,
    cache: Callable[[Plan], CacheLimits | None] | None = None,
) -> PlannedLoad:
    """The plan every front end loads with: what `inputs` fix, the planner's choice for the rest.

    What was asked is evaluated even when it does not fit, so the plan always shows the memory
    that configuration needs (`load_planned` refuses it unless told otherwise). `cache` gives
    the prompt cache's caps for the plan (`loading.cache.cache_limits`); none: no cache.
    """
    layers = inputs.n_gpu_layers
    n_gpu_layers = model.gguf.n_layers + 1 if layers == ALL_LAYERS else layers
    assert not isinstance(n_gpu_layers, str)
    plan = plan_for_file(
        model.gguf,
        machine,
        max_ctx=inputs.max_context,
        n_gpu_layers=n_gpu_layers,
        n_ctx=inputs.n_ctx,
        n_cpu_moe=inputs.n_cpu_moe,
    )
    return PlannedLoad(model, inputs, plan, cache(plan) if cache is not None else None)


def load_planned(
    planned: PlannedLoad,
    machine: Machine,
    *,
    allow_overcommit: bool = False,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    notice: NoticeSink | None = None,
) -> LoadedModel:
    """The measured fit (for a load that offloads to a GPU), then the load itself.

    PlanDoesNotFit when the plan, before or after the fit, needs more memory than there is,
    unless `allow_overcommit` (the user insisted: it may swap or be killed). The plan's context
    is the most a conversation may use: unless the user fixed it, the engine starts smaller and
    grows (growing_context). The prompt cache gets the planned caps; `notice` hears what the
    user should know of it (a full disk).
    """
    if not planned.plan.fits and not allow_overcommit:
        raise _does_not_fit(planned.plan)
    gguf = planned.model.gguf
    plan = fit_before_load(gguf, machine, planned.plan)
    if not plan.fits and not allow_overcommit:
        raise _does_not_fit(plan)
    fixed = planned.inputs.n_ctx is not None
    options = replace(load_options(plan), n_ctx=starting_n_ctx(plan.n_ctx, fixed))
    prompt_cache = None
    if planned.cache is not None:
        key = cache_key(gguf, kv_cache_type=plan.kv_cache_type, flash_attn=plan.flash_attn)
        prompt_cache = PromptCache(key, planned.cache, notice)
    engine = LlamaEngine.load(
        gguf,
        options,
        progress=progress,
        cancel=cancel,
        capacity=plan.n_ctx,
        prompt_cache=prompt_cache,
    )
    return LoadedModel(engine, planned.model, plan)


def _does_not_fit(plan: Plan) -> PlanDoesNotFit:
    return PlanDoesNotFit(f"this configuration does not fit in memory ({plan.reason('shortfall')})")
