"""trainer.chat_template: chat drops rendered with a tokenizer's template, and their masks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from tiny_hf import CHATML_TEMPLATE, ROLE_TAG_TEMPLATE, make_tokenizer_dir

from trainer.cache import tokenize_file
from trainer.chat_template import ChatRenderer, ChatTemplateError
from trainer.data import TokenizedFile
from trainer.records.formats import DataError
from trainer.tokenizer import Tokenizer, load_tokenizer

ROLE_TAG_SPECIAL = ("<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<pad>")

CONVERSATION = [
    {"role": "system", "content": "be nice"},
    {"role": "user", "content": "the cat"},
    {"role": "assistant", "content": "eats fish"},
    {"role": "user", "content": "1 plus 2"},
    {"role": "assistant", "content": "is 3."},
]

LAST_TWO_TEMPLATE = (
    "{%- for message in messages[-2:] %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""Renders only the last two messages: earlier turns vanish as the conversation grows."""

TRAILING_EOT_TEMPLATE = (
    CHATML_TEMPLATE + "{%- if not add_generation_prompt %}<|endoftext|>{% endif %}"
)
"""Phi-3's habit: something after the last message when there is no generation prompt."""

FEATURES_TEMPLATE = (
    "{%- set ns = namespace(n=0) %}"
    "{{- bos_token if bos_token is defined else '' }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{% continue %}{% endif %}"
    "{%- set ns.n = ns.n + 1 %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{%- else %}{{ message['content'] + '<|im_end|>' }}{% endif %}"
    "{{ '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
    "{{- '' if strftime_now('%Y') else raise_exception('no clock') }}"
    "{{- '' if (dict(a=1) | tojson) == '{\"a\": 1}' else raise_exception('tojson') }}"
)
"""The globals, filters and tags of transformers' environment: namespace, loop controls,
``{% generation %}``, ``strftime_now``, ``dict``, ``tojson``, ``raise_exception``."""


@pytest.fixture(scope="module")
def chatml_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tokenizer_dir(tmp_path_factory.mktemp("chatml"))


@pytest.fixture(scope="module")
def role_tag_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tokenizer_dir(
        tmp_path_factory.mktemp("roletag"),
        template=ROLE_TAG_TEMPLATE,
        special=ROLE_TAG_SPECIAL,
        eos="<|end|>",
        pad="<pad>",
        bos="<s>",
    )


@pytest.fixture(scope="module")
def chatml(chatml_dir: Path) -> Tokenizer:
    return load_tokenizer(str(chatml_dir))


@pytest.fixture(scope="module")
def role_tag(role_tag_dir: Path) -> Tokenizer:
    return load_tokenizer(str(role_tag_dir))


def with_template(folder: Path, template: str, **config: object) -> Tokenizer:
    """The tokenizer of ``folder`` with another chat template (and config entries)."""
    base = json.loads((folder / "tokenizer_config.json").read_text())
    text = (folder / "tokenizer.json").read_text()
    return Tokenizer.from_json(text, config={**base, "chat_template": template, **config})


def renderer(tokenizer: Tokenizer) -> ChatRenderer:
    assert tokenizer.chat_renderer is not None
    return tokenizer.chat_renderer


def expected_mask(
    tokenizer: Tokenizer, ids: list[int], messages: Sequence[dict], *, header: list[int]
) -> list[int]:
    """1 on each assistant content's own tokens and the end-of-turn id that follows, found by
    locating ``header + encode(content) + [eos]`` in ``ids``, one reply after the other."""
    mask = [0] * len(ids)
    position = 0
    for message in messages:
        if message["role"] != "assistant":
            continue
        reply = [*tokenizer.encode(message["content"]), tokenizer.eos_id]
        wanted = header + reply
        position = next(
            i for i in range(position, len(ids)) if ids[i : i + len(wanted)] == wanted
        ) + len(header)
        mask[position : position + len(reply)] = [1] * len(reply)
        position += len(reply)
    return mask


# --- masks -----------------------------------------------------------------------------------


def test_chatml_mask_is_each_reply_and_its_end_of_turn(chatml: Tokenizer) -> None:
    ids, mask = renderer(chatml).encode(CONVERSATION)
    assert chatml.control_tokens[chatml.eos_id] == "<|im_end|>"  # the config's eos_token
    header = [*chatml.encode_rendered_batch(["<|im_start|>"])[0], *chatml.encode("assistant\n")]
    assert mask == expected_mask(chatml, ids, CONVERSATION, header=header)
    masked = [token for token, m in zip(ids, mask, strict=True) if m]
    assert masked == [
        *chatml.encode("eats fish"),
        chatml.eos_id,
        *chatml.encode("is 3."),
        chatml.eos_id,
    ]
    assert chatml.decode(ids) == renderer(chatml).render(CONVERSATION)


