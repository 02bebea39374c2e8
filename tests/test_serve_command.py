"""`huozi-local serve` as a user runs it: a real process, a real port, Ctrl-C to stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from api_server import huozi_roles
from cli_process import cli

from huozi_local.testing.tiny_model import TinyModels

pytestmark = pytest.mark.slow


def _serve(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "huozi_local", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_serves_until_ctrl_c(tiny_models, huozi_home: Path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_models.get("merged", "q4_0", rig="chat")
    process = _serve("--model", str(model), "--host", "0.0.0.0", "--port", "0", "--temp", "0")
    try:
        assert process.stderr is not None
        lines: list[str] = []
        for line in process.stderr:
            lines.append(line)
            if "serving" in line:
                break
        assert any("warning" in line and "--api-key" in line for line in lines), lines
        url = lines[-1].split(" at ")[1].split()[0]
        port = url.rsplit(":", 1)[1].split("/")[0]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(
            model=client.models.list().data[0].id,
            messages=huozi_roles({"role": "用户", "content": "你好"}),
            extra_body={"stop_token_ids": [57001]},
        )
        assert reply.choices[0].message.content == "你好，龘世界！"
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert "Traceback" not in err


def test_missing_model_is_one_line(huozi_home: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "huozi_local", "serve", "--model", "/nowhere/m.gguf", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no such model file" in done.stderr


def test_busy_port_is_one_line(tiny_models, huozi_home: Path) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        model = tiny_models.get("merged", "q4_0", rig="chat")
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "huozi_local",
                "serve",
                "--model",
                str(model),
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and f"cannot listen on 127.0.0.1:{port}" in (
        done.stderr
    )


def _signal_mid_reply(model: Path, sig: signal.Signals) -> tuple[int, str]:
    """`sig` sent to a server while a reply (4000 tokens asked) is streaming: the reply must end
    with an error event rather than run on; the server's exit status and stderr."""
    process = _serve("--model", str(model), "--port", "0", "--ctx", "4096", "--temp", "0")
    try:
        assert process.stderr is not None
        url = next(line for line in process.stderr if " at http" in line).split(" at ")[1]
        client = openai.OpenAI(base_url=url.split()[0], api_key="x", max_retries=0, timeout=120)
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "go"}], max_tokens=4000, stream=True
        )
        received = 0
        with pytest.raises(openai.APIError, match="cancelled"):
            for chunk in stream:
                received += bool(chunk.choices and chunk.choices[0].delta.content)
                if received == 3:
                    process.send_signal(sig)
        _out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, err


def test_ctrl_c_mid_reply_cancels_it_and_exits(tiny_models, huozi_home: Path) -> None:  # type: ignore[no-untyped-def]
    """A reply still streaming ends with an error event, and the server exits with status 0
    instead of waiting for the reply to finish."""
    model = tiny_models.get("merged", "q4_0", rig="loop")
    returncode, err = _signal_mid_reply(model, signal.SIGINT)
    assert returncode == 0 and "Traceback" not in err
    assert "server stopped" in err


def test_sigterm_mid_reply_stops_the_server_like_ctrl_c(tiny_models, huozi_home: Path) -> None:  # type: ignore[no-untyped-def]
    """`kill`, systemd and docker stop send SIGTERM: the reply is cancelled and the server says
    it stopped and exits 0, as on Ctrl-C (on main: killed by the signal, status 143, no closing
    line, because uvicorn re-raises SIGTERM under Python's default handler)."""
    model = tiny_models.get("merged", "q4_0", rig="loop")
    returncode, err = _signal_mid_reply(model, signal.SIGTERM)
    assert returncode == 0, (returncode, err[-2000:])
    assert "Traceback" not in err and "server stopped, model released" in err


