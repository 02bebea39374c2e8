"""`huozi-local inspect PATH [--json]`: what a GGUF file holds, read from its header only."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from huozi_local.core.gguf.header import GGUFFile

JSON_SCHEMA_VERSION = 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show what a GGUF model file holds and whether llama.cpp can load it",
        description=(
            "Show a GGUF file's architecture, vocabulary and special tokens, quantization, "
            "bytes per layer, layout, and whether today's llama.cpp loads it as is. "
            "Reads only the header, so it is instant even for a 27 GB file."
        ),
    )
    parser.add_argument("path", help="the .gguf file")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.set_defaults(handler=run_inspect)


def inspect_report(gguf: GGUFFile) -> dict[str, Any]:
    """The stable --json object (keys only ever added; `schema` bumps on any other change)."""
    from huozi_local.core import huozi
    from huozi_local.core.gguf.repair import repair_plan

    blockers = gguf.load_blockers()
    try:
        plan = repair_plan(gguf)
    except Exception as exc:  # a damaged expert set: report it rather than fail the inspection
        plan = [f"cannot repair: {exc}"]
    template = gguf.chat_template
    return {
        "schema": JSON_SCHEMA_VERSION,
        "path": str(gguf.path),
        "file_size": gguf.file_size,
        "gguf_version": gguf.version,
        "name": gguf.name,
        "architecture": gguf.architecture,
        "n_layers": gguf.n_layers,
        "context_length": gguf.context_length,
        "n_embd": gguf.n_embd,
        "n_head": gguf.n_head,
        "n_head_kv": gguf.n_head_kv,
        "head_dim": gguf.head_dim,
        "n_ff": gguf.n_ff,
        "n_expert": gguf.n_expert,
        "n_expert_used": gguf.n_expert_used,
        "vocab_size": gguf.vocab_size,
        "is_huozi": gguf.is_huozi,
        "special_tokens": [
            {"role": t.role, "id": t.token_id, "text": t.text, "type": t.token_type}
            for t in gguf.special_tokens()
        ],
        "chat_template": template is not None,
        "chat_template_is_huozi": template == huozi.CHAT_TEMPLATE,
        "quantization": gguf.quantization_groups(),
        "tensor_count": gguf.tensor_count,
        "layer_bytes": gguf.layer_bytes(),
        "non_layer_bytes": gguf.non_layer_bytes(),
        "total_tensor_bytes": gguf.tensor_bytes,
        "layout": gguf.layout,
        "loads_as_is": not blockers,
        "load_blockers": blockers,
        "repair_plan": plan,
        "repaired_from_sha256": gguf.source_sha256,
    }


def run_inspect(args: argparse.Namespace) -> int:
    import json

    from huozi_local.core.gguf.header import read_gguf

    report = inspect_report(read_gguf(args.path))
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        _print_human(report)
    return 0


def _print_human(r: dict[str, Any]) -> None:
    from rich.table import Table

    from huozi_local.commands._console import styled, text_console
    from huozi_local.core.units import format_bytes

    # Names, paths and tensor names come from the file: text_console shows them as they are.
    console = text_console()
    console.print(
        styled(r["path"], "bold"),
        f" ({format_bytes(r['file_size'])}, GGUF v{r['gguf_version']})",
    )
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="cyan")
    facts.add_column()
    experts = f"{r['n_expert']} ({r['n_expert_used']} used per token)" if r["n_expert"] else "none"
    for label, value in (
        ("name", r["name"]),
        ("architecture", r["architecture"]),
        ("layers", r["n_layers"]),
        ("context length", r["context_length"]),
        ("embedding size", r["n_embd"]),
        ("heads / KV heads", f"{r['n_head']} / {r['n_head_kv']} (head dim {r['head_dim']})"),
        ("feed-forward size", r["n_ff"]),
        ("experts", experts),
        ("vocabulary", f"{r['vocab_size']} tokens" + (" (huozi)" if r["is_huozi"] else "")),
        (
            "chat template",
            ("embedded (huozi)" if r["chat_template_is_huozi"] else "embedded")
            if r["chat_template"]
            else "none",
        ),
        ("layout", r["layout"]),
        ("tensors", f"{r['tensor_count']}, {format_bytes(r['total_tensor_bytes'])}"),
    ):
        facts.add_row(label, str(value))
    if r["repaired_from_sha256"]:
        facts.add_row("repaired from", f"sha256 {r['repaired_from_sha256']}")
    console.print(facts)

    tokens = Table(title="special tokens", title_justify="left")
    for column in ("role", "id", "text", "type"):
        tokens.add_column(column)
    for t in r["special_tokens"]:
        tokens.add_row(t["role"], str(t["id"]), repr(t["text"]), t["type"])
    console.print(tokens)

    quant = Table(title="quantization by tensor group", title_justify="left")
    quant.add_column("group")
    quant.add_column("types (tensor count)")
    for group, types in r["quantization"].items():
        quant.add_row(group, ", ".join(f"{k} ({v})" for k, v in types.items()))
    console.print(quant)

    sizes = Table(title="bytes", title_justify="left")
    sizes.add_column("part")
    sizes.add_column("size", justify="right")
    for index, n in enumerate(r["layer_bytes"]):
        sizes.add_row(f"blk.{index}.*", format_bytes(n))
    for name, n in r["non_layer_bytes"].items():
        sizes.add_row(name, format_bytes(n))
    sizes.add_row("total", format_bytes(r["total_tensor_bytes"]), style="bold")
    console.print(sizes)

    if r["loads_as_is"]:
        console.print("today's llama.cpp loads this file as is", style="green")
    else:
        console.print("today's llama.cpp cannot load this file as is:", style="red")
        for blocker in r["load_blockers"]:
            console.print(f"  - {blocker}")
    if r["repair_plan"]:
        console.print("`huozi-local repair` would:")
        for line in r["repair_plan"]:
            console.print(f"  - {line}")
