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
from huozi_local.core.errors import ContextTooSmall

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
    """Drop the oldest whole turns until the prompt and the reply reserve fit in `n_ctx`.

    In one pass, whatever the conversation's length: the whole prompt is tokenized once (most
    conversations fit and stop there); when it does not fit, each turn is tokenized on its own,
    newest first, only until the budget is spent, and the oldest turns are dropped by those
    cumulative counts. Re-tokenizing the remainder once per dropped turn, as before, was
    quadratic: a 2000-turn conversation held the server's only generation worker for minutes.
    The kept prompt (and the one with one more turn) is tokenized once more to be exact; should a
    template not add up turn by turn, a binary search over where to start settles it in a
    logarithmic number of steps.
    """
    reserve = reply_reserve(n_ctx, max_tokens)
    head, turns = split_turns(messages)

    def prompt_from(first_kept: int) -> list[int]:
        return tokens_of([*head, *[m for turn in turns[first_kept:] for m in turn]])

    budget = n_ctx - reserve
    kept_from = 0
    tokens = prompt_from(0)
    if len(tokens) > budget and len(turns) > 1:
        kept_from = _first_turn_that_fits(head, turns, tokens_of, budget)
        tokens = prompt_from(kept_from)
        if len(tokens) > budget:  # the template costs more than its turns: start later
            if kept_from < len(turns) - 1:
                found = _search_first_fitting(kept_from + 1, len(turns) - 1, prompt_from, budget)
                kept_from, tokens = found or (len(turns) - 1, prompt_from(len(turns) - 1))
        elif kept_from > 0 and len(one_more := prompt_from(kept_from - 1)) <= budget:
            # ... or less (a system message folded into the first turn): start earlier
            found = _search_first_fitting(0, kept_from - 2, prompt_from, budget)
            kept_from, tokens = found or (kept_from - 1, one_more)
    if len(tokens) + MIN_REPLY_TOKENS > n_ctx:
        raise _too_long(head, tokens_of, len(tokens), n_ctx)
    kept = [*head, *[m for turn in turns[kept_from:] for m in turn]]
    dropped = sum(len(turn) for turn in turns[:kept_from])
    return FittedPrompt(kept, tokens, dropped)


def _too_long(
    head: list[ChatMessage],
    tokens_of: Callable[[list[ChatMessage]], list[int]],
    prompt_tokens: int,
    n_ctx: int,
) -> ContextTooSmall:
    """Name what does not fit: the system prompt is never dropped, so when it alone leaves no
    room for a reply, calling the (perhaps one-word) question "the last message" sent people
    shortening the wrong text."""
    if not head:
        return ContextTooSmall(
            f"the last message is too long for the context window ({prompt_tokens} prompt "
            f"tokens, context {n_ctx})"
        )
    system = len(tokens_of(head))
    if system + MIN_REPLY_TOKENS > n_ctx:
        return ContextTooSmall(
            f"the system prompt is too long for the context window ({system} tokens, "
            f"context {n_ctx})"
        )
    return ContextTooSmall(
        f"the last message is too long for the context window ({prompt_tokens} prompt tokens, "
        f"{system} of them the system prompt, context {n_ctx})"
    )


def _first_turn_that_fits(
    head: list[ChatMessage],
    turns: list[list[ChatMessage]],
    tokens_of: Callable[[list[ChatMessage]], list[int]],
    budget: int,
) -> int:
    """The oldest turn to keep, by each turn's own token count added newest first.

    A turn's count is what it adds to the bare prompt (system message and generation prompt),
    so each tokenization is as small as the turn. The newest turn is always kept.
    """
    base = len(tokens_of(list(head)))
    used = base
    first = len(turns) - 1
    for index in range(len(turns) - 1, -1, -1):
        used += len(tokens_of([*head, *turns[index]])) - base
        if used > budget and index < len(turns) - 1:
            return index + 1
        first = index
    return first


def _search_first_fitting(
    low: int, high: int, prompt_from: Callable[[int], list[int]], budget: int
) -> tuple[int, list[int]] | None:
    """The smallest start in [low, high] whose prompt fits `budget`, by bisection (a later
    start never makes the prompt longer); None when none does."""
    best: tuple[int, list[int]] | None = None
    while low <= high:
        middle = (low + high) // 2
        tokens = prompt_from(middle)
        if len(tokens) <= budget:
            best = (middle, tokens)
            high = middle - 1
        else:
            low = middle + 1
    return best
