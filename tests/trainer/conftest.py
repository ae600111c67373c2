"""Shared fixtures for trainer tests: tiny real models on real files."""

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HfTokenizer

from trainer.config import LineageSpec, RunPaths, TrainConfig
from trainer.loop import Trainer
from trainer.tokenizer import Tokenizer


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def special_id(tokenizer: Tokenizer, token: str) -> int | None:
    """Id of ``token`` if it is a single entry of the tokenizer's vocabulary, else None."""
    return HfTokenizer.from_str(tokenizer.to_json()).token_to_id(token)


def text_rows(n: int, *, offset: int = 0) -> list[dict]:
    return [
        {"text": f"If X={i} and Y={i + 3}, what is X+Y? X+Y = {i}+{i + 3} = {2 * i + 3}."}
        for i in range(offset, offset + n)
    ]


def qa_rows(n: int, *, offset: int = 0) -> list[dict]:
    # Variable lengths on both sides, so token weighting matters.
    return [
        {
            "prompt": f"Q{i}: what is {i} times {i % 7 + 1}?" + " please" * (i % 5),
            "completion": f" {i * (i % 7 + 1)}" + "!" * (i % 9),
        }
        for i in range(offset, offset + n)
    ]


TEST_TRAIN = dict(
    micro_batch_size=4,
    grad_accum_steps=2,
    epochs_per_file=1.0,
    learning_rate=3e-3,
    warmup_steps=3,
    checkpoint_interval=5,
    keep_checkpoints=3,
    log_interval=50,
    weight_decay=0.1,
)


@pytest.fixture
def run_paths(tmp_path) -> RunPaths:
    return RunPaths(checkpoints=tmp_path / "checkpoints", state=tmp_path / "state")


@pytest.fixture
def open_trainer(run_paths):
    """Opens a Trainer; opening again on the same paths first closes the earlier one there,
    as the end of a process would (a lineage admits one open Trainer at a time)."""
    opened: list[Trainer] = []

    def _open(
        *,
        spec: LineageSpec | None = None,
        paths: RunPaths | None = None,
        init_from=None,
        evaluation=None,
        gold=None,
        export=None,
        from_gold=False,
        new_lineage=False,
        expected_lineage=None,
        rollback_request=None,
        **train,
    ) -> Trainer:
        paths = paths or run_paths
        for earlier in opened:
            if earlier.paths.checkpoints == paths.checkpoints:
                earlier.close()
        trainer = Trainer.open(
            spec=spec or LineageSpec(preset="test"),
            train=TrainConfig(**{**TEST_TRAIN, **train}),
            paths=paths,
            init_from=init_from,
            evaluation=evaluation,
            gold=gold,
            export=export,
            from_gold=from_gold,
            new_lineage=new_lineage,
            expected_lineage=expected_lineage,
            rollback_request=rollback_request,
        )
        opened.append(trainer)
        return trainer

    yield _open
    for trainer in opened:
        trainer.close()
