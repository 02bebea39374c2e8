"""How much the prompt cache may keep, from the settings and what the plan leaves spare."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from huozi_local.core import disk
from huozi_local.core.chat.prompt_cache import CacheLimits
from huozi_local.core.config import Paths, Settings
from huozi_local.core.planning.plan_model import Plan

MiB = 1024**2
GB = 1000**3
AUTO_RAM_CEILING = 2048 * MiB
AUTO_DISK_CEILING = 20 * GB
AUTO_DISK_SHARE = 10
"""'auto' on disk: a tenth of the free space, so a cache never crowds out a model download."""


def prompt_cache_folder(paths: Paths) -> Path:
    """Where saved KV states live: the cache folder (regenerable, and outside backups)."""
    return paths.cache_dir / "prompts"


def cache_limits(settings: Settings, paths: Paths, plan: Plan) -> CacheLimits | None:
    """The caps for this load (None: the cache is off). "auto" in RAM is half of what the plan
    leaves of the RAM budget, at most 2 GiB: the cache must never push the model into swap."""
    if not settings.prompt_cache:
        return None
    if settings.prompt_cache_ram_mib is not None:
        ram = settings.prompt_cache_ram_mib * MiB
    else:
        ram = min(AUTO_RAM_CEILING, max(0, plan.ram_budget_bytes - plan.ram_bytes) // 2)
    folder = prompt_cache_folder(paths)
    if settings.prompt_cache_disk_mib is not None:
        disk_bytes = settings.prompt_cache_disk_mib * MiB
    else:
        disk_bytes = min(AUTO_DISK_CEILING, disk.free_disk_bytes(folder) // AUTO_DISK_SHARE)
    return CacheLimits(ram, disk_bytes, folder)


def cache_for(settings: Settings, paths: Paths) -> Callable[[Plan], CacheLimits | None]:
    """`cache_limits` for `plan_load`, once the plan is known."""
    return lambda plan: cache_limits(settings, paths, plan)
