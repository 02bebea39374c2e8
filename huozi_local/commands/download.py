"""`huozi-local download`: fetch a model with a progress bar; Ctrl-C keeps what arrived."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "download",
        help="download a model (resumable, verified, repaired for today's llama.cpp)",
        description=(
            "Download a model into the models folder. With no quant, the one that suits this "
            "machine best. Interrupted downloads resume where they stopped."
        ),
    )
    parser.add_argument(
        "model",
        nargs="?",
        default="huozi3",
        help="FAMILY[:QUANT] (huozi3, huozi3:q2_k, huozi3.5:q4_k_m) or hf:OWNER/REPO/FILE.gguf",
    )
    parser.add_argument(
        "--source",
        choices=("hf", "mirror", "modelscope"),
        help="where to download from (default: the source chosen in setup, else hf); mirror is "
        "$HF_ENDPOINT or https://hf-mirror.com",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="never touch the network (also HF_HUB_OFFLINE=1): report what is on disk",
    )
    parser.add_argument(
        "--keep-original",
        action="store_true",
        help="keep a legacy file's original next to its repaired copy",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="download over another file that has the model's name (one you imported or put "
        "there); it stays until the new file is verified",
    )
    parser.add_argument(
        "--connections",
        type=int,
        metavar="N",
        help="HTTP connections fetching ranges of the file at once (default: the setting "
        "download_connections, else 8; 1: one stream)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the result as JSON (bytes, seconds, ...)"
    )
    parser.add_argument(
        "--endpoint",
        metavar="URL",
        help="hub endpoint or mirror (default: $HF_ENDPOINT, or $MODELSCOPE_ENDPOINT with "
        "--source modelscope)",
    )
    parser.set_defaults(handler=run_download)


def run_download(args: argparse.Namespace) -> int:
    from huozi_local.commands._progress_bar import ProgressBar
    from huozi_local.commands._runner import run_cancelable
    from huozi_local.core.config import Paths
    from huozi_local.core.errors import Cancelled
    from huozi_local.core.fetch.download import DownloadResult, download_model
    from huozi_local.core.planning.hardware import detect_machine

    paths = Paths.from_env()
    source, endpoint = _source_and_endpoint(args, paths)
    connections = _connections(args, paths)
    machine = detect_machine() if _names_no_quant(args.model) else None
    try:
        with ProgressBar(sys.stderr) as bar:
            result: DownloadResult = run_cancelable(
                lambda cancel: download_model(
                    args.model,
                    paths,
                    source=source,
                    endpoint=endpoint,
                    offline=args.offline,
                    keep_original=args.keep_original,
                    replace=args.replace,
                    progress=bar.update,
                    cancel=cancel,
                    machine=machine,
                    connections=connections,
                ),
                "download",
            )
    except Cancelled as exc:
        print(f"huozi-local: {exc}", file=sys.stderr)
        return 130
    if args.json:
        import json

        print(json.dumps(_record(result), ensure_ascii=False))
    else:
        _report(result)
    return 0


def _connections(args: argparse.Namespace, paths: Any) -> int:
    """--connections over the setting over the default; one line when out of range."""
    from huozi_local.core.config import Settings, check_setting
    from huozi_local.core.errors import HuoziError
    from huozi_local.core.fetch.download import DEFAULT_CONNECTIONS

    if args.connections is not None:
        try:
            return int(check_setting("download_connections", args.connections))
        except HuoziError as exc:
            raise HuoziError(str(exc).replace("'download_connections'", "--connections")) from None
    saved = Settings.load(paths.config_file).download_connections
    return saved if saved is not None else DEFAULT_CONNECTIONS


def _record(result: Any) -> dict[str, Any]:
    return {
        "spec": result.spec,
        "path": str(result.path),
        "sha256": result.sha256,
        "already_present": result.already_present,
        "bytes_downloaded": result.bytes_downloaded,
        "resumed_from": result.resumed_from,
        "seconds": round(result.seconds, 3),
        "connections": result.connections,
        "repaired": result.repaired,
        "changes": result.changes,
    }


def _names_no_quant(text: str) -> bool:
    """A family without a quant (`download huozi3`): the planner picks one for this machine."""
    from huozi_local.core.catalog import parse_model_spec

    spec = parse_model_spec(text)
    return spec.kind == "family" and not spec.quant


def _source_and_endpoint(args: argparse.Namespace, paths: Any) -> tuple[str, str | None]:
    """--source/--endpoint win; otherwise the source saved by the app's setup or settings."""
    from huozi_local.core.config import Settings
    from huozi_local.core.fetch.sources import download_args

    settings = Settings.load(paths.config_file)
    if args.source is None:
        source, endpoint = download_args(settings.download_source, settings.mirror_endpoint)
    else:
        source, endpoint = download_args(args.source, settings.mirror_endpoint)
    return source, args.endpoint or endpoint


def _report(result: Any) -> None:
    from huozi_local.core.units import format_bytes

    if result.already_present:
        print(f"{result.spec} is already downloaded: {result.path}")
        return
    how = f", resumed at {format_bytes(result.resumed_from)}" if result.resumed_from else ""
    print(f"downloaded {result.spec} ({format_bytes(result.bytes_downloaded)}{how}), sha256 OK")
    if result.repaired:
        print("repaired for today's llama.cpp: " + "; ".join(result.changes))
    if result.original_path is not None:
        print(f"original kept at {result.original_path}")
    print(result.path)
