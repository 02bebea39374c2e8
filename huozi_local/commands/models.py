"""`huozi-local models`: what can be downloaded, what is on disk, and what fits this machine."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list model families, quants, sizes, what is downloaded and what fits",
        description="List every known model file, its state on disk and whether it fits here.",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--offline", action="store_true", help="use only what is on disk (no hub listing)"
    )
    parser.add_argument("--endpoint", metavar="URL", help="hub endpoint or mirror")
    parser.set_defaults(handler=run_models)


def run_models(args: argparse.Namespace) -> int:
    from huozi_local.core.config import Paths
    from huozi_local.core.fetch.inventory import model_states
    from huozi_local.core.planning.hardware import detect_machine

    machine = detect_machine()  # never raises: a probe that fails says "unknown"
    states = model_states(
        Paths.from_env(), offline=args.offline, endpoint=args.endpoint, machine=machine
    )
    if args.json:
        text = json.dumps([s.to_json() for s in states], ensure_ascii=False, indent=2)
        # A file name that is not UTF-8 (lone surrogates): as JSON escapes, which read back as
        # that name, instead of an output that cannot be written at all.
        sys.stdout.write(text.encode("utf-8", "backslashreplace").decode("utf-8") + "\n")
        return 0
    _print_table(states)
    return 0


_STATE_STYLE = {
    "verified": "green",
    "repaired": "green",
    "partial": "yellow",
    "imported": "green",
    "unverified": "yellow",
    "missing": "dim",
}
_FITS_STYLE = {"fits": "green", "partial": "yellow", "no": "red"}


def _print_table(states: list[Any]) -> None:
    from rich.table import Table

    from huozi_local.commands._console import styled, text_console
    from huozi_local.core.units import format_bytes

    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for column in ("model", "file", "size", "on disk", "fits here"):
        table.add_column(column)
    for state in states:
        size = format_bytes(state.size_bytes) if state.size_bytes else "?"
        on_disk = state.state
        if state.state == "partial" and state.size_bytes:
            on_disk = f"partial {100 * state.downloaded_bytes / state.size_bytes:.0f}%"
        fits = state.fits or "-"
        name = state.spec + (" (community)" if state.community else "")
        table.add_row(
            name,
            state.filename,
            size,
            styled(on_disk, _STATE_STYLE.get(state.state, "")),
            styled(fits, _FITS_STYLE.get(fits, "")),
        )
    text_console().print(table)
    print(
        "download one with: huozi-local download FAMILY[:QUANT]; "
        "use a file you have with: huozi-local import FILE.gguf"
    )
