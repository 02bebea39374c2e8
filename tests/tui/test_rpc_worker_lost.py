"""The chat app on an RPC worker's device, and that worker going away in the middle of a reply.

Runs in a child process: ggml's device registry cannot forget a worker, and this one is killed.
The child starts the worker, plans and loads through the app's own path (plan_file with the
machine that now lists the worker, load_local with its measured fit), drives the app with
Pilot, and prints what it saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from huozi_local.testing.tiny_model import TinyModels

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import asyncio, json, sys
sys.path.insert(0, tests_tui)
from pathlib import Path
from tui_helpers import wait_for
from huozi_local.core.config import Paths, Settings
from huozi_local.core.devices import ggml
from dataclasses import replace
from huozi_local.core.planning.build_info import probe_build
from huozi_local.core.planning.hardware import GiB, Machine, rpc_gpus
from huozi_local.testing.rpc_worker import RpcWorker
from huozi_local.tui.app import create_app
from huozi_local.tui.model_choice import load_local, plan_file
from huozi_local.tui.widgets.chat_input import ChatInput

async def main():
    seen = {}
    with RpcWorker() as worker:
        ggml.add_rpc_servers([worker.endpoint])  # what `tui --rpc` does before the app opens
        settings = Settings(n_ctx=2048, temperature=0.0, max_tokens=100000)
        build = probe_build()  # the real build (it must reach the worker); no local GPU counted
        machine = replace(Machine.synthetic("cpu", 0, 24 * GiB, cores=2), build=build,
                          gpus=tuple(rpc_gpus(build)))
        planned = plan_file(Path(model), label="tiny-huozi", quant="q4_0", spec=model,
                            settings=settings, machine=machine)
        plan = planned.plan
        seen["plan"] = [plan.backend, plan.n_gpu_layers, plan.n_layers]
        loaded = load_local(planned, machine)
        app = create_app(settings=settings, paths=Paths.from_env(), backend=loaded.backend,
                         model_info=loaded.info(planned))
        async with app.run_test(size=(100, 30), notifications=True) as pilot:
            screen = app.screen

            async def send(text):
                prompt = screen.query_one(ChatInput)
                prompt.focus()
                prompt.insert(text)
                await pilot.press("enter")

            await send("你好")
            await wait_for(pilot, lambda: screen.stream_writes >= 3, "a reply under way")
            worker.stop()
            await wait_for(pilot, lambda: screen.replies_finished == 1, "the reply's end")
            await send("还在吗")
            await wait_for(pilot, lambda: screen.replies_finished == 2, "the second turn")
            seen["notices"] = [str(n.message) for n in app._notifications]
            seen["transcript"] = [(v.role, v.text) for v in screen.message_views()]
            seen["running"] = app.is_running
            await pilot.press("ctrl+q")
    print(json.dumps(seen, ensure_ascii=False))

asyncio.run(main())
"""


@pytest.mark.slow
def test_a_lost_worker_ends_the_reply_with_a_notice_and_the_app_goes_on(
    tiny_models: TinyModels, huozi_home: Path
) -> None:
    model = tiny_models.get("merged", "q4_0", "loop")
    prelude = f"model = {str(model)!r}\ntests_tui = {str(Path(__file__).parent)!r}\n"
    env = {
        **os.environ,
        "HUOZI_HOME": str(huozi_home),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(CHILD)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["plan"] == ["rpc", 5, 4]  # the worker's device took every layer and the output
    lost = [n for n in seen["notices"] if "the RPC worker went away" in n]
    assert len(lost) == 2, seen["notices"]  # the reply, then the next turn, each said why
    assert seen["running"]
    assert [role for role, _ in seen["transcript"]] == ["user", "user"]