@pytest.mark.parametrize("key", ["ключ", "", " s3cret", "tab\tkey"])
def test_an_api_key_no_client_can_send_is_refused_at_start(huozi_home: Path, key: str) -> None:
    """A key an HTTP header cannot carry (non-ASCII, control characters, spaces the server
    strips) was accepted, and then every request got 401; an empty one switched the check off."""
    done = cli(
        "serve", "--model", "/nowhere/m.gguf", "--port", "0", "--api-key", key, home=huozi_home
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--api-key" in done.stderr, done.stderr


def _port(serving_line: str) -> int:
    return int(serving_line.split(" at ")[1].split()[0].rsplit(":", 1)[1].split("/")[0])


def test_host_0_binds_every_interface_and_answers_like_0_0_0_0(
    tiny_models: TinyModels, huozi_home: Path
) -> None:
    """`--host 0` is the usual shorthand for 0.0.0.0 (getaddrinfo reads it so, and the bind
    took it): a LAN client's Host header (an IP address) is answered, a DNS name is not (on
    main the Host check read "0" as a name and refused every LAN address with 400)."""
    import http.client

    model = tiny_models.get("merged", "q4_0", rig="chat")
    process = _serve("--model", str(model), "--host", "0", "--port", "0")
    try:
        assert process.stderr is not None
        line = next(line for line in process.stderr if "serving" in line)
        assert " at http://0.0.0.0:" in line, line
        port = _port(line)

        def status_for(host: str) -> int:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            connection.request("GET", "/v1/models", headers={"Host": host})
            response = connection.getresponse()
            response.read()
            connection.close()
            return response.status

        assert status_for(f"192.168.1.20:{port}") == 200
        assert status_for(f"[fe80::1]:{port}") == 200
        assert status_for(f"attacker.example:{port}") == 400
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0


def test_serve_refuses_seed_4294967295_rather_than_serve_random_replies(
    tiny_models: TinyModels, huozi_home: Path
) -> None:
    """llama.cpp reads seed 4294967295 as "random": `serve --seed 4294967295` must stop with
    one line, not serve replies that never repeat (on main it served)."""
    model = tiny_models.get("merged", "q4_0", rig="chat")
    process = _serve("--model", str(model), "--port", "0", "--seed", "4294967295")
    try:
        assert process.stderr is not None
        lines: list[str] = []
        for line in process.stderr:  # to the end, or to the line saying it serves
            lines.append(line)
            if "serving" in line:
                break
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    said = [line for line in lines if line.startswith("huozi-local:")]
    assert process.returncode == 2, lines
    assert len(said) == 1 and "--seed" in said[0] and "4294967294" in said[0], lines


def test_serve_applies_the_guard_and_cors_option(tiny_models, huozi_home: Path) -> None:  # type: ignore[no-untyped-def]
    """The command wires its --host and --cors into the app: a page's text/plain POST and a
    foreign Host are refused, the named origin alone gets CORS headers."""
    import http.client

    model = tiny_models.get("merged", "q4_0", rig="chat")
    origin = "http://localhost:5173"
    process = _serve("--model", str(model), "--port", "0", "--cors", origin)
    try:
        assert process.stderr is not None
        line = next(line for line in process.stderr if "serving" in line)
        port = int(line.split(" at ")[1].split()[0].rsplit(":", 1)[1].split("/")[0])

        def ask(headers: dict[str, str], method: str = "POST") -> http.client.HTTPResponse:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            body = b'{"messages": [{"role": "user", "content": "hi"}]}'
            connection.request(method, "/v1/chat/completions", body, headers)
            response = connection.getresponse()
            response.read()
            connection.close()
            return response

        assert ask({"Content-Type": "text/plain"}).status == 415
        assert ask({"Content-Type": "application/json", "Host": "evil.example"}).status == 400
        allowed = ask({"Content-Type": "application/json", "Origin": origin})
        assert allowed.status == 200
        assert allowed.getheader("access-control-allow-origin") == origin
        other = ask({"Content-Type": "application/json", "Origin": "https://evil.example"})
        assert other.getheader("access-control-allow-origin") is None
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0


def test_slow_clients_beyond_the_fd_limit_do_not_silence_serve(
    tiny_models: TinyModels, huozi_home: Path
) -> None:
    """`serve` at `ulimit -n 64` with 200 connections that each send half a request: /health
    is still answered and stderr stays a few lines (on main: /health timed out for everyone and
    stderr took a "Too many open files" traceback per pending connection, megabytes a second)."""
    import http.client
    import resource
    import threading

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    model = tiny_models.get("merged", "q4_0", rig="chat")
    process = subprocess.Popen(
        [sys.executable, "-m", "huozi_local", "serve", "--model", str(model), "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=low_fd_limit,
    )
    lines: list[str] = []
    attackers: list[socket.socket] = []
    try:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "serving" in line:
                break
        port = int(lines[-1].split(" at ")[1].split()[0].rsplit(":", 1)[1].split("/")[0])
        # Drained meanwhile, so a flood could not block the server on a full pipe.
        drain = threading.Thread(target=lambda: lines.extend(process.stderr or ()), daemon=True)
        drain.start()
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", port), timeout=60)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            attackers.append(sock)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("GET", "/health")
        assert connection.getresponse().status == 200
        connection.close()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        drain.join(60)
    finally:
        for sock in attackers:
            sock.close()
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert len(lines) < 30, "".join(lines[:40])
