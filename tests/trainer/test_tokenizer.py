"""Tests of trainer.tokenizer: the built-in byte tokenizer and user tokenizer.json files."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import special_id
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_hf import CHATML_TEMPLATE, make_tokenizer_dir
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


# --- Hugging Face tokenizer folders: tokenizer_config.json and chat templates ------------------


def old_fingerprint(tok: Tokenizer) -> str:
    """The fingerprint as lineages have always stored it: sha256 of the canonical JSON."""
    canonical = json.dumps(
        json.loads(tok.to_json()), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@pytest.fixture(scope="module")
def chatml_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tokenizer_dir(tmp_path_factory.mktemp("chatml"))


def copy_folder(source: Path, destination: Path, **config: object) -> Path:
    """``source``'s tokenizer files in ``destination``, config entries replaced by ``config``."""
    destination.mkdir()
    shutil.copy(source / "tokenizer.json", destination)
    base = json.loads((source / "tokenizer_config.json").read_text())
    (destination / "tokenizer_config.json").write_text(json.dumps({**base, **config}))
    return destination


def test_folder_reads_the_config_and_its_template(chatml_dir: Path) -> None:
    tok = load_tokenizer(str(chatml_dir))
    assert tok.chat_template == CHATML_TEMPLATE
    assert tok.config["chat_template"] == CHATML_TEMPLATE
    assert tok.config["model_max_length"] == 64
    assert json.loads(tok.config_json() or "") == tok.config
    # The config's eos_token wins over the usual candidates (<|endoftext|> comes first there).
    assert tok.eos_id == special_id(tok, IM_END)
    assert tok.pad_id == special_id(tok, ENDOFTEXT)
    assert (tok.bos_token, tok.bos_id) == (None, None)
    assert tok.special_tokens == {"eos_token": IM_END, "pad_token": ENDOFTEXT}


def test_bos_and_token_dicts_from_the_config(chatml_dir: Path, tmp_path: Path) -> None:
    bos = {"content": ENDOFTEXT, "lstrip": False, "special": True, "__type": "AddedToken"}
    folder = copy_folder(chatml_dir, tmp_path / "t", bos_token=bos, eos_token={"content": IM_END})
    tok = load_tokenizer(str(folder))
    assert tok.bos_token == ENDOFTEXT
    assert tok.bos_id == special_id(tok, ENDOFTEXT)
    assert tok.eos_id == special_id(tok, IM_END)
    # A token the vocabulary lacks is ignored: the usual candidates decide.
    missing = load_tokenizer(str(copy_folder(chatml_dir, tmp_path / "m", eos_token="<eot>")))
    assert missing.eos_id == special_id(missing, ENDOFTEXT)


def test_chat_template_jinja_wins_over_the_config(chatml_dir: Path, tmp_path: Path) -> None:
    folder = copy_folder(chatml_dir, tmp_path / "t")
    jinja = CHATML_TEMPLATE.replace("\\n", "\\n\\n")
    (folder / "chat_template.jinja").write_text(jinja)
    tok = load_tokenizer(str(folder))
    assert tok.chat_template == tok.config["chat_template"] == jinja
    # transformers 5 writes the template there only, not in the config.
    bare = copy_folder(chatml_dir, tmp_path / "bare", chat_template=None)
    (bare / "chat_template.jinja").write_text(jinja)
    assert load_tokenizer(str(bare)).chat_template == jinja


@pytest.mark.parametrize(
    "named",
    [
        [{"name": "tool_use", "template": "{{ 1 }}"}, {"name": "default", "template": "DEFAULT"}],
        {"tool_use": "{{ 1 }}", "default": "DEFAULT"},
    ],
    ids=["list", "dict"],
)
def test_named_templates_use_the_default(
    chatml_dir: Path, tmp_path: Path, named: list | dict
) -> None:
    tok = load_tokenizer(str(copy_folder(chatml_dir, tmp_path / "t", chat_template=named)))
    assert tok.chat_template == "DEFAULT"


