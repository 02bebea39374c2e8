"""A seed is one only up to 4294967294: llama.cpp keeps seeds in a uint32_t whose top value,
4294967295 (LLAMA_DEFAULT_SEED), means "draw a random one", and a larger request seed wrapped
around onto another (2**32 + 5 sampled as 5). Each way a seed enters refuses those values, in
one line or an OpenAI-style 400, rather than silently not repeating a reply."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from api_server import RunningServer, running_server
from cli_process import cli

from huozi_local.core.chat.engine import LlamaEngine
from huozi_local.core.chat.loader import LoadOptions
from huozi_local.core.config import Paths, Settings
from huozi_local.core.errors import HuoziError
from huozi_local.testing.tiny_model import TinyModels

pytestmark = pytest.mark.slow
RANDOM_SEED = 4294967295


@pytest.fixture(scope="module")
def server(tiny_models: TinyModels) -> Iterator[RunningServer]:
    engine = LlamaEngine.load(
        tiny_models.get("merged", "q4_0", rig="chat"), LoadOptions(n_ctx=512, seed=1)
    )
    try:
        with running_server(engine) as running:
            yield running
    finally:
        engine.close()


def post_seed(server: RunningServer, seed: int) -> tuple[int, dict[str, object]]:
    parts = urlsplit(server.url)
    body = {"messages": [{"role": "user", "content": "你好"}], "max_tokens": 2, "seed": seed}
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=120)
    try:
        headers = {"Content-Type": "application/json"}
        connection.request("POST", parts.path + "/chat/completions", json.dumps(body), headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("seed", [RANDOM_SEED, 2**32 + 5, -5])
def test_a_request_seed_that_is_no_seed_gets_a_400_naming_it(
    server: RunningServer, seed: int
) -> None:
    status, body = post_seed(server, seed)
    error = body["error"]
    assert status == 400 and isinstance(error, dict), body
    assert error["param"] == "seed" and "4294967294" in str(error["message"])


@pytest.mark.parametrize("seed", [-1, 0, RANDOM_SEED - 1])
def test_request_seeds_at_the_ends_of_the_range_are_served(
    server: RunningServer, seed: int
) -> None:
    status, body = post_seed(server, seed)
    assert status == 200, body


@pytest.mark.parametrize("command", [["ask", "你好"], ["chat"]])
def test_seed_4294967295_on_the_command_line_is_one_line_and_exit_2(
    tiny_models: TinyModels, huozi_home: Path, command: list[str]
) -> None:
    model = tiny_models.get("merged", "q4_0", rig="chat")
    done = cli(*command, "--model", str(model), "--seed", str(RANDOM_SEED), home=huozi_home)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and "--seed" in done.stderr, done.stderr
    assert "4294967294" in done.stderr and "Traceback" not in done.stderr


def test_seed_4294967295_in_config_is_refused_on_load(huozi_home: Path) -> None:
    path = Paths.from_env().config_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"seed = {RANDOM_SEED}\n", encoding="utf-8")
    with pytest.raises(HuoziError) as caught:
        Settings.load(path)
    assert "'seed'" in str(caught.value) and "4294967294" in str(caught.value)