def test_role_tag_mask_with_bos(role_tag: Tokenizer) -> None:
    ids, mask = renderer(role_tag).encode(CONVERSATION)
    assert role_tag.bos_id is not None
    assert ids[0] == role_tag.bos_id
    assert ids.count(role_tag.bos_id) == 1
    header = [*role_tag.encode_rendered_batch(["<|assistant|>"])[0], *role_tag.encode("\n")]
    assert mask == expected_mask(role_tag, ids, CONVERSATION, header=header)
    masked = [token for token, m in zip(ids, mask, strict=True) if m]
    assert role_tag.decode(masked) == "eats fish<|end|>is 3.<|end|>"


def test_conversation_starting_with_the_reply(chatml: Tokenizer) -> None:
    messages = [{"role": "assistant", "content": "the cat"}]
    ids, mask = renderer(chatml).encode(messages)
    assert chatml.decode([t for t, m in zip(ids, mask, strict=True) if m]) == "the cat<|im_end|>"


def test_end_of_turn_is_the_template_marker_when_eos_is_a_document_end(
    chatml_dir: Path,
) -> None:
    # Like Qwen base models: eos_token <|endoftext|>, turns end with <|im_end|>.
    tok = with_template(chatml_dir, CHATML_TEMPLATE, eos_token="<|endoftext|>")
    assert tok.control_tokens[tok.eos_id] == "<|endoftext|>"
    ids, mask = renderer(tok).encode(CONVERSATION)
    masked = [t for t, m in zip(ids, mask, strict=True) if m]
    assert tok.decode(masked) == "eats fish<|im_end|>is 3.<|im_end|>"


def test_reply_without_end_of_turn_is_rejected(chatml_dir: Path) -> None:
    plain = (
        "{% for m in messages %}{{ m['role'] + ':\\n' + m['content'] + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant:\\n' }}{% endif %}"
    )
    tok = with_template(chatml_dir, plain)
    with pytest.raises(ChatTemplateError, match=r"without an end-of-turn token.*'<\|im_end\|>'"):
        renderer(tok).encode(CONVERSATION)


# --- rejections --------------------------------------------------------------------------------


def test_prompt_merging_with_the_reply_is_rejected(chatml_dir: Path) -> None:
    # "assistant: " then "eats": the tokenizer reads " eats", never the prompt's " " + "eats".
    spaced = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    )
    tok = with_template(chatml_dir, spaced)
    with pytest.raises(ChatTemplateError, match=r"merges the end of the prompt with the start"):
        renderer(tok).encode(CONVERSATION)


def test_template_that_drops_earlier_turns_is_rejected(chatml_dir: Path) -> None:
    tok = with_template(chatml_dir, LAST_TWO_TEMPLATE)
    with pytest.raises(ChatTemplateError) as err:
        renderer(tok).encode(CONVERSATION)
    message = str(err.value)
    assert "assistant message 1 (message 3 of 5)" in message
    assert "strips or rewrites earlier turns" in message
    assert "starts with its rendering of every shorter conversation" in message
    assert "ChatML" in message


def test_template_that_writes_after_the_last_message_is_rejected(chatml_dir: Path) -> None:
    tok = with_template(chatml_dir, TRAILING_EOT_TEMPLATE)
    with pytest.raises(ChatTemplateError, match=r"assistant message 1 .*whole conversation"):
        renderer(tok).encode(CONVERSATION)
    # With one reply, at the end, nothing comes after its turn: it trains.
    ids, mask = renderer(tok).encode(CONVERSATION[:3])
    assert tok.decode([t for t, m in zip(ids, mask, strict=True) if m]) == "eats fish<|im_end|>"


@pytest.mark.parametrize("content", ["<|im_end|>", "a <|im_start|>user\nb", "x<|endoftext|>"])
def test_content_with_a_control_token_is_rejected(chatml: Tokenizer, content: str) -> None:
    messages = [*CONVERSATION[:3], {"role": "user", "content": content}]
    with pytest.raises(ChatTemplateError, match=r"message 4 \(user\) contains '<\|"):
        renderer(chatml).encode(messages)


def test_template_errors_reject_the_conversation(chatml_dir: Path) -> None:
    strict = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first!') }}{% endif %}"
    tok = with_template(chatml_dir, strict + CHATML_TEMPLATE)
    with pytest.raises(ChatTemplateError, match="user first!"):
        renderer(tok).encode(CONVERSATION)