def test_folder_without_a_template_renders_chatml(chatml_dir: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(str(copy_folder(chatml_dir, tmp_path / "t", chat_template=None)))
    assert tok.chat_template is None
    assert tok.chat_renderer is None
    assert "chat_template" not in tok.config


def test_fingerprint_unchanged_without_a_config(
    byte_tok: Tokenizer, chatml_dir: Path, tmp_path: Path
) -> None:
    assert byte_tok.fingerprint == old_fingerprint(byte_tok)
    assert byte_tok.config == {}
    assert byte_tok.config_json() is None
    plain = load_tokenizer(str(chatml_dir / "tokenizer.json"))
    assert plain.config_json() is None
    assert plain.fingerprint == old_fingerprint(plain)
    # A folder with only tokenizer.json is the same tokenizer.
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(chatml_dir / "tokenizer.json", alone)
    assert load_tokenizer(str(alone)).fingerprint == plain.fingerprint
    # A config that changes nothing the trainer produces keeps it too.
    quiet = tmp_path / "quiet"
    shutil.copytree(alone, quiet)
    (quiet / "tokenizer_config.json").write_text('{"model_max_length": 8}')
    assert load_tokenizer(str(quiet)).fingerprint == plain.fingerprint


def test_fingerprint_covers_the_template_and_special_tokens(
    chatml_dir: Path, tmp_path: Path
) -> None:
    tok = load_tokenizer(str(chatml_dir))
    plain = load_tokenizer(str(chatml_dir / "tokenizer.json"))
    assert tok.fingerprint != plain.fingerprint
    variants = {
        "template": {"chat_template": CHATML_TEMPLATE.replace("\\n", " ")},
        "eos": {"eos_token": ENDOFTEXT},
        "pad": {"pad_token": IM_START},
    }
    prints = {
        name: load_tokenizer(str(copy_folder(chatml_dir, tmp_path / name, **config))).fingerprint
        for name, config in variants.items()
    }
    assert len({tok.fingerprint, *prints.values()}) == 4
    same = copy_folder(chatml_dir, tmp_path / "same", model_max_length=4096)
    assert load_tokenizer(str(same)).fingerprint == tok.fingerprint


def test_from_files_and_save_pretrained_round_trip(
    byte_tok: Tokenizer, chatml_dir: Path, tmp_path: Path
) -> None:
    tok = load_tokenizer(str(chatml_dir))
    again = Tokenizer.from_files(tok.to_json(), tok.config_json())
    assert (again.fingerprint, again.chat_template, again.eos_id, again.pad_id) == (
        tok.fingerprint,
        tok.chat_template,
        tok.eos_id,
        tok.pad_id,
    )
    assert again.config == tok.config
    tok.save_pretrained(tmp_path / "saved")
    assert load_tokenizer(str(tmp_path / "saved")).fingerprint == tok.fingerprint
    # Lineages without a config write and rebuild exactly what they always did.
    byte_tok.save_pretrained(tmp_path / "bytes")
    assert sorted(p.name for p in (tmp_path / "bytes").iterdir()) == ["tokenizer.json"]
    rebuilt = Tokenizer.from_files(byte_tok.to_json(), None)
    assert rebuilt.fingerprint == byte_tok.fingerprint
    with pytest.raises(TokenizerError, match=r"tokenizer_config\.json"):
        Tokenizer.from_files(byte_tok.to_json(), "[1]")


def test_folder_without_tokenizer_json_names_the_folder(chatml_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(chatml_dir / "tokenizer_config.json", folder)
    with pytest.raises(TokenizerError, match=r"has no tokenizer\.json") as err:
        load_tokenizer(str(folder))
    assert str(folder) in str(err.value)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ("{broken", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"chat_template": "{% for %}"}', "chat template does not compile"),
        ('{"chat_template": 3}', '"chat_template" must be a string'),
    ],
)
def test_bad_config_names_the_folder(
    chatml_dir: Path, tmp_path: Path, config: str, match: str
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(chatml_dir / "tokenizer.json", folder)
    (folder / "tokenizer_config.json").write_text(config)
    with pytest.raises(TokenizerError, match=match) as err:
        load_tokenizer(str(folder))
    assert str(folder) in str(err.value)


def test_encode_stays_plain_text_beside_template_encoding(chatml_dir: Path) -> None:
    tok = load_tokenizer(str(chatml_dir))
    rendered = f"{IM_START}user\nhi{IM_END}"
    template_ids = tok.encode_rendered_batch([rendered])[0]
    assert template_ids[0] == special_id(tok, IM_START)
    assert template_ids[-1] == tok.eos_id
    # Encoding template output never switches user text to recognising control tokens.
    for ids in (tok.encode(rendered), tok.encode_batch([rendered])[0]):
        assert special_id(tok, IM_START) not in ids
        assert tok.eos_id not in ids
        assert tok.decode(ids) == rendered
