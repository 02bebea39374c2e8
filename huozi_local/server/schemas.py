"""OpenAI request bodies turned into our chat types, and every refusal into an OpenAI error body.

Clients (the `openai` package, editors, the model README's Gradio page) rely on OpenAI's exact error
shape to show a useful message, so validation raises `APIError` carrying status, message and the
offending parameter rather than letting a KeyError become a 500. Fields vLLM accepts for huozi
(`stop_token_ids`, `repetition_penalty`, `top_k`, `min_p`) are honoured too, because the model's
README sends them. Unknown fields are ignored, as vLLM and llama-server do.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from typing import Any

from huozi_local.core.chat.types import ChatMessage, SamplingOptions, normalize_role
from huozi_local.core.config import MAX_SEED
from huozi_local.core.errors import HuoziError

MAX_CHOICES = 8
MAX_STOP_STRINGS = 16
MAX_MESSAGES = 10_000
"""More messages than any context holds: a longer request is refused before it is tokenized."""


class APIError(Exception):
    """A request refused with an OpenAI-style error body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        *,
        code: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[ChatMessage, ...]
    sampling: SamplingOptions
    stream: bool
    include_usage: bool
    n: int
    model: str | None


@dataclass(frozen=True)
class CompletionRequest:
    prompt: str
    sampling: SamplingOptions
    stream: bool
    include_usage: bool
    n: int
    model: str | None
    echo: bool


def decode_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 for bytes that are not UTF-8, invalid or too deeply
    nested JSON (a RecursionError was a plain-text 500), strings holding lone surrogates
    (`"\\udcff"` is valid JSON but not text: it failed as a 500 in the tokenizer), and integers
    longer than Python converts (4300 digits by default: its ValueError was a plain-text 500)."""
    try:
        data = json.loads(raw.decode("utf-8"))
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(400, f"request body is not valid UTF-8 (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}") from exc
    except UnicodeEncodeError as exc:
        raise APIError(
            400, "request body holds a string with a lone surrogate (\\ud800-\\udfff): not text"
        ) from exc
    except RecursionError as exc:
        raise APIError(400, "request body is nested too deeply") from exc
    except ValueError as exc:
        # After its subclasses above: what is left is int()'s digit limit, hit while parsing.
        raise APIError(
            400, f"request body holds an integer longer than {_max_int_digits()} digits"
        ) from exc
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object")
    return data


def _max_int_digits() -> int:
    # sys.get_int_max_str_digits exists from Python 3.10.7 on, with the limit itself.
    return int(getattr(sys, "get_int_max_str_digits", lambda: 4300)())


def parse_chat_request(body: dict[str, Any], defaults: SamplingOptions) -> ChatRequest:
    raw_messages = body.get("messages")
    if raw_messages is None:
        raise APIError(400, "'messages' is a required property", param="messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise APIError(400, "'messages' must be a non-empty array", param="messages")
    if len(raw_messages) > MAX_MESSAGES:
        raise APIError(
            400,
            f"'messages' holds {len(raw_messages)} messages, more than the {MAX_MESSAGES} "
            "this server accepts",
            param="messages",
            code="too_many_messages",
        )
    messages = tuple(_parse_message(item, index) for index, item in enumerate(raw_messages))
    return ChatRequest(
        messages=messages,
        sampling=parse_sampling(body, defaults),
        stream=_optional_bool(body, "stream", False),
        include_usage=_include_usage(body),
        n=_choices(body),
        model=_optional_str(body, "model"),
    )


def parse_completion_request(body: dict[str, Any], defaults: SamplingOptions) -> CompletionRequest:
    prompt = body.get("prompt")
    if prompt is None:
        raise APIError(400, "'prompt' is a required property", param="prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise APIError(
            400, "'prompt' must be a string (token arrays and batches are not served)", "prompt"
        )
    return CompletionRequest(
        prompt=prompt,
        sampling=parse_sampling(body, defaults),
        stream=_optional_bool(body, "stream", False),
        include_usage=_include_usage(body),
        n=_choices(body),
        model=_optional_str(body, "model"),
        echo=_optional_bool(body, "echo", False),
    )


def parse_sampling(body: dict[str, Any], defaults: SamplingOptions) -> SamplingOptions:
    """The server's defaults (the model's own, not OpenAI's temperature 1) with the request's
    overrides."""
    changes: dict[str, Any] = {}
    temperature = _optional_number(body, "temperature", 0.0, 2.0)
    if temperature is not None:
        changes["temperature"] = temperature
    top_p = _optional_number(body, "top_p", 0.0, 1.0)
    if top_p is not None:
        changes["top_p"] = top_p
    min_p = _optional_number(body, "min_p", 0.0, 1.0)
    if min_p is not None:
        changes["min_p"] = min_p
    top_k = _optional_int(body, "top_k", -1, None)
    if top_k is not None:
        changes["top_k"] = max(top_k, 0)
    # vLLM's name (the README) and llama.cpp's name for the same knob.
    for name in ("repetition_penalty", "repeat_penalty"):
        penalty = _optional_number(body, name, 0.0, None, exclusive_min=True)
        if penalty is not None:
            changes["repeat_penalty"] = penalty
    max_tokens = _optional_int(body, "max_tokens", 1, None)
    if max_tokens is None:
        max_tokens = _optional_int(body, "max_completion_tokens", 1, None)
    if max_tokens is not None:
        changes["max_tokens"] = max_tokens
    # The range config.toml and --seed are held to: past it a seed would wrap around to another
    # (2**32 + 5 is 5) or mean "random" (4294967295, llama.cpp's LLAMA_DEFAULT_SEED).
    seed = _optional_int(body, "seed", None, None)
    if seed is not None and not -1 <= seed <= MAX_SEED:
        message = f"'seed' must be -1 (random) or between 0 and {MAX_SEED}, got {_shown(seed)}"
        raise APIError(400, message, param="seed")
    if seed is not None:
        changes["seed"] = seed
    stop = _stop_strings(body)
    if stop is not None:
        changes["stop"] = stop
    stop_ids = _stop_token_ids(body)
    if stop_ids is not None:
        changes["stop_token_ids"] = stop_ids
    for name in ("presence_penalty", "frequency_penalty"):
        _optional_number(body, name, -2.0, 2.0)  # validated for the client's sake, then unused
    return dataclasses.replace(defaults, **changes)


def _parse_message(item: object, index: int) -> ChatMessage:
    where = f"messages[{index}]"
    if not isinstance(item, dict):
        raise APIError(400, f"{where} must be an object with 'role' and 'content'", param=where)
    role = item.get("role")
    if not isinstance(role, str):
        raise APIError(400, f"{where}.role must be a string", param=f"{where}.role")
    try:
        canonical = normalize_role(role)
    except HuoziError as exc:
        raise APIError(400, f"{where}.role: {exc}", param=f"{where}.role") from exc
    return ChatMessage(canonical, _message_text(item.get("content"), where))


def _message_text(content: object, where: str) -> str:
    """Plain strings, or OpenAI's content-part arrays as long as every part is text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise APIError(
                    400, f"{where}.content: only text parts are supported", f"{where}.content"
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise APIError(400, f"{where}.content: text must be a string", f"{where}.content")
            texts.append(text)
        return "".join(texts)
    raise APIError(400, f"{where}.content must be a string", param=f"{where}.content")


