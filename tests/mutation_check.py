"""Break one promised behaviour at a time in a copy of the project and see that a test fails.

A green suite means something only if each behaviour it claims to guard is guarded: this applies
every sabotage below to a fresh copy of the working tree, runs the tests that should catch it and
reports which were caught and which survived (exit status 1 if any survived). The baseline run of
the same tests, unbroken, must pass first, so that "caught" means caught for that reason.

    .venv/bin/python tests/mutation_check.py             # all of them, ~10 minutes on 2 cores
    .venv/bin/python tests/mutation_check.py -k server   # the ones whose name has "server"
    .venv/bin/python tests/mutation_check.py --list

Each sabotage names its file and the exact text it replaces, which must occur once: when the code
moves on, the script says which entry to update instead of silently testing nothing. Not collected
by pytest (its name does not start with test_); CI does not run it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Edit:
    path: str
    old: str
    new: str


@dataclass(frozen=True)
class Sabotage:
    name: str
    edits: tuple[Edit, ...]
    """Several where the behaviour is guarded twice on purpose (both checks must go)."""
    tests: tuple[str, ...]


SABOTAGES = (
    Sabotage(
        "repair: the final re-read of the written file removed",
        (
            Edit(
                "huozi_local/core/gguf/repair.py",
                "        verify_repaired(gguf, partial, layout, sha)\n",
                "",
            ),
        ),
        ("tests/test_repair.py", "tests/test_repair_cli.py"),
    ),
    Sabotage(
        "repair: a temporary name that leads to the source is written through",
        (
            Edit(
                "huozi_local/core/gguf/repair.py",
                "        if partial.samefile(src):\n",
                "        if False:\n",
            ),
        ),
        ("tests/test_repair_cli.py",),
    ),
    Sabotage(
        "download: the re-read of a file repaired in the stream removed",
        (
            Edit(
                "huozi_local/core/fetch/in_place.py",
                "            verify_repaired(gguf, files.main, layout.repair, sha256)\n",
                "            pass\n",
            ),
        ),
        ("tests/test_download_parallel.py",),
    ),
    Sabotage(
        "download: a sha256 mismatch accepted (several connections)",
        (
            Edit(
                "huozi_local/core/fetch/in_place.py",
                "    if digest != sha256:\n",
                "    if False:\n",
            ),
        ),
        ("tests/test_download_parallel.py",),
    ),
    Sabotage(
        "download: a sha256 mismatch accepted (one stream)",
        (
            Edit(
                "huozi_local/core/fetch/one_stream.py",
                "    if target.sha256 and transfer.sha256 != target.sha256:\n",
                "    if False:\n",
            ),
        ),
        ("tests/test_download.py",),
    ),
    Sabotage(
        "import: a different model under the same name replaced without --replace",
        (
            Edit(
                "huozi_local/core/fetch/adopt.py",
                "        if not replace:\n",
                "        if False:\n",
            ),
        ),
        ("tests/test_import_collisions.py",),
    ),
    Sabotage(
        "download: another file under the model's name downloaded over",
        (
            Edit(
                "huozi_local/core/fetch/download.py",
                "        if replace:\n            return None\n",
                "        return None\n",
            ),
        ),
        ("tests/test_import_collisions.py",),
    ),
    Sabotage(
        "import --move: the source taken from its place before the model is in place",
        (
            Edit(
                "huozi_local/core/fetch/adopt_place.py",
                '        return "moved"\n',
                '        source.rename(staging)\n        return "linked"\n',
            ),
        ),
        ("tests/test_import_collisions.py",),
    ),
    Sabotage(
        "download/import: Ctrl-C exits at once instead of cancelling",
        (
            Edit(
                "huozi_local/commands/_runner.py",
                "            cancel.set()  # and keep waiting",
                "            os._exit(130)  # and keep waiting",
            ),
        ),
        ("tests/test_interrupts.py",),
    ),
    Sabotage(
        "chat: Ctrl-C no longer stops the reply",
        (
            Edit(
                "huozi_local/commands/_chat_repl.py",
                "lambda _sig, _frame: _interrupt(cancel))",
                "lambda _sig, _frame: None)",
            ),
        ),
        ("tests/test_interrupts.py",),
    ),
    Sabotage(
        "engine: 57001 not among the stop ids",
        (
            Edit(
                "huozi_local/core/chat/vocabulary.py",
                "            stops.add(huozi.END_OF_UTTERANCE_ID)\n",
                "            pass\n",
            ),
        ),
        ("tests/test_stop_tokens.py",),
    ),
    Sabotage(
        "prompt: typed text parsed for special tokens",
        (
            Edit(
                "huozi_local/core/chat/safe_tokenizer.py",
                "        if self.unsafe_ids.isdisjoint(ids):\n",
                "        if True:\n",
            ),
        ),
        ("tests/test_template.py",),
    ),
    Sabotage(
        "template: GGUF chat templates rendered outside the sandbox",
        (
            Edit(
                "huozi_local/core/chat/template.py",
                "    env = ImmutableSandboxedEnvironment(",
                "    env = __import__('jinja2').Environment(",
            ),
        ),
        ("tests/test_template.py",),
    ),
    Sabotage(
        "prompt cache: an entry saved for another model or setting is used",
        (
            Edit(
                "huozi_local/core/chat/prompt_cache.py",
                "                if header.key != self.key.digest:\n",
                "                if False:\n",
            ),
            Edit(
                "huozi_local/core/chat/kv_files.py",
                "    if header.key != key:\n",
                "    if False:\n",
            ),
        ),
        ("tests/test_prompt_cache.py",),
    ),
    Sabotage(
        "server: the generation thread never closed",
        (
            Edit(
                "huozi_local/server/app.py",
                "            await asyncio.to_thread(generation.close)\n",
                "            pass\n",
            ),
        ),
        ("tests/test_server.py::test_server_threads_do_not_leak",),
    ),
    Sabotage(
        "server: body limit raised from 8 MiB to 8 GiB",
        (
            Edit(
                "huozi_local/server/guard.py",
                "DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024\n",
                "DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024 * 1024\n",
            ),
        ),
        ("tests/test_server_guard.py",),
    ),
    Sabotage(
        "server: message limit cut from 10000 to 100",
        (Edit("huozi_local/server/schemas.py", "MAX_MESSAGES = 10_000\n", "MAX_MESSAGES = 100\n"),),
        ("tests/test_server_guard.py",),
    ),
    Sabotage(
        "server: a POST without a JSON Content-Type served",
        (
            Edit(
                "huozi_local/server/guard.py",
                '            if kind != "application/json":\n',
                "            if False:\n",
            ),
        ),
        ("tests/test_server_guard.py",),
    ),
    Sabotage(
        "serve: binds every interface by default",
        (
            Edit(
                "huozi_local/commands/serve.py",
                'parser.add_argument("--host", default="127.0.0.1"',
                'parser.add_argument("--host", default="0.0.0.0"',
            ),
        ),
        ("tests/test_serve_command.py",),
    ),
    Sabotage(
        "serve: a request head that never ends is never timed out",
        (
            Edit(
                "huozi_local/server/connections.py",
                "                self._set_deadline(self.limits.header_timeout)\n",
                "                self._set_deadline(None)\n",
            ),
        ),
        ("tests/test_server_slow_clients.py",),
    ),
    Sabotage(
        "server: an integer past the digit limit is a plain-text 500",
        (
            Edit(
                "huozi_local/server/schemas.py",
                "    except ValueError as exc:\n        # After its subclasses",
                "    except KeyError as exc:\n        # After its subclasses",
            ),
        ),
        ("tests/test_server_guard.py",),
    ),
    Sabotage(
        "CLI: text from files and people read as rich markup",
        (
            Edit(
                "huozi_local/commands/_console.py",
                "Console(file=file, markup=False,",
                "Console(file=file, markup=True,",
            ),
        ),
        ("tests/test_text_not_markup.py", "tests/test_inspect.py"),
    ),
    Sabotage(
        "ask: --messages FILE reads a piped stdin too",
        (
            Edit(
                "huozi_local/commands/ask.py",
                "args.text is None and args.messages is None and not sys.stdin",
                "args.text is None and not sys.stdin",
            ),
        ),
        ("tests/test_ask_stdin.py",),
    ),
    Sabotage(
        "import: a file with no tensors or tokens taken as a model",
        (Edit("huozi_local/core/fetch/adopt.py", "    gguf.check_is_model()", "    pass"),),
        ("tests/test_crafted_headers.py",),
    ),
    Sabotage(
        "download: an idle connection stops while a range may still be given back",
        (
            Edit(
                "huozi_local/core/fetch/parallel.py",
                "task = self.queue.take(self._stop.is_set)",
                "task = self.queue.take()",
            ),
        ),
        ("tests/test_parallel_give_back.py", "tests/test_byte_ranges.py"),
    ),
    Sabotage(
        "rpc: a worker that owes a reply and says nothing is waited on for ever",
        (
            Edit(
                "huozi_local/core/devices/rpc_relay.py",
                "if owed is not None and waited > self.relay.timeout:",
                "if False:",
            ),
        ),
        (
            "tests/test_rpc_faults.py::"
            "test_a_worker_that_stalls_hangs_up_or_answers_garbage_is_one_line_and_exit_2",
        ),
    ),
    Sabotage(
        "rpc: a lost worker aborts the process instead of ending in one line",
        (
            Edit(
                "huozi_local/core/devices/rpc_guard.py",
                "    threading.Event().wait()  # park this thread for good; abort() never runs\n",
                "",
            ),
        ),
        (
            "tests/test_rpc_faults.py::"
            "test_a_worker_that_stalls_hangs_up_or_answers_garbage_is_one_line_and_exit_2",
        ),
    ),
    Sabotage(
        "worker: an idle client keeps every other one out",
        (
            Edit(
                "huozi_local/core/devices/worker_front.py",
                "if self._waiting and self.idle_timeout > 0 and idle >= self.idle_timeout:",
                "if False:",
            ),
        ),
        ("tests/test_rpc_faults.py::test_an_idle_client_gives_way_to_one_that_waits",),
    ),
    Sabotage(
        "app: a reply that ends before its view is shown ends into nothing",
        (
            Edit(
                "huozi_local/tui/screens/chat.py",
                "        await self._reply_shown.wait()\n",
                "",
            ),
        ),
        ("tests/tui/test_remote_app.py",),
    ),
)


def copy_tree(destination: Path) -> None:
    """The working tree as git sees it (tracked and new files, nothing ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def run_tests(copy: Path, tests: tuple[str, ...], env: dict[str, str]) -> tuple[bool, str]:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
        cwd=copy, env=env, capture_output=True, text=True,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return done.returncode == 0, lines[-1] if lines else done.stderr.strip()[-200:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only the sabotages whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the sabotages and stop")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unbroken runs")
    args = parser.parse_args(argv)
    chosen = [s for s in SABOTAGES if args.k.lower() in s.name.lower()]
    if args.list or not chosen:
        for sabotage in chosen or SABOTAGES:
            print(f"{sabotage.name}  [{', '.join(e.path for e in sabotage.edits)}]")
        return 0 if chosen else 2
    with tempfile.TemporaryDirectory(prefix="huozi-mutation-") as work:
        copy = Path(work) / "project"
        copy_tree(copy)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(copy), os.environ.get("PYTHONPATH", "")]),
            "PYTHONDONTWRITEBYTECODE": "1",  # a restored file must never run a stale .pyc
            "HUOZI_TINY_MODELS_DIR": os.environ.get("HUOZI_TINY_MODELS_DIR")
            or str(Path(work) / "tiny-models"),
        }
        where = subprocess.run(
            [sys.executable, "-c", "import huozi_local; print(huozi_local.__file__)"],
            cwd=copy, env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        if not Path(where).resolve().is_relative_to(copy.resolve()):
            print(f"the copy's tests would import {where}, not the copy", file=sys.stderr)
            return 2
        if not args.no_baseline:
            needed = tuple(dict.fromkeys(t for s in chosen for t in s.tests))
            passed, summary = run_tests(copy, needed, env)
            print(f"baseline, nothing broken: {summary}")
            if not passed:
                print("the tests fail unbroken: fix that first", file=sys.stderr)
                return 2
        survived = []
        for sabotage in chosen:
            originals = {edit.path: (copy / edit.path).read_text(encoding="utf-8")
                         for edit in sabotage.edits}  # fmt: skip
            for edit in sabotage.edits:
                target = copy / edit.path
                text = target.read_text(encoding="utf-8")
                if text.count(edit.old) != 1:
                    print(f"'{sabotage.name}': its text is not in {edit.path} exactly once; "
                          "update the entry", file=sys.stderr)  # fmt: skip
                    for path, original in originals.items():
                        (copy / path).write_text(original, encoding="utf-8")
                    return 2
                target.write_text(text.replace(edit.old, edit.new), encoding="utf-8")
            started = time.monotonic()
            try:
                passed, summary = run_tests(copy, sabotage.tests, env)
            finally:
                for path, original in originals.items():
                    (copy / path).write_text(original, encoding="utf-8")
            verdict = "SURVIVED" if passed else "caught"
            print(f"{verdict:8}  {sabotage.name}  ({time.monotonic() - started:.0f} s: {summary})")
            if passed:
                survived.append(sabotage.name)
    print(f"{len(chosen) - len(survived)} of {len(chosen)} caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
