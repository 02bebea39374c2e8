"""`huozi-local repair PATH [-o OUT]`: make a legacy huozi3 GGUF loadable by today's llama.cpp."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "repair",
        help="merge split experts and fix the metadata of an official huozi3 GGUF file",
        description=(
            "Write a repaired copy of a February-2024 huozi3 GGUF file: experts merged into "
            "the 3-D tensors today's llama.cpp needs (bytes restacked, nothing dequantized), "
            "57001 made the end-of-turn token, the chat template embedded. The source file "
            "is never modified."
        ),
    )
    parser.add_argument("path", help="the .gguf file to repair")
    parser.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="where to write the result (a file or a folder; default: PATH's stem + "
        ".repaired.gguf beside it)",
    )
    parser.set_defaults(handler=run_repair)


def run_repair(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from huozi_local.core.progress import Progress as CoreProgress
    from huozi_local.core.repair import repair_gguf

    console = Console(stderr=True, highlight=False)
    output = Path(args.output).expanduser() if args.output else None
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("repairing", total=None)

        def show(report: CoreProgress) -> None:
            bar.update(task, completed=report.done, total=report.total)

        result = repair_gguf(Path(args.path).expanduser(), output, progress=show)
    if result.nothing_to_do:
        print(f"{args.path}: nothing to do, it already loads and ends turns correctly")
        return 0
    for change in result.changes:
        print(f"  {change}")
    print(f"wrote {result.output} ({result.bytes_written / 1e9:.2f} GB)")
    return 0
