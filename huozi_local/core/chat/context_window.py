"""What to do when a conversation outgrows the model's context window.

Policy: the system message stays (it defines the assistant); the oldest whole turns (a user
message and the replies to it) are left out of the prompt until the prompt plus a reserve for the
reply fits. The latest turn is never dropped: when it alone does not fit, the caller is told in one
line (`HuoziError`) before anything is generated, since a reply to a truncated question is worse
than no reply. Nothing is deleted from the conversation itself; only the prompt is shortened.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from huozi_local.core.chat.types import ChatMessage
from huozi_local.core.errors import HuoziError

# Below this many free tokens a reply is not worth starting.
MIN_REPLY_TOKENS = 16


def reply_reserve(n_ctx: int, max_tokens: int) -> int:
    """Room kept for the reply when trimming: a quarter of the context, at most max_tokens."""
    return max(MIN_REPLY_TOKENS, min(max_tokens, n_ctx // 4))


@dataclass(frozen=True)
class FittedPrompt:
    messages: list[ChatMessage]
    tokens: list[int]
    dropped_messages: int


def split_turns(
    messages: Sequence[ChatMessage],
) -> tuple[list[ChatMessage], list[list[ChatMessage]]]:
    """Leading system messages, then turns: each starts at a user message."""
    head: list[ChatMessage] = []
    turns: list[list[ChatMessage]] = []
    for message in messages:
        if message.role == "system" and not turns:
            head.append(message)
        elif message.role == "user" or not turns:
            turns.append([message])
        else:
            turns[-1].append(message)
    return head, turns


def fit_to_context(
    messages: Sequence[ChatMessage],
    tokens_of: Callable[[list[ChatMessage]], list[int]],
    n_ctx: int,
    max_tokens: int,
) -> FittedPrompt:
    """Drop the oldest whole turns until the prompt and the reply reserve fit in `n_ctx`."""
    reserve = reply_reserve(n_ctx, max_tokens)
    head, turns = split_turns(messages)
    kept_from = 0
    tokens = tokens_of([*head, *[m for turn in turns for m in turn]])
    while len(tokens) + reserve > n_ctx and kept_from < len(turns) - 1:
        kept_from += 1
        tokens = tokens_of([*head, *[m for turn in turns[kept_from:] for m in turn]])
    if len(tokens) + MIN_REPLY_TOKENS > n_ctx:
        raise HuoziError(
            f"the last message is too long for the context window ({len(tokens)} prompt tokens, "
            f"context {n_ctx}): shorten it or load the model with a larger --ctx"
        )
    kept = [*head, *[m for turn in turns[kept_from:] for m in turn]]
    dropped = sum(len(turn) for turn in turns[:kept_from])
    return FittedPrompt(kept, tokens, dropped)
