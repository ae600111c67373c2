"""Tests of trainer.tokenizer: the built-in byte tokenizer and user tokenizer.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import special_id
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HfTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from trainer.tokenizer import (
    ENDOFTEXT,
    IM_END,
    IM_START,
    PAD,
    Tokenizer,
    TokenizerError,
    build_byte_tokenizer,
    load_tokenizer,
)

CORPUS = [
    "hello world",
    "the cat sat on the mat",
    "hello cat, hello dog",
    "Übung macht den Meister",
    "tokenizers are fun",
]


def train_bpe(special_tokens: list[str]) -> Tokenizer:
    """A small byte-level BPE tokenizer, trained locally (never downloaded)."""
    hf = HfTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(CORPUS, trainer)
    return Tokenizer.from_json(hf.to_str())


def train_wordlevel(special_tokens: list[str]) -> Tokenizer:
    hf = HfTokenizer(models.WordLevel(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=special_tokens, show_progress=False)
    hf.train_from_iterator(CORPUS, trainer)
    return Tokenizer.from_json(hf.to_str())


@pytest.fixture(scope="module")
def byte_tok() -> Tokenizer:
    return build_byte_tokenizer()


def test_byte_tokenizer_layout(byte_tok: Tokenizer) -> None:
    assert byte_tok.vocab_size == 260
    assert [special_id(byte_tok, t) for t in (ENDOFTEXT, IM_START, IM_END, PAD)] == [
        256,
        257,
        258,
        259,
    ]
    assert byte_tok.eos_id == 256
    assert byte_tok.pad_id == 259
    assert special_id(byte_tok, "<s>") is None
    assert byte_tok.encode("") == []


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_byte_ids_are_utf8_bytes(text: str) -> None:
    tok = build_byte_tokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.encode_batch([text, text]) == [ids, ids]


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_saved_byte_tokenizer_is_a_plain_hf_byte_tokenizer(text: str) -> None:
    # What any HF tooling sees when it loads a checkpoint's tokenizer.json.
    hf = HfTokenizer.from_str(build_byte_tokenizer().to_json())
    hf.encode_special_tokens = True
    ids = hf.encode(text, add_special_tokens=False).ids
    assert ids == list(text.encode("utf-8"))
    assert hf.decode(ids) == text


@pytest.mark.parametrize("literal", [ENDOFTEXT, IM_START, IM_END, PAD])
def test_special_strings_in_user_text_stay_plain_text(byte_tok: Tokenizer, literal: str) -> None:
    text = f"before {literal} after"
    assert byte_tok.encode(text) == list(text.encode("utf-8"))
    assert byte_tok.encode_batch([text]) == [list(text.encode("utf-8"))]


def test_special_strings_stay_plain_text_in_a_user_bpe() -> None:
    tok = train_bpe([ENDOFTEXT, "<pad>"])
    ids = tok.encode(f"hello {ENDOFTEXT} world")
    assert tok.eos_id not in ids
    assert tok.decode(ids) == f"hello {ENDOFTEXT} world"


def test_decode_keeps_special_tokens_unless_asked(byte_tok: Tokenizer) -> None:
    ids = [*byte_tok.encode("hi"), byte_tok.eos_id]
    assert byte_tok.decode(ids) == "hi<|endoftext|>"
    assert byte_tok.decode(ids, skip_special_tokens=True) == "hi"


def test_json_round_trip_and_fingerprint(byte_tok: Tokenizer, tmp_path: Path) -> None:
    text = byte_tok.to_json()
    json.loads(text)  # standard JSON
    again = Tokenizer.from_json(text)
    assert again.fingerprint == byte_tok.fingerprint
    assert len(byte_tok.fingerprint) == 64
    assert build_byte_tokenizer().fingerprint == byte_tok.fingerprint
    # Formatting does not change the fingerprint; content does.
    pretty = json.dumps(json.loads(text), indent=4)
    assert Tokenizer.from_json(pretty).fingerprint == byte_tok.fingerprint
    assert train_bpe([ENDOFTEXT]).fingerprint != byte_tok.fingerprint

    path = tmp_path / "tokenizer.json"
    byte_tok.save(path)
    loaded = load_tokenizer(str(path))
    assert loaded.fingerprint == byte_tok.fingerprint
    assert loaded.encode("héllo") == list("héllo".encode())
    assert HfTokenizer.from_file(str(path)).get_vocab_size() == 260


def test_load_bytes_spec() -> None:
    assert load_tokenizer("bytes").vocab_size == 260


def test_load_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(TokenizerError, match="does not exist") as err:
        load_tokenizer(str(missing))
    assert str(missing) in str(err.value)


@pytest.mark.parametrize("content", ["{not json", '{"model": 3}', ""])
def test_load_unparseable_file_names_the_path(tmp_path: Path, content: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(TokenizerError, match=r"not a valid Hugging Face tokenizer\.json") as err:
        load_tokenizer(str(path))
    assert str(path) in str(err.value)


def test_tokenizer_without_end_of_text_token(tmp_path: Path) -> None:
    tok = train_wordlevel(["<unk>"])
    with pytest.raises(ValueError, match="needs an end-of-text token"):
        _ = tok.eos_id
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    with pytest.raises(TokenizerError, match="needs an end-of-text token") as err:
        load_tokenizer(str(path))
    assert str(path) in str(err.value)


def test_eos_preference_order() -> None:
    tok = train_wordlevel(["<unk>", IM_END, "</s>"])
    assert tok.eos_id == special_id(tok, "</s>")
    only_im_end = train_wordlevel(["<unk>", IM_END])
    assert only_im_end.eos_id == special_id(only_im_end, IM_END)


def test_pad_falls_back_to_eos() -> None:
    tok = train_wordlevel(["<unk>", "</s>"])
    assert tok.pad_id == tok.eos_id
    with_pad = train_wordlevel(["<unk>", "</s>", "<pad>"])
    assert with_pad.pad_id == special_id(with_pad, "<pad>")


def test_user_tokenizer_file_end_to_end(tmp_path: Path) -> None:
    path = tmp_path / "tok" / "tokenizer.json"
    path.parent.mkdir()
    train_bpe([ENDOFTEXT, "<pad>"]).save(path)
    tok = load_tokenizer(str(path))
    assert tok.vocab_size == 300
    ids = tok.encode("hello world, the cat")
    assert tok.decode(ids) == "hello world, the cat"
    assert len(ids) < len("hello world, the cat")  # merges were learned
    assert tok.encode_batch(["hello", "cat"]) == [tok.encode("hello"), tok.encode("cat")]
    assert tok.encode_batch([]) == []


def test_chat_markers(byte_tok: Tokenizer) -> None:
    chat = byte_tok.chat_ids
    assert chat.headers["user"] == (257, *b"user\n")
    assert chat.end == (258,)
    assert chat.newline == (10,)
    # Without the markers in the vocabulary they are rendered as plain text.
    plain = train_bpe([ENDOFTEXT])
    assert special_id(plain, IM_START) is None
    assert plain.marker_ids(IM_START) == plain.encode(IM_START)
    assert list(plain.chat_ids.end) == plain.encode(IM_END)
