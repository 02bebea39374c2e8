"""The terminal chat loop behind `huozi-local chat`.

Like llama.cpp's interactive mode with the README's in-prefix/in-suffix/reverse prompt (the engine
does the huozi format), plus streamed output, readline history and slash commands. Ctrl-C while a
reply streams sets the reply's cancel event (the reply stops within a token, the chat goes on);
Ctrl-D or /quit leaves. The conversation is written to `chat-autosave.json` in the data folder
after every reply, so a crash or a closed terminal never loses it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

    from rich.console import Console

    from huozi_local.core.chat.types import ChatBackend, ChatMessage, ReplyResult, SamplingOptions
    from huozi_local.core.config import Paths
    from huozi_local.core.planning.plan_model import Plan

PROMPT = "用户> "
HELP = "commands: /new  /system TEXT  /regen  /save [FILE]  /quit   (Ctrl-C stops a reply)"


@dataclass
class ChatRepl:
    """One `huozi-local chat` run: its history lives in memory and the autosave file.

    The app's `tui.session.ChatSession` keeps conversations in the store instead; the two differ
    in where history lives, so they are two classes with two names.
    """

    engine: ChatBackend
    plan: Plan | dict[str, Any]
    """The plan it loaded with (`--json` shows it), or the endpoint it talks to."""
    sampling: SamplingOptions
    system: str
    """The system prompt of this chat ("" for none): /system changes it, /save writes it."""
    paths: Paths
    json_mode: bool
    interactive: bool
    console: Console
    messages: list[ChatMessage] = field(default_factory=list)
    autosave_failed: bool = False

    @classmethod
    def start(cls, args: argparse.Namespace) -> ChatRepl:
        from huozi_local.commands._console import text_console
        from huozi_local.commands._engine_load import (
            load_engine,
            sampling_from,
            system_prompt_from,
        )
        from huozi_local.commands.ask import checked_text
        from huozi_local.core.config import Paths, Settings

        if args.system is not None:
            checked_text(args.system, "--system")
        engine: ChatBackend
        plan: Plan | dict[str, Any]
        if getattr(args, "endpoint", None):
            from huozi_local.core.chat.remote_backend import RemoteBackend

            settings = Settings.load(Paths.from_env().config_file)
            remote = RemoteBackend(args.endpoint, args.api_key, model=args.model)
            remote.connect()  # refused / 401 / unknown model: one line now, not at the first turn
            engine, plan = remote, {"endpoint": remote.endpoint, "model": remote.model_name}
        else:
            loaded, settings = load_engine(args)
            engine, plan = loaded.engine, loaded.plan
        return cls(
            engine=engine,
            plan=plan,
            sampling=sampling_from(args, settings),
            system=system_prompt_from(args, settings),
            paths=Paths.from_env(),
            json_mode=args.json,
            interactive=sys.stdin.isatty(),
            console=text_console(),
        )

    # -- input ----------------------------------------------------------------------------
    def _lines(self) -> Iterator[str]:
        from huozi_local.commands.ask import checked_text, undecodable
        from huozi_local.core.errors import HuoziError

        if not self.interactive:
            number = 0
            try:
                for number, line in enumerate(sys.stdin, 1):
                    yield checked_text(line.rstrip("\n"), f"line {number} of stdin")
            except UnicodeDecodeError as exc:
                raise undecodable(exc, f"line {number + 1} of stdin") from None
            return
        history = self._setup_readline()
        try:
            while True:
                try:
                    typed = input(PROMPT)
                except UnicodeDecodeError as exc:
                    self._note(str(undecodable(exc, "that line")))
                    continue
                except KeyboardInterrupt:
                    print()  # Ctrl-C at the prompt clears the line; Ctrl-D leaves
                    continue
                except EOFError:
                    print()
                    return
                try:
                    yield checked_text(typed, "that line")
                except HuoziError as exc:  # typed again at the next prompt; the chat goes on
                    self._note(str(exc))
        finally:
            if history is not None:
                import readline

                try:
                    readline.write_history_file(history)
                except OSError:
                    pass

    def _setup_readline(self) -> Path | None:
        try:
            import readline
        except ImportError:  # pragma: no cover - Windows without pyreadline
            return None
        history = self.paths.data_dir / "chat_history"
        try:
            history.parent.mkdir(parents=True, exist_ok=True)
            if history.exists():
                readline.read_history_file(history)
        except OSError:
            return None
        readline.set_history_length(1000)
        return history

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> int:
        if self.interactive and not self.json_mode:
            from huozi_local.commands._console import styled

            name = styled(self.engine.model_name, "bold")
            self.console.print(name, f"· context {self.engine.n_ctx} · {HELP}")
        try:
            for line in self._lines():
                text = line.strip()
                if not text:
                    continue
                if text.startswith("/") and self._command(text) == "quit":
                    break
                if not text.startswith("/"):
                    from huozi_local.core.chat.types import ChatMessage

                    self.messages.append(ChatMessage("user", line))
                    self._reply()
        finally:
            self.engine.close()
        return 0

    def _command(self, text: str) -> str | None:
        name, _, rest = text.partition(" ")
        rest = rest.strip()
        if name in ("/quit", "/exit", "/q"):
            return "quit"
        if name == "/new":
            self.messages.clear()
            self._note("new conversation")
        elif name == "/system":
            self.system = rest
            self._note(f"system prompt: {rest}" if rest else "system prompt removed")
        elif name == "/regen":
            while self.messages and self.messages[-1].role == "assistant":
                self.messages.pop()
            if self.messages and self.messages[-1].role == "user":
                self._reply()
            else:
                self._note("nothing to answer again")
        elif name == "/save":
            target = save_target(rest)
            try:
                self._write(target)
            except OSError as exc:
                self._note(f"cannot save to {target}: {exc.strerror or exc}")
            else:
                self._note(f"saved {len(self.messages)} messages to {target}")
        elif name == "/help":
            self._note(HELP)
        else:
            self._note(f"unknown command {name}; {HELP}")
        return None

    def _note(self, text: str) -> None:
        if self.json_mode:
            print(f"huozi-local: {text}", file=sys.stderr)
        else:
            self.console.print(text, style="dim")

    def _reply(self) -> None:
        from huozi_local.commands._engine_load import closed_after, result_record
        from huozi_local.core.chat.template import with_system_prompt
        from huozi_local.core.chat.types import ChatMessage, ContextTrimmed, Notice, TextDelta
        from huozi_local.core.errors import RemoteError, WorkerLost

        cancel = threading.Event()
        previous = signal.getsignal(signal.SIGINT)
        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            signal.signal(signal.SIGINT, lambda _sig, _frame: _interrupt(cancel))
        streaming = not self.json_mode
        if streaming and self.interactive:
            self.console.print("助手> ", style="bold cyan", end="")
        result: ReplyResult | None = None
        try:
            # Closed however the loop ends, so engine.close() never waits on a suspended
            # generator's lock (a closed pipe or an unwritable character used to hang here).
            prompt = with_system_prompt(self.messages, self.system)
            events = self.engine.stream_reply(prompt, self.sampling, cancel)
            with closed_after(events):
                for event in events:
                    if isinstance(event, TextDelta):
                        if streaming:
                            sys.stdout.write(event.text)
                            sys.stdout.flush()
                    elif isinstance(event, (ContextTrimmed, Notice)):
                        print(f"huozi-local: {event.message}", file=sys.stderr)
                    else:
                        result = event
        except WorkerLost as exc:
            # An RPC worker went away mid-reply: the reply ends here with the reason, and the
            # chat stays open so the conversation can still be saved (/save) or left (/quit).
            sys.stdout.write("\n")
            sys.stdout.flush()
            print(f"huozi-local: {exc}", file=sys.stderr, flush=True)
            self._autosave()
            return
        except RemoteError as exc:
            # One failed reply from an --endpoint server (a malformed chunk, a 502, a hang-up)
            # ends that reply, not a person's chat: the line says why and /regen asks again.
            # Piped turns stop here with status 2: a script cannot see a line in the middle,
            # and the next turn would go out with a hole in its history.
            if streaming:
                sys.stdout.write("\n")
                sys.stdout.flush()
            if not self.interactive:
                raise
            from huozi_local.commands._remedies import cli_wording

            print(f"huozi-local: {cli_wording(exc)} (/regen asks again)", file=sys.stderr)
            self._autosave()
            return
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)
        assert result is not None
        self.messages.append(ChatMessage("assistant", result.text))
        if self.json_mode:
            print(json.dumps(result_record(result, self.plan), ensure_ascii=False), flush=True)
        else:
            sys.stdout.write("\n")
            if self.interactive:
                self._note(_stats(result))
        self._autosave()

    def _write(self, target: Path) -> None:
        rows = [{"role": m.role, "content": m.content} for m in self.messages]
        if self.system:
            rows.insert(0, {"role": "system", "content": self.system})
        write_replacing(target, json.dumps(rows, ensure_ascii=False, indent=2) + "\n")

    def _autosave(self) -> None:
        """Autosave is a safety net: the chat goes on without it, but the user is told once
        (a read-only HUOZI_HOME used to drop every autosave silently)."""
        target = self.paths.data_dir / "chat-autosave.json"
        try:
            self._write(target)
        except OSError as exc:
            if not self.autosave_failed:
                self.autosave_failed = True
                print(
                    f"huozi-local: cannot autosave the chat to {target}: "
                    f"{exc.strerror or exc} (the chat goes on; /save FILE keeps it)",
                    file=sys.stderr,
                )


def save_target(typed: str) -> Path:
    """The file `/save TYPED` writes.

    A folder gets the conversation under the default name, huozi-chat-YYYYmmdd-HHMMSS.json:
    one that exists, `.`, `..`, `/`, or any path typed with a trailing slash (made if missing,
    as the folders above a file are). Such paths were taken as the file itself: `.` and `/`
    ended the chat with a traceback and `sub/` wrote a file named `sub`. `~` is the home folder,
    as in a shell, since no shell expands what is typed here.
    """
    default = f"huozi-chat-{time.strftime('%Y%m%d-%H%M%S')}.json"
    if not typed:
        return Path(default)
    path = Path(typed).expanduser()
    try:
        folder = path.is_dir()
    except OSError:  # a name too long for the system: the save itself says so in one line
        folder = False
    if folder or typed.endswith(("/", os.sep)) or path.name in ("", ".", ".."):
        return path / default
    return path


def write_replacing(target: Path, text: str) -> None:
    """Write `text` to `target` whole or not at all, and never leave a temporary file.

    The temporary file used to be `<target>.tmp`, left behind whenever the final rename failed
    (`/save ..` left `...tmp`); it now has a unique, short name of its own in the target's
    folder and is removed whatever stopped the save.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".huozi-chat-", suffix=".tmp", dir=target.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        tmp.replace(target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _stats(result: ReplyResult) -> str:
    stopped = {"stop": "", "length": " · cut at max tokens", "cancelled": " · stopped"}
    restored = (
        f", {result.restored_prompt_tokens} restored from the cache"
        if result.restored_prompt_tokens
        else ""
    )
    return (
        f"{result.completion_tokens} tokens · {result.tokens_per_s:.1f} tok/s · "
        f"first token {result.ttft_s:.2f}s · prompt {result.evaluated_prompt_tokens}"
        f"/{result.prompt_tokens} evaluated{restored}{stopped[result.stop_reason]}"
    )


def _interrupt(cancel: threading.Event) -> None:
    """Ctrl-C during a reply: the first stops it at the next token; a second leaves at once,
    for when the first cannot be seen (a call waiting on an RPC worker that does not answer)."""
    if cancel.is_set():
        raise KeyboardInterrupt
    cancel.set()
