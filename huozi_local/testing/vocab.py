"""The huozi vocabulary layout, at full size, with real Chinese and English pieces.

The official huozi3 tokenizer is SentencePiece (llama) with 57000 base pieces and two added
utterance tokens. This module builds a vocabulary with the same ids for everything that matters:
`<unk>`=0, `<s>`=1, `</s>`=2, the 256 byte tokens `<0x00>`..`<0xFF>` at 3..258, ordinary pieces
(ASCII, English words with their prefixes, Chinese characters and words), and
`<|beginofutterance|>`=57000, `<|endofutterance|>`=57001. Chinese characters from U+9F00 upward
are left out on purpose, so that text using them (e.g. 龘) falls back to byte tokens and exercises
multi-byte decoding across token boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass

from huozi_local.core import huozi

# SentencePiece / GGUF token types.
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_BYTE = 6

SPACE = "\u2581"  # SentencePiece's word-boundary marker "▁"

BYTE_FALLBACK_FROM = 0x9F00  # CJK characters at and above this code point are not in the vocab

ENGLISH_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or "
    "one had by word but not what all were we when your can said there use an each which she do "
    "how their if will up other about out many then them these so some her would make like him "
    "into time has look two more write go see number no way could people my than first water "
    "been call who oil its now find long down day did get come made may part hello world model "
    "assistant user system python code sort quick answer question please thank help language "
    "chinese english large local chat token memory layer expert mixture huozi llama gpu cpu"
).split()

CHINESE_WORDS = (
    "你好 世界 用户 助手 系统 智能 模型 中国 北京 哈尔滨 工业 大学 语言 问题 回答 谢谢 请问 "
    "代码 快速 排序 数学 推理 专家 混合 上下文 中文 英文 知识 能力 安全 指令 生成 测试 我们 你们 "
    "他们 什么 怎么 为什么 可以 没有 一个 这个 那个 时候 今天 明天 学习 工作 电脑 手机 显卡 内存"
).split()

CHINESE_PUNCTUATION = list("，。！？：；“”‘’《》、（）【】—…·")

# Frequent characters; their pairs fill the rest of the vocabulary with realistic bigrams.
COMMON_CHARS = (
    "的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出要于就下得可而过天去能对她多然"
    "学都事好看起发当没成只如经作想种面家样开用所自己前还后心现又无把同力理本正主行从些已新实问"
    "感意动全两那长法些里高月者分头见年话气回明很口手进此知被事本身做比什么情工两物因方打文"
    "书山水火木金土日星风云雨雪花草鱼鸟马牛羊狗猫龙虎春夏秋冬东西南北红黄蓝白黑"
)


@dataclass(frozen=True)
class Vocabulary:
    tokens: list[str]
    scores: list[float]
    token_types: list[int]


def _unique(items: list[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def _ordinary_pieces() -> list[str]:
    pieces: list[str] = [SPACE]
    pieces += [chr(c) for c in range(0x21, 0x7F)]
    pieces += [SPACE + chr(c) for c in range(0x21, 0x7F)]
    for word in ENGLISH_WORDS:
        pieces += [SPACE + word[:i] for i in range(1, len(word) + 1)]
        pieces += [word[:i] for i in range(1, len(word) + 1)]
    pieces += CHINESE_PUNCTUATION
    for word in CHINESE_WORDS:
        pieces += [word[:i] for i in range(1, len(word) + 1)]
    pieces += [chr(c) for c in range(0x4E00, BYTE_FALLBACK_FROM)]
    return _unique(pieces)


def build_vocabulary() -> Vocabulary:
    """The full 57002-token huozi layout, as the official February-2024 GGUF files carry it."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL] + [TOKEN_BYTE] * 256
    ordinary = _ordinary_pieces()
    taken = set(ordinary) | set(tokens)
    common = _unique(list(COMMON_CHARS))
    base = huozi.BEGIN_OF_UTTERANCE_ID
    needed = base - len(tokens) - len(ordinary)
    filler: list[str] = []
    for first in common:
        for second in common:
            pair = first + second
            if pair not in taken:
                filler.append(pair)
                taken.add(pair)
    for first in common:  # trigrams if the bigrams ever run short
        if len(filler) >= needed:
            break
        for pair in list(filler[: len(common)]):
            trigram = first + pair
            if trigram not in taken:
                filler.append(trigram)
                taken.add(trigram)
    ordinary += filler[:needed]
    if len(tokens) + len(ordinary) != base:
        raise RuntimeError("vocabulary filler ran short")
    tokens += ordinary
    types += [TOKEN_NORMAL] * len(ordinary)
    # The official files carry the utterance tokens as USER_DEFINED, which the repair fixes.
    tokens += [huozi.BEGIN_OF_UTTERANCE, huozi.END_OF_UTTERANCE]
    types += [TOKEN_USER_DEFINED, TOKEN_USER_DEFINED]
    scores = [0.0] * len(tokens)
    for index in range(259, base):
        scores[index] = -float(index)
    return Vocabulary(tokens=tokens, scores=scores, token_types=types)
