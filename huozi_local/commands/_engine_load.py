"""Shared by `ask`, `chat` and `serve`: the --model/--ctx/--gpu-layers/--cpu-moe options and
loading the engine.

Load settings come from the planner (core/planner.py: the GPU layers, context and threads that fit
this machine); `--ctx` and `--gpu-layers`, then the user's settings, override its choices.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

T = TypeVar("T")

if TYPE_CHECKING:
    from huozi_local.core.chat.engine import LlamaEngine
    from huozi_local.core.chat.types import SamplingOptions
    from huozi_local.core.config import Settings
    from huozi_local.core.planning.hardware import Machine


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
    add_rpc_option(parser)
    parser.add_argument("--max-tokens", type=int, help="longest reply in tokens")
    parser.add_argument("--temp", type=float, help="sampling temperature (default 0.2)")
    parser.add_argument("--seed", type=int, help="sampling seed, for repeatable replies")
    parser.add_argument(
        "--force",
        action="store_true",
        help="load even when the plan says it will not fit in memory (it may swap or be killed)",
    )


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


def _plan(
    path: Any,
    settings: Settings,
    ctx: int | None,
    gpu_layers: int | None,
    cpu_moe: int | None = None,
    *,
    machine: Machine | None = None,
    force: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(load kwargs, plan as a JSON-able dict); --ctx, --gpu-layers and --cpu-moe win over the
    settings. A plan that does not fit is refused unless `force`: loading it anyway ends in
    swapping or the OOM killer taking the machine down, which is worse than one line now."""
    from huozi_local.core.errors import HuoziError
    from huozi_local.core.planning import hardware, planner

    plan = planner.plan_for_settings(
        path,
        machine if machine is not None else hardware.detect_machine(),
        settings,
        n_ctx=ctx,
        n_gpu_layers=gpu_layers,
        n_cpu_moe=cpu_moe,
    )
    if not plan.fits:
        why = plan.reason("shortfall")
        if not force:
            raise HuoziError(
                f"this configuration does not fit in memory ({why}): lower --ctx or "
                "--gpu-layers, or pass --force to load it anyway"
            )
        print(f"huozi-local: warning: loading although it may not fit: {why}", file=sys.stderr)
    return dict(plan.load_kwargs()), dict(plan.to_dict())


def check_ctx(ctx: int | None, path: Any) -> int | None:
    """--ctx within 64 and the model's training context (never above 2^32 - 1: llama.cpp keeps
    n_ctx in 32 bits, and a value past that wrapped around and ate memory until the machine ran
    out)."""
    from huozi_local.core.config import MAX_CONTEXT, MIN_CONTEXT
    from huozi_local.core.errors import HuoziError
    from huozi_local.core.gguf.header import read_gguf

    if ctx is None:
        return None
    if ctx < MIN_CONTEXT:
        raise HuoziError(f"--ctx must be at least {MIN_CONTEXT}, got {ctx}")
    trained = read_gguf(path).context_length or MAX_CONTEXT
    ceiling = min(trained, MAX_CONTEXT)
    if ctx > ceiling:
        raise HuoziError(
            f"--ctx {ctx} is more than the model's training context ({ceiling} tokens)"
        )
    return ctx


def load_engine(
    args: argparse.Namespace, *, machine: Machine | None = None
) -> tuple[LlamaEngine, dict[str, Any], Settings]:
    """Resolve --model, plan, and load with a progress line on a terminal's stderr.

    `machine`: the hardware to plan for (tests inject one; default: this machine's)."""
    from huozi_local.core.chat.engine import LlamaEngine
    from huozi_local.core.config import Paths, Settings
    from huozi_local.core.fetch.model_folder import resolve_local_model

    cpu_moe = check_cpu_moe(getattr(args, "cpu_moe", None))
    paths = Paths.from_env()
    settings = Settings.load(paths.config_file)
    resolved = resolve_local_model(args.model, paths, settings.model)
    ctx = check_ctx(args.ctx, resolved.path)
    force = bool(getattr(args, "force", False))
    register_rpc_workers(args)
    if machine is None:
        from huozi_local.core.planning.hardware import detect_machine

        machine = detect_machine()
    kwargs, plan = _plan(
        resolved.path, settings, ctx, args.gpu_layers, cpu_moe, machine=machine, force=force
    )
    kwargs, plan = _fit(resolved.path, machine, kwargs, plan)
    system = args.system if args.system is not None else settings.system_prompt
    progress = _progress_printer(resolved.display_name) if sys.stderr.isatty() else None
    try:
        engine = LlamaEngine.load(resolved.path, system_prompt=system, progress=progress, **kwargs)
    finally:
        if progress is not None:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
    return engine, plan, settings


def _fit(
    path: Any, machine: Machine, kwargs: dict[str, Any], plan: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The measured fit before a load that offloads to a GPU (core/measured_fit.py)."""
    from huozi_local.core.measured_fit import fit_before_load, with_fit

    kwargs, fit = fit_before_load(path, machine, kwargs)
    if fit is None:
        return kwargs, plan
    if fit.adjusted or not fit.fits:
        print(f"huozi-local: {fit.summary()}", file=sys.stderr)
    return kwargs, with_fit(plan, fit)


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
    from huozi_local.core.progress import Progress

    def show(report: Progress) -> None:
        percent = int((report.fraction or 0.0) * 100)
        sys.stderr.write(f"\rloading {name} {percent:3d}%")
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
    max_tokens = args.max_tokens if args.max_tokens is not None else settings.max_tokens
    temperature = args.temp if args.temp is not None else settings.temperature
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