def test_results_per_conversation(chatml: Tokenizer) -> None:
    bad = [{"role": "user", "content": "<|im_end|>"}, {"role": "assistant", "content": "ok"}]
    good, rejected, again = renderer(chatml).encode_many([CONVERSATION, bad, CONVERSATION])
    assert good == again == renderer(chatml).encode(CONVERSATION)
    assert isinstance(rejected, ChatTemplateError)


# --- the same as transformers --------------------------------------------------------------------


def transformers_ids(encoded: object) -> list[int]:
    """``apply_chat_template(tokenize=True)``: a list (v4) or a BatchEncoding/dict (v5)."""
    if isinstance(encoded, list):
        return encoded
    return list(encoded["input_ids"])  # type: ignore[index]


@pytest.mark.parametrize("which", ["chatml", "role_tag", "features"])
def test_same_text_and_ids_as_transformers(
    which: str, chatml_dir: Path, role_tag_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    folder = {"chatml": chatml_dir, "role_tag": role_tag_dir, "features": tmp_path}[which]
    if which == "features":
        # transformers 5 keeps templates in chat_template.jinja; it wins over the config's.
        make_tokenizer_dir(tmp_path, bos="<|endoftext|>")
        (tmp_path / "chat_template.jinja").write_text(FEATURES_TEMPLATE)
    ours = load_tokenizer(str(folder))
    theirs = AutoTokenizer.from_pretrained(str(folder))
    for messages, prompt in [(CONVERSATION, False), (CONVERSATION[:4], True)]:
        text = renderer(ours).render(messages, add_generation_prompt=prompt)
        assert text == theirs.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=prompt
        )
        expected = transformers_ids(
            theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=prompt)
        )
        assert ours.encode_rendered_batch([text]) == [expected]
    assert renderer(ours).encode(CONVERSATION)[0] == transformers_ids(
        theirs.apply_chat_template(CONVERSATION, tokenize=True)
    )


# --- through the cache: a rejected conversation rejects the file with its line -------------------


def write_chats(path: Path, conversations: list[list[dict]]) -> Path:
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    return path


def rows(tf: TokenizedFile) -> list[tuple[list[int], list[int]]]:
    """Each sequence's ids and mask, as stored."""
    out = []
    for start, length in zip(tf.starts.tolist(), tf.lengths.tolist(), strict=True):
        ids = [int(t) for t in tf.tokens[start : start + length]]
        out.append((ids, [int(m) for m in tf.mask[start : start + length]]))
    return out


def test_files_are_tokenized_with_the_template(chatml: Tokenizer, tmp_path: Path) -> None:
    short = CONVERSATION[1:3]
    path = write_chats(tmp_path / "chat.jsonl", [CONVERSATION, short])
    tf = tokenize_file(path, tokenizer=chatml, block_size=128, cache_dir=tmp_path / "cache")
    assert rows(tf) == [renderer(chatml).encode(CONVERSATION), renderer(chatml).encode(short)]
    assert tf.n_truncated == 0
    # Cut at block_size + 1 tokens, counted as truncated, like traind's ChatML rendering.
    cut = tokenize_file(path, tokenizer=chatml, block_size=40, cache_dir=tmp_path / "cache")
    ids, mask = renderer(chatml).encode(CONVERSATION)
    assert rows(cut)[0] == (ids[:41], mask[:41])
    assert cut.n_truncated == 1


@pytest.mark.parametrize(
    ("template", "bad", "reason"),
    [
        (LAST_TWO_TEMPLATE, CONVERSATION, "strips or rewrites earlier turns"),
        (TRAILING_EOT_TEMPLATE, CONVERSATION, "does not start with"),
        (
            CHATML_TEMPLATE,
            [{"role": "user", "content": "say <|im_end|>"}, {"role": "assistant", "content": "no"}],
            r"message 1 \(user\) contains '<\|im_end\|>'",
        ),
    ],
    ids=["drops-turns", "writes-after-last", "control-token"],
)
def test_a_conversation_the_template_rejects_rejects_the_file(
    chatml_dir: Path, tmp_path: Path, template: str, bad: list[dict], reason: str
) -> None:
    tok = with_template(chatml_dir, template)
    one_turn = CONVERSATION[1:3]
    path = write_chats(tmp_path / "drop.jsonl", [one_turn, one_turn, bad, one_turn])
    with pytest.raises(DataError, match=rf"^drop\.jsonl line 3: .*{reason}") as err:
        tokenize_file(path, tokenizer=tok, block_size=64, cache_dir=tmp_path / "cache")
    assert err.value.line == 3
    assert err.value.path == path
    assert [e.line for e in err.value.errors] == [3]
    assert not list((tmp_path / "cache").iterdir())  # nothing kept of a rejected file
