"""`huozi-local cache`: the saved KV states of conversations (the prompt cache); clearing them."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "cache",
        help="list or clear the saved KV states that make reopened conversations answer at once",
        description=(
            "When a conversation is left or huozi-local closes, the model's KV cache for it is "
            "saved, so reopening it answers without evaluating its whole history again. This "
            "lists what is saved on disk (per model and settings) or removes it."
        ),
    )
    parser.add_argument("--clear", action="store_true", help="remove every saved state")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run_cache)


def run_cache(args: argparse.Namespace) -> int:
    from huozi_local.core.chat import kv_files
    from huozi_local.core.config import Paths, Settings
    from huozi_local.core.loading.cache import prompt_cache_folder
    from huozi_local.core.units import format_bytes

    paths = Paths.from_env()
    root = prompt_cache_folder(paths)
    if args.clear:
        files, freed = kv_files.clear(root)
        if args.json:
            print(json.dumps({"removed": files, "bytes": freed}))
        else:
            print(f"removed {files} saved states ({format_bytes(freed)}) from {root}")
        return 0
    rows = kv_files.stored_keys(root)
    if args.json:
        json.dump([r.to_json() for r in rows], sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
        return 0
    settings = Settings.load(paths.config_file)
    state = "on" if settings.prompt_cache else "off (prompt_cache = false)"
    print(f"prompt cache: {state}; saved states in {root}")
    if not rows:
        print("nothing saved yet")
        return 0
    for row in rows:
        about = row.about
        model = str(about.get("model", "?"))
        details = (
            f"KV {about.get('kv_cache_type', '?')}, llama-cpp-python {about.get('llama_cpp', '?')}"
        )
        used = json.loads(json.dumps(row.to_json()))["last_used"]
        print(
            f"  {model}\n    {row.entries} conversations, {row.tokens} tokens, "
            f"{format_bytes(row.bytes)}, last used {used} ({details})"
        )
    total = sum(r.bytes for r in rows)
    print(f"total {format_bytes(total)}; clear with: huozi-local cache --clear")
    return 0
