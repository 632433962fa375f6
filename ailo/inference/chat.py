"""Chat prompts for rooms: a conversation becomes token ids through the checkpoint's own chat
template, rendered by `transformers`' `apply_chat_template` over the room's tokenizer.

A room created from a checkpoint whose `tokenizer_config.json` has a `chat_template` keeps it
(with its `bos_token` / `eos_token`, which templates refer to). `ailo` GPT rooms and any room
without one use `TRANSCRIPT_TEMPLATE`: each turn as `ROLE:` on its own line, then the text and
a blank line, ending with `ASSISTANT:` for the model to continue. The GPT presets are trained
on plain text (plays among it), not on chat data, so a transcript is the prompt they continue
best; no special tokens are added.
"""
from __future__ import annotations

from typing import Any

TRANSCRIPT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | upper }}:\n{{ m['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:\n{% endif %}"
)
ROLES = ("system", "user", "assistant", "developer", "tool")
MAX_TEMPLATE_CHARS = 64 * 1024


class ChatError(ValueError):
    """The conversation or the template cannot be rendered (a 400 for the requester)."""


def chat_settings(tokenizer_config: dict[str, Any]) -> dict[str, Any]:
    """What a room keeps of a checkpoint's `tokenizer_config.json`: the template and the special
    tokens it names ({} when it has no template)."""
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str) or not template:
        return {}
    out: dict[str, Any] = {"chat_template": template}
    for key in ("bos_token", "eos_token"):
        token = tokenizer_config.get(key)
        token = token.get("content") if isinstance(token, dict) else token
        if isinstance(token, str):
            out.setdefault("special_tokens", {})[key] = token
    return out


def chat_tokenizer(codec, template: str | None = None, special_tokens: dict[str, str] | None = None):
    """A `transformers` tokenizer over (a copy of) the `tokenizers` object `codec`, holding the
    room's template (default `TRANSCRIPT_TEMPLATE`). Build once per room: it takes ~0.1-1 s."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    # a copy: the transformers wrapper sets padding/truncation on the backend it is given
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(codec.to_str()),
                                   chat_template=template or TRANSCRIPT_TEMPLATE, **(special_tokens or {}))


def render_chat(tok, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of `messages` ({role, content} with string content) followed by the assistant's
    turn, through `tok`'s chat template (`chat_tokenizer`)."""
    if not messages:
        raise ChatError("'messages' is empty")
    for m in messages:
        if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ChatError(f"each message needs a role in {', '.join(ROLES)} and text content")
    try:
        out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    except Exception as exc:  # jinja2 raises TemplateError, the template's raise_exception anything
        raise ChatError(f"the room's chat template cannot render this conversation: {exc}") from None
    return list(out["input_ids"])
