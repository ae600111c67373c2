"""Opening a lineage: user tokenizers, precision, many files without creep."""

import os
from pathlib import Path

import torch
from conftest import qa_rows, text_rows, write_jsonl
from tokenizers import Tokenizer as HfTokenizer
from tokenizers import models, pre_tokenizers, trainers

from trainer.checkpoint import latest_checkpoint
from trainer.config import LineageSpec
from trainer.tokenizer import Tokenizer


def build_user_tokenizer(path: Path) -> Path:
    """A small word-piece-ish BPE trained here: no hub downloads."""
    hf = HfTokenizer(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>", "<pad>"])
    hf.train_from_iterator([r["text"] for r in text_rows(300)], trainer=trainer)
    hf.save(str(path))
    return path


def test_a_user_tokenizer_json_trains_and_is_saved_with_the_checkpoint(
    tmp_path, open_trainer, run_paths
):
    tok_path = build_user_tokenizer(tmp_path / "tokenizer.json")
    trainer = open_trainer(spec=LineageSpec(preset="test", tokenizer=str(tok_path)))
    assert trainer.tokenizer.vocab_size <= 300
    assert trainer.lineage.model_config.vocab_size % 64 == 0
    data = trainer.prepare(write_jsonl(tmp_path / "a.jsonl", text_rows(80)))
    trainer.train_file(data, name="a.jsonl")
    saved = latest_checkpoint(run_paths.checkpoints)
    assert (
        Tokenizer.from_json(saved.tokenizer_json).fingerprint
        == Tokenizer.from_json(tok_path.read_text()).fingerprint
    )
    # A resume uses the checkpoint's tokenizer even if the settings now say otherwise.
    again = open_trainer(spec=LineageSpec(preset="test"))
    assert again.tokenizer.fingerprint == trainer.tokenizer.fingerprint


def test_bf16_autocast_on_cpu_when_asked(tmp_path, open_trainer):
    trainer = open_trainer(precision="bf16")
    trainer.train_file(
        trainer.prepare(write_jsonl(tmp_path / "a.jsonl", qa_rows(40))), name="a.jsonl"
    )
    assert trainer.state.nan_skips_total == 0
    assert all(
        p.dtype == torch.float32 for p in trainer.model.parameters()
    )  # master weights stay fp32
    assert trainer.state.files_completed[0].mean_loss > 0


def _rss_bytes() -> int:
    with Path("/proc/self/statm").open() as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_no_creep_over_many_files(tmp_path, open_trainer):
    """Rule 7: hundreds of files must not leak memory or file descriptors (memmaps)."""
    trainer = open_trainer(checkpoint_interval=10**6, keep_checkpoints=2)
    drops = tmp_path / "drops"
    drops.mkdir()

    def train(i):
        path = write_jsonl(drops / f"{i:04d}.jsonl", text_rows(12, offset=i * 12))
        trainer.train_file(trainer.prepare(path), name=path.name)

    for i in range(30):
        train(i)
    fds, rss = len(list(Path("/proc/self/fd").iterdir())), _rss_bytes()
    for i in range(30, 200):
        train(i)
    assert len(trainer.state.files_completed) == 200
    assert len(list(Path("/proc/self/fd").iterdir())) <= fds + 2
    assert _rss_bytes() - rss < 40 * 2**20, (
        "resident memory grew by more than 40 MiB over 170 files"
    )


def _word_tokenizer(path: Path, n: int) -> Path:
    """A word-level tokenizer of exactly ``n`` tokens, with an end-of-text token."""
    from tokenizers import models as hf_models

    vocab = {"</s>": 0, "<unk>": 1, **{f"w{i}": i + 2 for i in range(n - 2)}}
    hf = HfTokenizer(hf_models.WordLevel(vocab=vocab, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.add_special_tokens(["</s>"])
    hf.save(str(path))
    return path


def test_init_from_takes_the_tokenizer_the_settings_name(tmp_path, open_trainer, run_paths):
    """A new lineage is the one moment the tokenizer may change: --init-from with
    model.tokenizer set uses it (the resume warning sends people there)."""
    import pytest

    from trainer.config import RunPaths
    from trainer.lineage import LineageError

    source = open_trainer()
    source_rows = source.lineage.model_config.vocab_size
    source.close()
    user = _word_tokenizer(tmp_path / "user.json", 100)
    paths = RunPaths(checkpoints=tmp_path / "new" / "ck", state=tmp_path / "new" / "st")
    spec = LineageSpec(preset="test", tokenizer=str(user), tokenizer_set=True)
    fresh = open_trainer(paths=paths, spec=spec, init_from=run_paths.checkpoints)
    assert fresh.tokenizer.fingerprint == Tokenizer.from_json(user.read_text()).fingerprint
    assert fresh.lineage.model_config.vocab_size == source_rows  # the weights' own rows
    saved = latest_checkpoint(paths.checkpoints)
    assert Tokenizer.from_json(saved.tokenizer_json).fingerprint == fresh.tokenizer.fingerprint
    fresh.close()
    # Left at its default, the checkpoint's tokenizer is kept.
    kept = RunPaths(checkpoints=tmp_path / "kept" / "ck", state=tmp_path / "kept" / "st")
    same = open_trainer(paths=kept, init_from=run_paths.checkpoints)
    assert (
        same.tokenizer.fingerprint
        == Tokenizer.from_json(latest_checkpoint(run_paths.checkpoints).tokenizer_json).fingerprint
    )
    # A tokenizer with more tokens than the model has embedding rows cannot fit.
    big = _word_tokenizer(tmp_path / "big.json", source_rows + 10)
    other = RunPaths(checkpoints=tmp_path / "big" / "ck", state=tmp_path / "big" / "st")
    with pytest.raises(LineageError, match=rf"{source_rows + 10} tokens.*{source_rows} embedding"):
        open_trainer(
            paths=other,
            spec=LineageSpec(preset="test", tokenizer=str(big), tokenizer_set=True),
            init_from=run_paths.checkpoints,
        )
