"""What a load's plan reads: the saved settings with this run's overrides on top.

The saved settings (`Settings`, config.toml) and one run's choices (`LoadOverrides`: command-line
flags) are different objects: an override wins for this run and is never written to the config.
`PlanInputs` is the one value the planner is given, so "does this change need a reload?" is
answered by comparing two of them: every setting that changes the plan is in it, and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields, replace

from huozi_local.core.config import GpuLayers, Settings


@dataclass(frozen=True)
class LoadOverrides:
    """This run's choices (command-line flags); None leaves the saved setting in charge."""

    model: str | None = None
    n_ctx: int | None = None
    n_gpu_layers: GpuLayers | None = None
    n_cpu_moe: int | None = None

    def without(self, names: Iterable[str]) -> LoadOverrides:
        """These overrides minus `names` (the user changed those settings: theirs win now)."""
        return replace(self, **{name: None for name in names})


# Which setting each override stands in for.
OVERRIDDEN_SETTING = {
    "model": "model",
    "n_ctx": "n_ctx",
    "n_gpu_layers": "n_gpu_layers",
    "n_cpu_moe": "cpu_moe",
}


@dataclass(frozen=True)
class PlanInputs:
    """Everything a plan depends on besides the model file and the machine.

    None means "the planner decides"; `n_gpu_layers` may be ALL_LAYERS (every layer, however
    many the model has). Two equal PlanInputs plan the same load on the same machine.
    """

    max_context: int = 32768
    n_ctx: int | None = None
    n_gpu_layers: GpuLayers | None = None
    n_cpu_moe: int | None = None

    @classmethod
    def of(cls, settings: Settings, overrides: LoadOverrides | None = None) -> PlanInputs:
        over = overrides or LoadOverrides()
        return cls(
            max_context=settings.max_context,
            n_ctx=over.n_ctx if over.n_ctx is not None else settings.n_ctx,
            n_gpu_layers=(
                over.n_gpu_layers if over.n_gpu_layers is not None else settings.n_gpu_layers
            ),
            n_cpu_moe=over.n_cpu_moe if over.n_cpu_moe is not None else settings.cpu_moe,
        )


def model_spec(settings: Settings, overrides: LoadOverrides | None = None) -> str:
    """The model to open: this run's `--model`, else the saved one ("" = the best on disk)."""
    if overrides is not None and overrides.model:
        return overrides.model
    return settings.model


def changed_settings(before: Settings, after: Settings) -> set[str]:
    """The names of the settings that differ between two Settings."""
    return {f.name for f in fields(Settings) if getattr(before, f.name) != getattr(after, f.name)}


def overrides_after_edit(
    overrides: LoadOverrides, before: Settings, after: Settings
) -> LoadOverrides:
    """What is left of this run's overrides once the user has edited the settings: a setting
    they changed is theirs from now on, so its override no longer applies."""
    changed = changed_settings(before, after)
    return overrides.without(o for o, s in OVERRIDDEN_SETTING.items() if s in changed)
