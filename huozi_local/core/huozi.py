"""Facts about the huozi 3.0 model that several parts of the core rely on.

Sources: the model's README (HIT-SCIR/huozi), its tokenizer config and the official GGUF files.
"""

from __future__ import annotations

BEGIN_OF_UTTERANCE = "<|beginofutterance|>"
END_OF_UTTERANCE = "<|endofutterance|>"
BEGIN_OF_UTTERANCE_ID = 57000
END_OF_UTTERANCE_ID = 57001
VOCAB_SIZE = 57002
BOS_ID = 1
EOS_ID = 2  # the tokenizer's own </s>; the model ends its turns with END_OF_UTTERANCE_ID

ROLE_SYSTEM = "系统"
ROLE_USER = "用户"
ROLE_ASSISTANT = "助手"
DEFAULT_SYSTEM_PROMPT = "你是一个智能助手"

# Sampling defaults: the model README's llama.cpp command (--temp 0.2 --repeat_penalty 1.1 -c 2048),
# top_p from its transformers examples. SamplingOptions and Settings both take theirs from here.
DEFAULT_TEMPERATURE = 0.2
DEFAULT_TOP_P = 0.9
DEFAULT_REPEAT_PENALTY = 1.1
DEFAULT_MAX_TOKENS = 2048
DEFAULT_N_CTX = 2048

# The training template, exactly as the model's README gives it (data/huozi-template.jinja).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|beginofutterance|>' + message['role'] + '\\n' + "
    "message['content']}}{% if (loop.last and add_generation_prompt) or not loop.last %}"
    "{{ '<|endofutterance|>' + '\\n'}}{% endif %}{% endfor %}\n"
    "{% if add_generation_prompt and messages[-1]['role'] != '助手' %}"
    "{{ '<|beginofutterance|>助手\\n' }}{% endif %}"
)
