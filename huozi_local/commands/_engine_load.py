"""Shared by `ask`, `chat` and `serve`: the --model/--ctx/--gpu-layers/--cpu-moe options and
loading the engine through core.loading, the path the app and the server share.

Load settings come from the planner (the GPU layers, context and threads that fit this machine);
`--ctx`, `--gpu-layers` and `--cpu-moe` (this run only), then the user's settings, override its
choices.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

T = TypeVar("T")

if TYPE_CHECKING:
    from huozi_local.core.chat.types import SamplingOptions
    from huozi_local.core.config import Settings
    from huozi_local.core.gguf.header import GGUFFile
    from huozi_local.core.loading.load import LoadedModel
    from huozi_local.core.planning.hardware import Machine
    from huozi_local.core.planning.plan_model import Plan


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", help="huozi3, huozi3:q2_k, hf:OWNER/REPO/FILE.gguf or a path to a .gguf"
    )
    parser.add_argument("--system", help="system prompt (default: the settings' one)")
    parser.add_argument("--ctx", type=int, help="context size in tokens (default: planned)")
    parser.add_argument(
        "--gpu-layers",
        type=gpu_layers_arg,
        metavar="N|all",
        help="layers to offload to the GPU (default: planned; all (or -1): every layer)",
    )
    add_cpu_moe_option(parser)
    add_rpc_option(parser)
    parser.add_argument("--max-tokens", type=int, help="longest reply in tokens")
    parser.add_argument("--temp", type=float, help="sampling temperature (default 0.2)")
    parser.add_argument("--seed", type=int, help="sampling seed, for repeatable replies")
    parser.add_argument(
        "--force",
        action="store_true",
        help="load even when the plan says it will not fit in memory (it may swap or be killed)",
    )


def gpu_layers_arg(text: str) -> int | str:
    """`--gpu-layers`: a count, or `all` (also -1, as llama.cpp's -ngl spells it)."""
    from huozi_local.core.config import ALL_LAYERS

    if text.strip().lower() in (ALL_LAYERS, "-1"):
        return ALL_LAYERS
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of layers or 'all'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, or 'all', not {value}")
    return value


def add_cpu_moe_option(parser: argparse.ArgumentParser) -> None:
    """`--cpu-moe N` (plan, ask, chat, tui, serve): force llama.cpp's --n-cpu-moe."""
    parser.add_argument(
        "--cpu-moe",
        type=int,
        metavar="N",
        help="keep the MoE experts of the first N layers in RAM, the rest of them on the GPU "
        "(default: planned; 0: none)",
    )


def add_rpc_option(parser: argparse.ArgumentParser) -> None:
    """`--rpc HOST:PORT[,HOST:PORT]` (plan, ask, chat, tui, serve): other machines' GPUs."""
    parser.add_argument(
        "--rpc",
        metavar="HOST:PORT[,...]",
        help="also use the GPUs of these `huozi-local worker`s (llama.cpp RPC; needs "
        "llama-cpp-python built with -DGGML_RPC=on)",
    )


def register_rpc_workers(args: argparse.Namespace) -> tuple[str, ...]:
    """Check and register `--rpc` workers with ggml, before any planning: from then on the
    machine's probe lists their devices (with the memory they report) and every load uses
    them. One line when a worker is unreachable or the build lacks RPC."""
    text = getattr(args, "rpc", None)
    if not text:
        return ()
    from huozi_local.core.devices import ggml
    from huozi_local.core.devices.endpoints import parse_endpoints

    endpoints = parse_endpoints(text)
    ggml.add_rpc_servers(endpoints)
    return tuple(str(e) for e in endpoints)


def check_cpu_moe(value: int | None) -> int | None:
    from huozi_local.core.errors import HuoziError

    if value is not None and value < 0:
        raise HuoziError(f"--cpu-moe must be 0 or more, not {value}")
    return value


def check_ctx(ctx: int | None, gguf: GGUFFile) -> int | None:
    """--ctx within 64 and the model's training context (never above 2^32 - 1: llama.cpp keeps
    n_ctx in 32 bits, and a value past that wrapped around and ate memory until the machine ran
    out)."""
    from huozi_local.core.config import MAX_CONTEXT, MIN_CONTEXT
    from huozi_local.core.errors import HuoziError

    if ctx is None:
        return None
    if ctx < MIN_CONTEXT:
        raise HuoziError(f"--ctx must be at least {MIN_CONTEXT}, got {ctx}")
    ceiling = min(gguf.context_length or MAX_CONTEXT, MAX_CONTEXT)
    if ctx > ceiling:
        raise HuoziError(
            f"--ctx {ctx} is more than the model's training context ({ceiling} tokens)"
        )
    return ctx


def load_engine(
    args: argparse.Namespace, *, machine: Machine | None = None
) -> tuple[LoadedModel, Settings]:
    """Resolve --model, plan, fit and load (core.loading), with a progress line on a
    terminal's stderr; the flags are this run's overrides, never saved.

    `machine`: the hardware to plan for (tests inject one; default: this machine's).
    """
    from huozi_local.core.config import Paths, Settings
    from huozi_local.core.loading.cache import cache_for
    from huozi_local.core.loading.inputs import LoadOverrides, PlanInputs, model_spec
    from huozi_local.core.loading.load import load_planned, plan_load
    from huozi_local.core.loading.model_file import open_model

    cpu_moe = check_cpu_moe(getattr(args, "cpu_moe", None))
    paths = Paths.from_env()
    settings = Settings.load(paths.config_file)
    overrides = LoadOverrides(model=args.model, n_gpu_layers=args.gpu_layers, n_cpu_moe=cpu_moe)
    model = open_model(model_spec(settings, overrides), paths)
    overrides = replace(overrides, n_ctx=check_ctx(args.ctx, model.gguf))
    register_rpc_workers(args)
    if machine is None:
        from huozi_local.core.planning.hardware import detect_machine

        machine = detect_machine()
    inputs = PlanInputs.of(settings, overrides)
    planned = plan_load(model, machine, inputs, cache_for(settings, paths))
    force = bool(getattr(args, "force", False))
    if not planned.plan.fits and force:
        why = planned.plan.reason("shortfall")
        print(f"huozi-local: warning: loading although it may not fit: {why}", file=sys.stderr)
    progress = _progress_printer(model.label) if sys.stderr.isatty() else None
    try:
        loaded = load_planned(
            planned,
            machine,
            allow_overcommit=force,
            progress=progress,
            notice=lambda text: print(f"huozi-local: {text}", file=sys.stderr, flush=True),
        )
    finally:
        if progress is not None:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
    fit = loaded.plan.measured_fit
    if fit is not None and (fit.adjusted(loaded.plan) or not loaded.plan.fits):
        print(f"huozi-local: {fit.summary(loaded.plan)}", file=sys.stderr)
    return loaded, settings


@contextmanager
def closed_after(events: Iterator[T]) -> Iterator[Iterator[T]]:
    """Use a reply's event stream, then close it, however the use ended.

    The engine's generators hold its lock while suspended: a loop left by an exception (a
    closed pipe, an output encoding that cannot write Chinese, Ctrl-C) kept the generator alive
    in the traceback, and `engine.close()`, which takes the same lock, then waited forever.
    `contextlib.closing` needs a static `close`; a `ChatBackend` only promises an iterator.
    """
    try:
        yield events
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()


def _progress_printer(name: str) -> Any:
    from huozi_local.core.control_text import visible
    from huozi_local.core.progress import Progress

    shown = visible(name)  # a path or general.name: its control characters escaped

    def show(report: Progress) -> None:
        percent = int((report.fraction or 0.0) * 100)
        sys.stderr.write(f"\rloading {shown} {percent:3d}%")
        sys.stderr.flush()

    return show


def sampling_from(args: argparse.Namespace, settings: Settings) -> SamplingOptions:
    """Sampling options: the command line over the settings over the README's defaults."""
    from huozi_local.core.chat.types import SamplingOptions
    from huozi_local.core.config import check_setting
    from huozi_local.core.errors import HuoziError

    # The same ranges config.toml is held to (NaN included), said with the option's name.
    for option, key in (("max_tokens", "max_tokens"), ("temp", "temperature"), ("seed", "seed")):
        value = getattr(args, option, None)
        if value is not None:
            try:
                check_setting(key, value)
            except HuoziError as exc:
                flag = "--" + option.replace("_", "-")
                raise HuoziError(str(exc).replace(f"'{key}'", flag, 1)) from None
    return SamplingOptions.from_settings(
        settings, temperature=args.temp, max_tokens=args.max_tokens, seed=args.seed
    )


def system_prompt_from(args: argparse.Namespace, settings: Settings) -> str:
    """--system over the settings' system prompt ("" for none)."""
    system: str | None = getattr(args, "system", None)
    return system if system is not None else settings.system_prompt


def result_record(result: Any, plan: Plan | dict[str, Any]) -> dict[str, Any]:
    """The JSON fields of `ask --json` and `chat --json`."""
    return {
        "text": result.text,
        "stop_reason": result.stop_reason,
        "prompt_tokens": result.prompt_tokens,
        "evaluated_prompt_tokens": result.evaluated_prompt_tokens,
        "restored_prompt_tokens": result.restored_prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "ttft_s": round(result.ttft_s, 4),
        "tokens_per_s": round(result.tokens_per_s, 2),
        "model": result.model,
        "dropped_messages": result.dropped_messages,
        "plan": plan if isinstance(plan, dict) else plan.to_dict(),
    }
