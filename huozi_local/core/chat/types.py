"""The small vocabulary every chat front end speaks: messages, sampling, reply events.

A `ChatBackend` streams a reply to a list of messages, exactly those it is given: the conversation
(the app's session, the terminal chat, the server's request) owns the system prompt. The local
llama.cpp engine and a remote OpenAI-compatible endpoint implement it (tests drive both for real),
so the terminal chat, the TUI and the server never care which one they drive (the backend
protocol of simonw/llm).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from huozi_local.core import huozi

if TYPE_CHECKING:
    from huozi_local.core.config import Settings

Role = Literal["system", "user", "assistant"]
StopReason = Literal["stop", "length", "cancelled"]

HUOZI_ROLE_NAMES: dict[Role, str] = {
    "system": huozi.ROLE_SYSTEM,
    "user": huozi.ROLE_USER,
    "assistant": huozi.ROLE_ASSISTANT,
}
"""Each role as the huozi template writes it (系统/用户/助手): the one map between the two."""

_ROLE_BY_NAME: dict[str, Role] = {
    **{role: role for role in HUOZI_ROLE_NAMES},
    **{name: role for role, name in HUOZI_ROLE_NAMES.items()},
}


def normalize_role(role: str) -> Role:
    """Accept OpenAI roles and the huozi Chinese roles (系统/用户/助手)."""
    from huozi_local.core.errors import HuoziError

    canonical = _ROLE_BY_NAME.get(role.strip().lower() if role.isascii() else role.strip())
    if canonical is None:
        raise HuoziError(f"unknown role '{role}' (use system/user/assistant or 系统/用户/助手)")
    return canonical


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str

    @classmethod
    def of(cls, role: str, content: str) -> ChatMessage:
        return cls(normalize_role(role), content)


@dataclass(frozen=True)
class SamplingOptions:
    """Defaults are the model README's (huozi.DEFAULT_*); top_k and min_p are llama.cpp's."""

    temperature: float = huozi.DEFAULT_TEMPERATURE
    top_p: float = huozi.DEFAULT_TOP_P
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = huozi.DEFAULT_REPEAT_PENALTY
    max_tokens: int = huozi.DEFAULT_MAX_TOKENS
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
    ) -> SamplingOptions:
        """The saved settings' sampling, with this run's choices (None: the setting) on top.

        A negative saved seed means a new random seed for every reply.
        """
        saved_seed = settings.seed if settings.seed >= 0 else None
        return cls(
            temperature=settings.temperature if temperature is None else temperature,
            top_p=settings.top_p,
            repeat_penalty=settings.repeat_penalty,
            max_tokens=settings.max_tokens if max_tokens is None else max_tokens,
            seed=saved_seed if seed is None else seed,
        )


@dataclass(frozen=True)
class TextDelta:
    """A piece of the reply, always whole UTF-8 characters, never a stop token."""

    text: str


@dataclass(frozen=True)
class ContextTrimmed:
    """The conversation outgrew the context; the oldest whole turns were left out of the prompt."""

    dropped_messages: int
    message: str


@dataclass(frozen=True)
class Notice:
    """Something the user should know that does not change the reply (the prompt cache could
    not save to a full disk)."""

    message: str


@dataclass(frozen=True)
class ReplyResult:
    """The last event of every reply."""

    text: str
    stop_reason: StopReason
    prompt_tokens: int
    evaluated_prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    tokens_per_s: float
    model: str
    dropped_messages: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    restored_prompt_tokens: int = 0
    """Prompt tokens the prompt cache restored instead of evaluating (a part of those not
    evaluated; the rest of them were still in the live KV cache)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ReplyEvent = TextDelta | ContextTrimmed | Notice | ReplyResult


@runtime_checkable
class ChatBackend(Protocol):
    """Anything that can answer a conversation, one reply at a time."""

    @property
    def model_name(self) -> str: ...

    @property
    def n_ctx(self) -> int: ...

    def stream_reply(
        self,
        messages: Sequence[ChatMessage],
        sampling: SamplingOptions | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[ReplyEvent]:
        """Yield TextDelta/ContextTrimmed/Notice events, then exactly one ReplyResult.

        `messages` is the whole prompt: a system message is the caller's to include.
        """
        ...

    def close(self) -> None:
        """Let go of the model or the connection; the backend is not used afterwards."""
        ...


def collect_reply(events: Iterator[ReplyEvent]) -> ReplyResult:
    """Drain a reply stream and return its result (for callers that do not stream)."""
    result: ReplyResult | None = None
    for event in events:
        if isinstance(event, ReplyResult):
            result = event
    if result is None:
        raise RuntimeError("backend ended a reply without a result")
    return result
