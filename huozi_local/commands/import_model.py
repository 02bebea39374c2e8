"""`huozi-local import PATH [--move]`: adopt a GGUF file already on this disk as a model.

For people who cannot reach the hub but already have the file. Afterwards `models` lists it and
`ask`, `chat`, `serve` and the app use it without `--model` (it becomes the default model).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "import",
        help="use a .gguf file you already have (repaired into the models folder if needed)",
        description=(
            "Adopt a GGUF file already on this disk: its header is checked, the model "
            "identified (the official huozi files by sha256), a February-2024 file repaired "
            "into the models folder; a file that loads as it is gets linked (same disk) or "
            "copied. Your file is never changed. It becomes the default model. A model "
            "already there is never replaced unless you pass --replace."
        ),
    )
    parser.add_argument("path", help="the .gguf file")
    parser.add_argument(
        "--move",
        action="store_true",
        help="move the file into the models folder instead of leaving it where it is (it "
        "leaves its place only once the model is complete and in place)",
    )
    taken = parser.add_mutually_exclusive_group()
    taken.add_argument(
        "--replace",
        action="store_true",
        help="when a different file already has the model's name, put this one in its place "
        "(the old one is deleted once this one is complete and in place)",
    )
    taken.add_argument(
        "--keep-both",
        action="store_true",
        help="import it under its own file name (models/imported/NAME), keeping the model "
        "already there",
    )
    parser.set_defaults(handler=run_import)


def run_import(args: argparse.Namespace) -> int:
    from huozi_local.commands._progress_bar import ProgressBar
    from huozi_local.commands._runner import run_cancelable
    from huozi_local.core.config import Paths, Settings
    from huozi_local.core.errors import Cancelled
    from huozi_local.core.fetch.adopt import ImportResult, import_model

    paths = Paths.from_env()
    settings = Settings.load(paths.config_file)  # a malformed config fails before any work
    try:
        with ProgressBar(sys.stderr) as bar:
            result: ImportResult = run_cancelable(
                lambda cancel: import_model(
                    args.path,
                    paths,
                    move=args.move,
                    replace=args.replace,
                    keep_both=args.keep_both,
                    progress=bar.update,
                    cancel=cancel,
                ),
                "import",
            )
    except Cancelled:
        print("huozi-local: import cancelled: nothing was added, your file is unchanged",
              file=sys.stderr)  # fmt: skip
        return 130
    settings.model = result.spec
    settings.save(paths.config_file)
    _report(result)
    if args.move and not result.source_removed:
        print("your file was left where it is: the models folder already holds this model")
    return 0


def _report(result: Any) -> None:
    print(f"identified: {result.identity.spec or 'not a known huozi quant'} "
          f"({result.identity.how})")  # fmt: skip
    if result.method == "already imported":
        print(f"already imported: {result.path}")
    elif result.method == "already there":
        print(f"the same model is already in the models folder (left as it is): {result.path}")
    elif result.method == "repaired":
        print("repaired for today's llama.cpp: " + "; ".join(result.changes[:-1]))
    else:
        print(f"{result.method} into the models folder")
    if result.replaced:
        print("it replaced the file that had this name")
    if result.source_removed:
        print("the original file was moved (it is no longer where it was)")
    print(f"default model is now {result.spec}: `huozi-local chat` and the app use it")
    print(result.path)
