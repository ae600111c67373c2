"""Tiny Hugging Face models and tokenizers, built locally (no hub), for the ``hf:`` tests.

``make_tokenizer_dir`` trains a byte-level BPE with ``tokenizers`` on local text and writes
``tokenizer.json`` and ``tokenizer_config.json`` (with a chat template);
``make_llama_dir`` and ``make_qwen2_dir`` write a 2-layer model from a config with
``save_pretrained``, next to that tokenizer, as a user's local model folder looks.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""Qwen2's template, less the tools: end-of-turn ``<|im_end|>``, then a newline."""

ROLE_TAG_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}{%- endif %}"
)
"""A Phi-3-like template with a BOS token and one tag per role; end-of-turn ``<|end|>``."""

CORPUS = [
    f"The {animal} number {i} eats {food} at {i % 12} o'clock, then sleeps."
    for i in range(200)
    for animal, food in [("cat", "fish"), ("dog", "bones"), ("owl", "mice")][i % 3 : i % 3 + 1]
] + [f"{i} plus {i + 1} is {2 * i + 1}. {i} minus 1 is {i - 1}." for i in range(200)]


def make_tokenizer_dir(
    folder: Path,
    *,
    template: str = CHATML_TEMPLATE,
    special: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    eos: str = "<|im_end|>",
    pad: str = "<|endoftext|>",
    bos: str | None = None,
    vocab_size: int = 400,
) -> Path:
    """A trained byte-level BPE tokenizer with ``special`` tokens and a chat template."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": eos,
        "pad_token": pad,
        "bos_token": bos,
        "chat_template": template,
        "model_max_length": 64,
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


def _token_id(folder: Path, token: str | None) -> int | None:
    if token is None:
        return None
    return Tokenizer.from_file(str(folder / "tokenizer.json")).token_to_id(token)


TINY_SHAPE = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query attention: two heads share each KV head
    max_position_embeddings=64,
)
"""The shape both test models share."""


def _save_model(folder: Path, architecture: str, *, seed: int, **fields) -> Path:
    """``<architecture>ForCausalLM`` of ``TINY_SHAPE`` with the folder tokenizer's vocabulary,
    initialised from ``seed`` and saved into ``folder``."""
    import torch
    import transformers

    config = getattr(transformers, f"{architecture}Config")(
        vocab_size=Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size(),
        **TINY_SHAPE,
        **fields,
    )
    torch.manual_seed(seed)
    getattr(transformers, f"{architecture}ForCausalLM")(config).save_pretrained(folder)
    return folder


def make_llama_dir(folder: Path, *, seed: int = 0) -> Path:
    """A 2-layer Llama with grouped-query attention (4 heads, 2 KV heads) and an untied head,
    with the role-tag tokenizer (a BOS token, end-of-turn ``<|end|>``)."""
    make_tokenizer_dir(
        folder,
        template=ROLE_TAG_TEMPLATE,
        special=("<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<pad>"),
        eos="<|end|>",
        pad="<pad>",
        bos="<s>",
    )
    return _save_model(
        folder,
        "Llama",
        seed=seed,
        tie_word_embeddings=False,
        bos_token_id=_token_id(folder, "<s>"),
        eos_token_id=_token_id(folder, "<|end|>"),
        pad_token_id=_token_id(folder, "<pad>"),
    )


def make_qwen2_dir(folder: Path, *, seed: int = 0) -> Path:
    """A 2-layer Qwen2 with tied embeddings and the ChatML tokenizer."""
    make_tokenizer_dir(folder)
    return _save_model(
        folder,
        "Qwen2",
        seed=seed,
        tie_word_embeddings=True,
        eos_token_id=_token_id(folder, "<|im_end|>"),
        pad_token_id=_token_id(folder, "<|endoftext|>"),
    )
