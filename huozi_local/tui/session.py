"""The conversation being chatted in: history from the store, replies from a backend.

This is the app-service layer between the screens and the core. It imports no Textual, so the
rules (what a regenerate drops, what an edit replaces, when a reply is committed) are plain Python
that runs the same in a worker thread, a test, or a benchmark.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from huozi_local.core.chat.types import (
    ChatBackend,
    ChatMessage,
    ReplyEvent,
    ReplyResult,
    SamplingOptions,
)
from huozi_local.core.config import Settings
from huozi_local.core.errors import HuoziError
from huozi_local.core.store.conversations import ConversationStore, StoredMessage

ModelLocation = Literal["local", "remote"]
"""A model this app loaded from a file, or one an OpenAI-compatible server runs (`--endpoint`)."""


@dataclass
class ModelInfo:
    """What the status bar says about the loaded model."""

    label: str
    quant: str = ""
    n_gpu_layers: int = 0
    n_ctx: int = 0
    location: ModelLocation = "local"
    """A remote model has no file here, so settings never reload it."""
    n_cpu_moe: int = 0
    """MoE layers whose experts stay in RAM (llama.cpp's --n-cpu-moe)."""


@dataclass
class ReplyStats:
    context_used: int = 0
    tokens_per_s: float = 0.0
    stop_reason: str = ""


class ChatSession:
    """One open conversation over one backend; thread-safe through the store's own lock."""

    def __init__(
        self,
        store: ConversationStore,
        backend: ChatBackend,
        settings: Settings,
        model: ModelInfo,
    ) -> None:
        self.store = store
        self.backend = backend
        self.settings = settings
        self.model = model
        self.conversation_id: int | None = None
        self.last_stats = ReplyStats()
        self.save_error: str | None = None
        """Why the last reply could not be stored (locked or read-only database), if it could
        not: the reply is still shown, and the screen tells the user once."""

    # -- which conversation ------------------------------------------------------------------

    def open(self, conversation_id: int | None) -> list[StoredMessage]:
        self.conversation_id = conversation_id
        self.last_stats = ReplyStats()
        if conversation_id is None:
            return []
        messages = self.store.messages(conversation_id)
        for message in reversed(messages):
            if message.role == "assistant" and message.meta:
                self.last_stats = _stats_from_meta(message.meta)
                break
        return messages

    def messages(self) -> list[StoredMessage]:
        return [] if self.conversation_id is None else self.store.messages(self.conversation_id)

    # -- turns -------------------------------------------------------------------------------

    def add_user_message(self, text: str) -> StoredMessage:
        """Commit the user's message at once (a crash later never loses what they typed)."""
        if self.conversation_id is None:
            conversation = self.store.create_conversation(model=self.model.label)
            self.conversation_id = conversation.id
        return self.store.add_message(self.conversation_id, "user", text)

    def drop_last_reply(self) -> bool:
        """Before a regenerate: forget the newest reply so the model answers the same turn."""
        last = self._last()
        if last is None or last.role != "assistant":
            return last is not None and last.role == "user"
        assert self.conversation_id is not None
        self.store.delete_last_message(self.conversation_id)
        return True

    def edit_last_user_message(self, text: str) -> StoredMessage:
        """Replace the newest user message (and drop the reply to it) before resending."""
        self.drop_last_reply()
        last = self._last()
        if last is None or last.role != "user":
            raise HuoziError("there is no message of yours to edit yet")
        assert self.conversation_id is not None
        return self.store.update_last_message(self.conversation_id, text)

    def last_user_text(self) -> str | None:
        for message in reversed(self.messages()):
            if message.role == "user":
                return message.content
        return None

    def prompt(self) -> list[ChatMessage]:
        history = [m.as_chat() for m in self.messages()]
        system = self.settings.system_prompt.strip()
        return ([ChatMessage("system", system)] if system else []) + history

    def sampling(self) -> SamplingOptions:
        s = self.settings
        return SamplingOptions(
            temperature=s.temperature,
            top_p=s.top_p,
            repeat_penalty=s.repeat_penalty,
            max_tokens=s.max_tokens,
            seed=None if s.seed < 0 else s.seed,
        )

    def stream_reply(self, cancel: threading.Event | None = None) -> Iterator[ReplyEvent]:
        """Stream the backend's reply and commit it when it ends, also when it was stopped.

        Runs in a worker thread: the caller forwards events to the UI, nothing here draws.
        """
        if self.conversation_id is None:
            raise HuoziError("nothing to reply to yet")
        conversation_id = self.conversation_id
        for event in self.backend.stream_reply(self.prompt(), self.sampling(), cancel):
            if isinstance(event, ReplyResult):
                meta = {
                    "stop_reason": event.stop_reason,
                    "prompt_tokens": event.prompt_tokens,
                    "evaluated_prompt_tokens": event.evaluated_prompt_tokens,
                    "restored_prompt_tokens": event.restored_prompt_tokens,
                    "completion_tokens": event.completion_tokens,
                    "tokens_per_s": round(event.tokens_per_s, 2),
                    "model": event.model,
                }
                if event.text:
                    try:
                        self.store.add_message(conversation_id, "assistant", event.text, meta=meta)
                        self.save_error = None
                    except HuoziError as exc:
                        self.save_error = str(exc)
                self.last_stats = _stats_from_meta(meta)
            yield event

    def _last(self) -> StoredMessage | None:
        if self.conversation_id is None:
            return None
        return self.store.last_message(self.conversation_id)


def _stats_from_meta(meta: Mapping[str, object]) -> ReplyStats:
    def number(key: str) -> float:
        value = meta.get(key, 0)
        return float(value) if isinstance(value, (int, float)) else 0.0

    return ReplyStats(
        context_used=int(number("prompt_tokens") + number("completion_tokens")),
        tokens_per_s=number("tokens_per_s"),
        stop_reason=str(meta.get("stop_reason", "")),
    )
