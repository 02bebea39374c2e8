"""Multi-turn Chinese conversations this project wrote for its tests and benchmarks.

Tests must pass from a clone with nothing beside it, so they never read the MT-Bench-zh question
file from `../shared`; a benchmark may still take that file by path (`--questions FILE`). These
cover what the prompt format and the tokenizer meet in real use: full-width punctuation, mixed
Chinese and English, digits, code with indentation, blank lines, quotes and emoji, in the same
eight categories as MT-Bench, each with a follow-up turn that refers back to the first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SHOWCASE_QUESTION = "请用三句话介绍一下哈尔滨工业大学。"
SHOWCASE_ANSWER = """哈尔滨工业大学（简称**哈工大**）创建于 1920 年，是中国著名的理工科大学。

- 它在航天、机器人和计算机领域实力突出；
- 社会计算与信息检索研究中心（SCIR）发布了**活字**大模型。

```python
print("你好，活字！")
```"""
"""A question and a Markdown answer the screenshots and snapshot tests show (written by us)."""


@dataclass(frozen=True)
class Conversation:
    """What a user says, turn by turn; the model's replies come from whoever is tested."""

    category: str
    turns: tuple[str, ...]


CONVERSATIONS: tuple[Conversation, ...] = (
    Conversation(
        "writing",
        (
            "请写一封简短的邮件，邀请同事周五下午三点参加项目复盘会，地点在三楼会议室。",
            "把这封邮件改得更正式一些，并在结尾加上“如有冲突请提前告知”。",
        ),
    ),
    Conversation(
        "roleplay",
        (
            "假设你是一位在哈尔滨开了二十年饺子馆的老板，向第一次来的客人介绍你的招牌菜。",
            "客人说他不吃猪肉，你会推荐什么？请继续用老板的口吻回答。",
        ),
    ),
    Conversation(
        "reasoning",
        (
            "小明比小红高，小红比小刚高，小刚比小丽矮。谁最矮？请一步一步推理。",
            "如果再加一个条件：小丽比小明高。那么四个人从高到矮怎么排？",
        ),
    ),
    Conversation(
        "math",
        (
            "一个长方形的周长是 36 厘米，长比宽多 4 厘米，求它的面积。",
            "如果长和宽都增加 25%，面积会变成原来的多少倍？",
        ),
    ),
    Conversation(
        "coding",
        (
            "下面的 Python 函数有什么问题？\n\n```python\ndef average(xs):\n"
            "    return sum(xs) / len(xs)\n```\n",
            "请改写它：空列表时返回 None，并加上类型注解。",
        ),
    ),
    Conversation(
        "extraction",
        (
            "从这段话中提取人名、日期和金额，用 JSON 输出：\n"
            "“2024年3月8日，李华向王芳转账 1,280.50 元，用于支付《机器学习》教材。”",
            "再把金额换算成美元（按 1 美元 = 7.2 元），保留两位小数。",
        ),
    ),
    Conversation(
        "stem",
        (
            "用通俗的语言解释什么是“混合专家模型”（Mixture of Experts）。",
            "它和普通的稠密模型相比，推理时的显存和计算量有什么不同？",
        ),
    ),
    Conversation(
        "humanities",
        (
            "《论语》中“学而时习之，不亦说乎”是什么意思？",
            "请举一个现代生活中的例子来说明这句话 😊",
        ),
    ),
    Conversation(
        "writing",
        (
            "为一款离线运行的中文聊天软件写三条宣传语，每条不超过十五个字。",
            "第二条改成英文 slogan, keep it under 8 words.",
            "最后，把三条宣传语按你喜欢的程度排序并说明理由。",
        ),
    ),
    Conversation(
        "reasoning",
        (
            "一个农夫要带一只狼、一只羊和一棵白菜过河，船每次只能带一样东西。他该怎么做？",
            "如果船一次可以带两样东西，最少需要过几次河？",
        ),
    ),
)


def load_conversations(path: Path) -> list[Conversation]:
    """Conversations from a JSON-lines file shaped like MT-Bench's (`{"category", "turns"}`)."""
    conversations: list[Conversation] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                turns = tuple(str(turn) for turn in record["turns"])
                conversations.append(Conversation(str(record.get("category", "")), turns))
    return conversations
