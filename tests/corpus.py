"""Small drops shared by the service and end-to-end suites."""

import json
import os
from pathlib import Path


def make_drops(folder: Path) -> list[Path]:
    """Three small drops, one per format, so a run crosses file boundaries."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = {
        "a.jsonl": [{"text": f"If X={i} and Y={i + 2}, X+Y = {2 * i + 2}."} for i in range(60)],
        "b.jsonl": [
            {"prompt": f"What is {i} times 3?", "completion": f" {i * 3}."} for i in range(40)
        ],
        "c.jsonl": [
            {
                "messages": [
                    {"role": "user", "content": f"{i} minus 1?"},
                    {"role": "assistant", "content": f"{i - 1}"},
                ]
            }
            for i in range(40)
        ],
    }
    paths = []
    for name, items in rows.items():
        path = folder / name
        path.write_text("".join(json.dumps(r) + "\n" for r in items))
        paths.append(path)
    return paths


def traind_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a traind subprocess: a small lineage under ``root``, on CPU.

    The caller's TRAIND_* variables are dropped so nothing leaks in from the shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIND_")}
    env.update(
        TRAIND_PATHS__CHECKPOINTS=str(root / "checkpoints"),
        TRAIND_PATHS__STATE=str(root / "state"),
        TRAIND_PATHS__INBOX=str(root / "inbox"),
        TRAIND_MODEL__PRESET="test",
        TRAIND_MODEL__DROPOUT="0.1",  # dropout makes the RNG state matter for exact resume
        TRAIND_TRAIN__MICRO_BATCH_SIZE="4",
        TRAIND_TRAIN__GRAD_ACCUM_STEPS="2",
        TRAIND_TRAIN__EPOCHS_PER_FILE="1.5",
        TRAIND_TRAIN__CHECKPOINT_INTERVAL="4",
        TRAIND_TRAIN__WARMUP_STEPS="5",
        TRAIND_TRAIN__LEARNING_RATE="0.003",
        TRAIND_TRAIN__LOG_INTERVAL="5",
        TRAIND_TRAIN__DEVICE="cpu",
        # Evaluation on: every kill/resume test then also proves that evaluating, holding
        # data out, sampling and writing gold leave the training trajectory bit-exact.
        TRAIND_EVAL__INTERVAL="3",
        TRAIND_EVAL__SEQUENCES="16",
        TRAIND_EVAL__HOLDOUT_FRACTION="0.1",
        TRAIND_EVAL__PROMPTS='["1 + 1 ="]',
        TRAIND_EVAL__SAMPLE_TOKENS="4",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env
