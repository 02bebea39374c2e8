"""`huozi-local ask`: one reply, streamed to stdout (or one JSON object with --json)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from huozi_local.commands._engine_load import add_model_options
from huozi_local.core.errors import HuoziError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "ask",
        help="ask one question and stream the reply",
        description=(
            "Ask the model one question and stream its reply to stdout. Stdin is read only when "
            "asked: TEXT '-' reads the question from it, --messages - the conversation; with "
            "neither TEXT nor --messages, piped input is the question."
        ),
    )
    parser.add_argument("text", nargs="?", metavar="TEXT", help="the question ('-': stdin)")
    add_model_options(parser)
    parser.add_argument(
        "--messages",
        metavar="FILE.json",
        help="the conversation so far: a JSON list of {role, content} (system/user/assistant "
        "or 系统/用户/助手); '-': read it from stdin",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    parser.set_defaults(handler=run_ask)


STDIN = "-"


def read_messages(source: str) -> list[Any]:
    """An OpenAI-style message list from a file, or from stdin when `source` is '-'; a one-line
    HuoziError otherwise."""
    if source == STDIN:
        return parse_messages(_read_stdin("the conversation on stdin"), "stdin")
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise HuoziError(f"no such messages file: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise HuoziError(f"cannot read {path}: {exc}") from exc
    return parse_messages(text, str(path))


def parse_messages(text: str, where: str) -> list[Any]:
    from huozi_local.core.chat.types import ChatMessage

    try:
        data = json.loads(text)
    except ValueError as exc:
        raise HuoziError(f"{where} is not valid JSON: {exc}") from exc
    except RecursionError:  # the json module decodes nested arrays and objects by recursion
        raise HuoziError(
            f"{where} is nested too deeply to be a conversation: it must hold a JSON list of "
            "{role, content} objects"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("messages"), list):
        data = data["messages"]
    if not isinstance(data, list):
        raise HuoziError(f"{where} must hold a JSON list of {{role, content}} objects")
    messages = []
    for index, item in enumerate(data):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("role"), str)
            or not isinstance(item.get("content"), str)
        ):
            raise HuoziError(f"{where}: message {index} needs string 'role' and 'content'")
        content = checked_text(item["content"], f"{where}: message {index}")
        messages.append(ChatMessage.of(item["role"], content))
    return messages


def undecodable(exc: UnicodeDecodeError, where: str) -> HuoziError:
    """One line for input bytes that are not UTF-8 (stdin read strictly)."""
    bad = exc.object[exc.start : exc.start + 1]
    return HuoziError(
        f"{where} is not valid UTF-8 text (byte {bad!r} at offset {exc.start}): "
        "convert it to UTF-8 first"
    )


def checked_text(text: str, where: str) -> str:
    """`text` if it is real Unicode; one line otherwise.

    Bytes that are not UTF-8 in an argument (`ask $'caf\\xe9'`) or on stdin under a C locale
    arrive as lone surrogates (Python's surrogateescape), and a JSON `\\udcff` escape makes one
    too: they cannot be tokenized and ended in a traceback deep in the engine. The policy is to
    refuse them where they come in, saying where, rather than to guess what was meant.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start].encode("utf-8", "surrogateescape")
        raise HuoziError(
            f"{where} is not valid UTF-8 text (byte {bad!r} at character {exc.start}): "
            "convert it to UTF-8 first"
        ) from None
    return text


def _read_stdin(what: str) -> str:
    try:
        piped = sys.stdin.read()
    except UnicodeDecodeError as exc:
        raise undecodable(exc, what) from None
    return checked_text(piped, what)


def _question(args: argparse.Namespace) -> str | None:
    """TEXT, or the question on stdin when asked for it.

    Stdin is read only on request: `ask --messages f.json` used to read it whenever it was not
    a terminal, so under `ssh host cmd`, cron or CI (a stdin nobody closes) it waited forever,
    and text piped for another purpose became one more message. A plain `ask` with piped input
    and nothing else to ask still reads it, as `--help` has always said.
    """
    piped = args.text is None and args.messages is None and not sys.stdin.isatty()
    if args.text == STDIN or piped:
        return _read_stdin("the question on stdin").strip() or None
    text: str | None = args.text
    return None if text is None else checked_text(text, "TEXT")


def run_ask(args: argparse.Namespace) -> int:
    from huozi_local.commands._engine_load import (
        closed_after,
        load_engine,
        result_record,
        sampling_from,
        system_prompt_from,
    )
    from huozi_local.core.chat.template import with_system_prompt
    from huozi_local.core.chat.types import ChatMessage, ReplyResult, TextDelta

    if args.system is not None:
        checked_text(args.system, "--system")
    if args.messages == STDIN and args.text == STDIN:
        raise HuoziError(
            "stdin holds one thing: give the conversation (--messages -) or the question "
            "(TEXT -) on it, not both"
        )
    messages = read_messages(args.messages) if args.messages else []
    question = _question(args)
    if question:
        messages.append(ChatMessage("user", question))
    if not messages:
        raise HuoziError(
            "nothing to ask: give TEXT, '-' with text on stdin, or --messages FILE (or -)"
        )
    if messages[-1].role != "user":
        raise HuoziError("the conversation must end with a user message to be answered")
    loaded, settings = load_engine(args)
    engine = loaded.engine
    sampling = sampling_from(args, settings)
    messages = with_system_prompt(messages, system_prompt_from(args, settings))
    import threading

    cancel = threading.Event()
    result: ReplyResult | None = None
    try:
        # closed_after(): whatever ends the loop (a closed pipe, an encoding error, Ctrl-C), the
        # generator, which holds the engine's lock while suspended, is closed before
        # engine.close() waits on that lock; otherwise the command hung forever.
        with closed_after(engine.stream_reply(messages, sampling, cancel)) as events:
            for event in events:
                if isinstance(event, TextDelta) and not args.json:
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
                elif isinstance(event, ReplyResult):
                    result = event
                elif not isinstance(event, TextDelta):
                    print(f"huozi-local: {event.message}", file=sys.stderr)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        raise
    finally:
        engine.close()
    assert result is not None
    if args.json:
        print(json.dumps(result_record(result, loaded.plan), ensure_ascii=False))
    else:
        sys.stdout.write("\n")
        if result.stop_reason == "length":
            print("huozi-local: the reply was cut at --max-tokens", file=sys.stderr)
    return 0