def _type_error(name: str, expected: str, value: object) -> APIError:
    return APIError(400, f"'{name}' must be {expected}, got {_shown(value)}", param=name)


def _shown(value: object) -> str:
    shown = json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= 80 else shown[:80] + "…"  # never echo a huge value back


def _optional_bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _type_error(name, "a boolean", value)
    return value


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _type_error(name, "a string", value)
    return value


def _optional_number(
    body: dict[str, Any],
    name: str,
    low: float | None,
    high: float | None,
    *,
    exclusive_min: bool = False,
) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
        raise _type_error(name, "a number", value)
    if isinstance(value, int) and not _fits_float(value):
        raise APIError(400, f"'{name}' is out of range: {_shown(value)}", param=name)
    too_low = low is not None and (value <= low if exclusive_min else value < low)
    if too_low or (high is not None and value > high):
        bounds = f"{'above' if exclusive_min else 'at least'} {low}" if low is not None else ""
        if high is not None:
            bounds = f"between {low} and {high}" if low is not None else f"at most {high}"
        raise APIError(400, f"'{name}' must be {bounds}, got {_shown(value)}", param=name)
    return float(value)


def _finite(value: float) -> bool:
    return isinstance(value, int) or math.isfinite(value)


def _fits_float(value: int) -> bool:
    """Whether float() takes it: math.isfinite(10**400) raised OverflowError, a plain-text 500."""
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _optional_int(body: dict[str, Any], name: str, low: int | None, high: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(name, "an integer", value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise APIError(400, f"'{name}' is out of range: {_shown(value)}", param=name)
    return value


def _choices(body: dict[str, Any]) -> int:
    n = _optional_int(body, "n", 1, MAX_CHOICES)
    return 1 if n is None else n


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise _type_error("stream_options", "an object", options)
    return _optional_bool(options, "include_usage", False)


def _stop_strings(body: dict[str, Any]) -> tuple[str, ...] | None:
    value = body.get("stop")
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise _type_error("stop", "a string or an array of strings", value)
    if len(value) > MAX_STOP_STRINGS:
        raise APIError(400, f"'stop' holds at most {MAX_STOP_STRINGS} strings", param="stop")
    return tuple(s for s in value if s)


def _stop_token_ids(body: dict[str, Any]) -> tuple[int, ...] | None:
    value = body.get("stop_token_ids")
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value
    ):
        raise _type_error("stop_token_ids", "an array of token ids", value)
    return tuple(value)
