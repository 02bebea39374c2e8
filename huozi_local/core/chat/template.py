"""Chat prompts as segments: which text is the template's own and which is what people wrote.

A prompt is not one string. Special tokens (`<|beginofutterance|>`) belong to the template; the
content of a message belongs to the user, and the same characters typed by a user must stay plain
text. So a prompt is rendered into a list of segments, and the engine tokenizes each kind its own
way (`core/chat/safe_tokenizer.py`):

- `Special`: one token id, never spelled out as text;
- `TemplateText`: the template's own text, where special-token strings are parsed;
- `RawText`: text tokenized as one fragment with special parsing off (huozi: the role line plus
  the content, exactly the run llama.cpp sees between two special tokens);
- `Reply`: an assistant message; the engine may put back the exact token ids it generated for
  that text, so re-tokenizing a reply never breaks the KV-cache prefix.

The huozi format is built directly (it is simple and must be token-exact); any other model's
embedded Jinja template is rendered in a sandbox with sentinels in place of message contents.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from huozi_local.core import huozi
from huozi_local.core.chat.types import HUOZI_ROLE_NAMES, ChatMessage
from huozi_local.core.errors import HuoziError


@dataclass(frozen=True)
class Special:
    token_id: int


@dataclass(frozen=True)
class TemplateText:
    text: str


@dataclass(frozen=True)
class RawText:
    text: str


@dataclass(frozen=True)
class Reply:
    """An assistant message: `head` (template text in the same fragment) then `content`."""

    head: str
    content: str


Segment = Special | TemplateText | RawText | Reply


def with_system_prompt(
    messages: Sequence[ChatMessage], system_prompt: str | None
) -> list[ChatMessage]:
    """The conversation with a system message first: the caller's own, else `system_prompt`.

    An empty `system_prompt` (or None) means no system message is added.
    """
    out = list(messages)
    if any(m.role == "system" for m in out):
        return out
    if system_prompt:
        out.insert(0, ChatMessage("system", system_prompt))
    return out


def huozi_segments(messages: Sequence[ChatMessage], *, add_bos: bool = True) -> list[Segment]:
    """The training template, as segments.

    Each message is `<|beginofutterance|>{role}\\n{content}<|endofutterance|>\\n`; the prompt ends
    with the generation prompt `<|beginofutterance|>助手\\n`. The text between two special tokens
    is one `RawText`, because llama.cpp tokenizes it as one fragment (with its leading space).
    """
    segments: list[Segment] = [Special(huozi.BOS_ID)] if add_bos else []
    for message in messages:
        head = HUOZI_ROLE_NAMES[message.role] + "\n"
        segments.append(Special(huozi.BEGIN_OF_UTTERANCE_ID))
        if message.role == "assistant":
            segments.append(Reply(head, message.content))
        else:
            segments.append(RawText(head + message.content))
        segments.append(Special(huozi.END_OF_UTTERANCE_ID))
        segments.append(RawText("\n"))
    segments.append(Special(huozi.BEGIN_OF_UTTERANCE_ID))
    segments.append(RawText(huozi.ROLE_ASSISTANT + "\n"))
    return segments


def render_training_template(
    messages: Sequence[ChatMessage], add_generation_prompt: bool = True
) -> str:
    """The huozi training template rendered as Hugging Face renders it (the reference text)."""
    import jinja2

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    rows = [{"role": HUOZI_ROLE_NAMES[m.role], "content": m.content} for m in messages]
    return env.from_string(huozi.CHAT_TEMPLATE).render(
        messages=rows, add_generation_prompt=add_generation_prompt
    )


def _raise_exception(message: str) -> None:
    raise HuoziError(f"the model's chat template refused the conversation: {message}")


def render_jinja_segments(
    template: str,
    messages: Sequence[ChatMessage],
    *,
    bos_token: str,
    eos_token: str,
) -> list[Segment]:
    """A GGUF-embedded chat template rendered the Hugging Face way, contents kept unparsed.

    Each message content is replaced by a unique sentinel before rendering; the rendered text is
    split at the sentinels, so only the template's own text may contain special tokens. A
    template that transforms content (e.g. `| trim`) keeps the sentinel intact; one that slices
    it cannot be honoured and is reported in one line.
    """
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    tag = secrets.token_hex(8)
    sentinels = [f"\x1fHZ{tag}M{i}\x1f" for i in range(len(messages))]
    rows: list[dict[str, Any]] = [
        {"role": m.role, "content": sentinel}
        for m, sentinel in zip(messages, sentinels, strict=True)
    ]
    try:
        rendered = env.from_string(template).render(
            messages=rows,
            add_generation_prompt=True,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    except TemplateError as exc:
        raise HuoziError(f"the model's chat template cannot be rendered: {exc}") from exc
    segments: list[Segment] = []
    rest = rendered
    for message, sentinel in zip(messages, sentinels, strict=True):
        before, found, after = rest.partition(sentinel)
        if not found:
            if sentinel in rendered:
                raise HuoziError("the model's chat template repeats or reorders message contents")
            continue  # the template left this message out (some drop the system message)
        if before:
            segments.append(TemplateText(before))
        if message.role == "assistant":
            segments.append(Reply("", message.content))
        else:
            segments.append(RawText(message.content))
        rest = after
    if "\x1fHZ" + tag in rest:
        raise HuoziError("the model's chat template repeats or reorders message contents")
    if rest:
        segments.append(TemplateText(rest))
    return segments
