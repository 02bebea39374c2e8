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
    import sys
    from pathlib import Path

    from huozi_local.commands._progress_bar import ProgressBar
    from huozi_local.core.gguf.repair import repair_gguf
    from huozi_local.core.units import format_bytes

    output = Path(args.output).expanduser() if args.output else None
    with ProgressBar(sys.stderr) as bar:
        result = repair_gguf(Path(args.path).expanduser(), output, progress=bar.update)
    if result.nothing_to_do:
        print(f"{args.path}: nothing to do, it already loads and ends turns correctly")
        return 0
    for change in result.changes:
        print(f"  {change}")
    print(f"wrote {result.output} ({format_bytes(result.bytes_written)})")
    return 0
