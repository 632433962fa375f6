"""Chat prompts in rooms (ailo.inference.chat): a checkpoint's own template gives the ids
`transformers` gives for that checkpoint; rooms without one use the transcript template."""
from __future__ import annotations

import json

from tokenizers import Tokenizer
from transformers import AutoTokenizer

from ailo.inference.chat import TRANSCRIPT_TEMPLATE, chat_settings, chat_tokenizer, render_chat
from ailo.inference.checkpoints import make_byte_bpe_tokenizer
from ailo.tokenizer import load_tokenizer

CHATML = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the quick brown fox"}]


def test_a_checkpoint_template_renders_as_transformers_renders_the_checkpoint(tmp_path):
    make_byte_bpe_tokenizer(tmp_path, vocab=400)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHATML, "bos_token": "<s>",
              "eos_token": "</s>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    settings = chat_settings(config)  # what `ailo room create --model-dir` sends
    assert settings == {"chat_template": CHATML, "special_tokens": {"bos_token": "<s>", "eos_token": "</s>"}}
    room_tok = Tokenizer.from_str((tmp_path / "tokenizer.json").read_text())  # what the room holds
    ids = render_chat(chat_tokenizer(room_tok, settings["chat_template"], settings["special_tokens"]), CHAT)
    reference = AutoTokenizer.from_pretrained(str(tmp_path))
    want = reference.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert ids == list(want["input_ids"]) and len(ids) > 10
    assert room_tok.decode(ids, skip_special_tokens=False).endswith("<|im_start|>assistant\n")


def test_rooms_without_a_template_use_the_transcript():
    assert chat_settings({"eos_token": "</s>"}) == {}
    dict_tokens = chat_settings({"chat_template": CHATML, "eos_token": {"__type": "AddedToken", "content": "</s>"}})
    assert dict_tokens["special_tokens"] == {"eos_token": "</s>"}
    assert chat_settings({"chat_template": [{"name": "default", "template": CHATML}]})["chat_template"] == CHATML
    ids = render_chat(chat_tokenizer(load_tokenizer()), CHAT)
    text = "SYSTEM:\nBe brief.\n\nUSER:\nthe quick brown fox\n\nASSISTANT:\n"
    assert ids == load_tokenizer().encode(text).ids and TRANSCRIPT_TEMPLATE
