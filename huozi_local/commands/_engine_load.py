"""Shared by `ask`, `chat` and `serve`: the --model/--ctx/--gpu-layers/--cpu-moe options and
loading the engine.

Load settings come from the planner (core/planner.py: the GPU layers, context and threads that fit
this machine); `--ctx` and `--gpu-layers`, then the user's settings, override its choices.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from huozi_local.core.chat.engine import LlamaEngine
    from huozi_local.core.chat.types import SamplingOptions
    from huozi_local.core.config import Settings


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", help="huozi3, huozi3:q2_k, hf:OWNER/REPO/FILE.gguf or a path to a .gguf"
    )
    parser.add_argument("--system", help="system prompt (default: the settings' one)")
    parser.add_argument("--ctx", type=int, help="context size in tokens (default: planned)")
    parser.add_argument(
        "--gpu-layers", type=int, help="layers to offload to the GPU (default: planned; -1: all)"
    )
    add_cpu_moe_option(parser)
    parser.add_argument("--max-tokens", type=int, help="longest reply in tokens")
    parser.add_argument("--temp", type=float, help="sampling temperature (default 0.2)")
    parser.add_argument("--seed", type=int, help="sampling seed, for repeatable replies")


def add_cpu_moe_option(parser: argparse.ArgumentParser) -> None:
    """`--cpu-moe N` (plan, ask, chat, tui, serve): force llama.cpp's --n-cpu-moe."""
    parser.add_argument(
        "--cpu-moe",
        type=int,
        metavar="N",
        help="keep the MoE experts of the first N layers in RAM, the rest of them on the GPU "
        "(default: planned; 0: none)",
    )


def check_cpu_moe(value: int | None) -> int | None:
    from huozi_local.core.errors import HuoziError

    if value is not None and value < 0:
        raise HuoziError(f"--cpu-moe must be 0 or more, not {value}")
    return value


def _plan(
    path: Any,
    settings: Settings,
    ctx: int | None,
    gpu_layers: int | None,
    cpu_moe: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(load kwargs, plan as a JSON-able dict); --ctx, --gpu-layers and --cpu-moe win over the
    settings."""
    from huozi_local.core.planning import hardware, planner

    plan = planner.plan_for_settings(
        path,
        hardware.detect_machine(),
        settings,
        n_ctx=ctx,
        n_gpu_layers=gpu_layers,
        n_cpu_moe=cpu_moe,
    )
    if not plan.fits:
        print(
            "huozi-local: warning: this configuration may not fit in memory: "
            + plan.reason("shortfall"),
            file=sys.stderr,
        )
    return dict(plan.load_kwargs()), dict(plan.to_dict())


def load_engine(args: argparse.Namespace) -> tuple[LlamaEngine, dict[str, Any], Settings]:
    """Resolve --model, plan, and load with a progress line on a terminal's stderr."""
    from huozi_local.core.chat.engine import LlamaEngine
    from huozi_local.core.config import Paths, Settings
    from huozi_local.core.errors import HuoziError
    from huozi_local.core.fetch.model_folder import resolve_local_model

    cpu_moe = check_cpu_moe(getattr(args, "cpu_moe", None))
    paths = Paths.from_env()
    settings = Settings.load(paths.config_file)
    resolved = resolve_local_model(args.model, paths, settings.model)
    if args.ctx is not None and args.ctx < 64:
        raise HuoziError(f"--ctx must be at least 64, got {args.ctx}")
    kwargs, plan = _plan(resolved.path, settings, args.ctx, args.gpu_layers, cpu_moe)
    system = args.system if args.system is not None else settings.system_prompt
    progress = _progress_printer(resolved.display_name) if sys.stderr.isatty() else None
    try:
        engine = LlamaEngine.load(resolved.path, system_prompt=system, progress=progress, **kwargs)
    finally:
        if progress is not None:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
    return engine, plan, settings


def _progress_printer(name: str) -> Any:
    from huozi_local.core.progress import Progress

    def show(report: Progress) -> None:
        percent = int((report.fraction or 0.0) * 100)
        sys.stderr.write(f"\rloading {name} {percent:3d}%")
        sys.stderr.flush()

    return show


def sampling_from(args: argparse.Namespace, settings: Settings) -> SamplingOptions:
    """Sampling options: the command line over the settings over the README's defaults."""
    from huozi_local.core.chat.types import SamplingOptions
    from huozi_local.core.errors import HuoziError

    max_tokens = args.max_tokens if args.max_tokens is not None else settings.max_tokens
    if max_tokens < 1:
        raise HuoziError(f"--max-tokens must be at least 1, got {max_tokens}")
    temperature = args.temp if args.temp is not None else settings.temperature
    if temperature < 0:
        raise HuoziError(f"--temp must not be negative, got {temperature}")
    seed = args.seed if args.seed is not None else (settings.seed if settings.seed >= 0 else None)
    return SamplingOptions(
        temperature=temperature,
        top_p=settings.top_p,
        repeat_penalty=settings.repeat_penalty,
        max_tokens=max_tokens,
        seed=seed,
    )


def result_record(result: Any, plan: dict[str, Any]) -> dict[str, Any]:
    """The JSON fields of `ask --json` and `chat --json`."""
    return {
        "text": result.text,
        "stop_reason": result.stop_reason,
        "prompt_tokens": result.prompt_tokens,
        "evaluated_prompt_tokens": result.evaluated_prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "ttft_s": round(result.ttft_s, 4),
        "tokens_per_s": round(result.tokens_per_s, 2),
        "model": result.model,
        "dropped_messages": result.dropped_messages,
        "plan": plan,
    }
