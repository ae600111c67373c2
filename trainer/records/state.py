"""The training state saved in every checkpoint as ``training_state.json``, and its readers.

It is the truth of what a lineage has trained: the global step, the file in progress
with its fixed step budget and exact data position, the files completed with their step
ranges, the accumulation split in force, the non-finite-step window and all RNG states.
(``trainer.records.summary`` reads it for people, tolerating any version and hand edits.)
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.records.checkpoints import STATE, read_json_object, step_folders
from trainer.records.events import utc_now
from trainer.records.manifest import verify

FORMAT_VERSION = 5
"""Layout version written. 1: the first release. 2: adds evaluation history, gold records
and each file's holdout. 3: adds each file's sequences per optimizer step (fixed when it
starts), parked files, the rollback served and the files a rollback undid. 4: adds the
adaptation (LoRA, vocabulary extension) and the optimizer's recorded groups. 5: adds each
file's replay share and replayed counts, and each drop's best held-out loss. Older files
are upgraded on read (``upgrade``); a LoRA checkpoint is refused by a traind older than
version 4 rather than misread."""


@dataclass(kw_only=True)
class FileProgress:
    """The file being trained. Its budget is fixed when it starts (ARCHITECTURE.md rule 1)."""

    name: str
    """File name as given (a label; identity is ``sha256``)."""
    sha256: str
    """Content hash of the file."""
    n_sequences: int
    """Training sequences in the file (after packing)."""
    steps_for_file: int
    """``ceil(epochs_per_file * n_sequences / (micro * accum * world))``, fixed at start."""
    start_step: int
    """Global step when the file started."""
    target_step: int
    """``start_step + steps_for_file``; never recomputed on resume."""
    cursor: int = 0
    """Sequences of the file's (epoch-concatenated) order consumed so far."""
    tokens: int = 0
    """Input tokens processed in this file."""
    loss_sum: float = 0.0
    """Sum of per-step mean losses (for the file's mean loss)."""
    loss_steps: int = 0
    """Steps that contributed to ``loss_sum``."""
    elapsed_s: float = 0.0
    """Training seconds spent on the file, across restarts."""
    started_at: str = field(default_factory=utc_now)
    """When the file started (ISO time)."""
    holdout_fraction: float = 0.0
    """Fraction of the file's examples held out from training, fixed when it starts."""
    n_holdout: int = 0
    """Held-out sequences (evaluated in the ``recent`` set, never trained on)."""
    sequences_per_step: int = 0
    """Sequences each optimizer step of this file takes, fixed when it starts
    (ARCHITECTURE.md rule 14): the budget was computed from it, so a batch setting changed
    mid-file changes only how a step is split into micro-batches, never how much of the
    file a step consumes."""
    replay_fraction: float = 0.0
    """Share of each step's sequences replayed from earlier drops, fixed when the file
    starts (0 when replay is off or there was no earlier drop): the budget counts the
    file's own sequences only (ARCHITECTURE.md rule 1)."""
    replayed_sequences: int = 0
    """Sequences of earlier drops replayed in this file's steps."""
    replayed_tokens: int = 0
    """Input tokens of those replayed sequences (``tokens`` counts the file's own)."""
    parked_at: int | None = None
    """Global step at which the file was set aside unfinished (failed, cancelled, rolled
    back), or None while it is the file in progress. A parked file that trains again
    continues at its cursor with the steps it had left."""

    @property
    def epoch(self) -> int:
        return self.cursor // self.n_sequences


@dataclass(kw_only=True)
class CompletedFile:
    """A file the lineage has finished, with the steps it occupied."""

    name: str
    """File name when it was trained."""
    sha256: str
    """Content hash."""
    start_step: int
    """Global step at the file's start."""
    end_step: int
    """Global step at the file's end (== its target step)."""
    n_sequences: int
    """Training sequences."""
    tokens: int
    """Input tokens of the file's own sequences processed."""
    mean_loss: float | None
    """Mean training loss over the file's steps."""
    duration_s: float
    """Training seconds."""
    completed_at: str = field(default_factory=utc_now)
    """When the file finished (ISO time)."""
    holdout_fraction: float = 0.0
    """Fraction of the file's examples held out from training."""
    n_holdout: int = 0
    """Held-out sequences."""
    replay_fraction: float = 0.0
    """Share of each of its steps replayed from earlier drops."""
    replayed_sequences: int = 0
    """Sequences of earlier drops replayed in its steps."""
    replayed_tokens: int = 0
    """Input tokens of those replayed sequences."""


@dataclass(kw_only=True)
class TrainingState:
    """Everything but weights and optimizer moments needed to resume exactly."""

    lineage_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    """Identifies the lineage across its checkpoints."""
    created_at: str = field(default_factory=utc_now)
    """When the lineage started."""
    model_spec: dict[str, Any] = field(default_factory=dict)
    """Model settings (preset, tokenizer, overrides) the lineage was last opened with; a
    change of them, not a difference from the preset, is an intended architecture change."""
    seed: int = 0
    """The lineage's seed; fixed at creation because the data order derives from it."""
    global_step: int = 0
    """Optimizer steps taken by the lineage; only ever grows."""
    tokens_processed: int = 0
    """Input tokens processed by the lineage."""
    current_file: FileProgress | None = None
    """The file in progress, if any."""
    files_completed: list[CompletedFile] = field(default_factory=list)
    """Finished files in order."""
    micro_batch_size: int = 1
    """Micro-batch in force (may be below the setting after OOM recovery)."""
    grad_accum_steps: int = 1
    """Accumulation in force; ``micro_batch_size * grad_accum_steps`` is the setting's product."""
    configured_batch: tuple[int, int] = (1, 1)
    """(micro, accum) as configured when the split in force was chosen."""
    accum_micro_step: int = 0
    """Micro-batches of the current optimizer step already accumulated (0: checkpoints
    are only taken at optimizer-step boundaries, so no partial gradient is ever saved)."""
    nan_skips_total: int = 0
    """Optimizer steps skipped for non-finite loss or gradients."""
    nan_skip_steps: list[int] = field(default_factory=list)
    """Global steps of recent skips, for the rollback window."""
    rollbacks: int = 0
    """Times the lineage rolled back to a good checkpoint."""
    oom_recoveries: int = 0
    """Times the micro-batch was halved after running out of memory."""
    optimizer_resets: list[dict[str, Any]] = field(default_factory=list)
    """When and why the optimizer state had to start fresh (rule 3)."""
    init_from: dict[str, Any] | None = None
    """Where the starting weights came from (``--init-from``), if not initialised fresh."""
    train_config: dict[str, Any] = field(default_factory=dict)
    """Hyper-parameters in force at the last save."""
    rng: dict[str, Any] = field(default_factory=dict)
    """RNG states (torch CPU, CUDA, numpy, python), base64-encoded."""
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    """Recent evaluations, oldest first: ``{step, val_loss, train_loss, sets}``."""
    gold: dict[str, Any] | None = None
    """The current gold: ``{step, val_loss, train_loss, sets, prev_best, promoted_at}``."""
    gold_history: list[dict[str, Any]] = field(default_factory=list)
    """Every promotion to gold, oldest first (same records as ``gold``)."""
    parked: list[FileProgress] = field(default_factory=list)
    """Files set aside unfinished, oldest first (see ``FileProgress.parked_at``): what the
    lineage holds of each, so that training one again never repeats a sequence."""
    rollback_served: str | None = None
    """The time (ISO) of the newest rollback-to-gold request this lineage carried out or
    refused, so that a request is served once whatever restarts come between."""
    files_rolled_back: list[dict[str, Any]] = field(default_factory=list)
    """Files finished after gold that rollbacks to gold undid on purpose (``name``,
    ``sha256``, ``start_step``, ``end_step``): the ledger calls them ``rolled_back``, not
    lost, until the operator queues them again."""
    adaptation: dict[str, Any] = field(default_factory=dict)
    """What the lineage adds to its base model (``trainer.adaptation``): LoRA settings and
    the base's reference, the vocabulary extension; empty for a plain lineage."""
    drop_best: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per finished drop (by sha256) that the forgetting report scored: ``{loss, step}``,
    its lowest held-out loss so far and when (``trainer.forgetting``)."""
    optimizer_layout: list[list[str]] = field(default_factory=list)
    """The parameter names of each optimizer group, in order, at the last save: what the
    saved moments belong to (``trainer.optim.check_layout``)."""
    format_version: int = FORMAT_VERSION
    """Layout version of this file."""

    def completed(self, sha256: str) -> CompletedFile | None:
        return next((f for f in self.files_completed if f.sha256 == sha256), None)

    def parked_file(self, sha256: str) -> FileProgress | None:
        return next((f for f in self.parked if f.sha256 == sha256), None)

    def holds(self, sha256: str) -> bool:
        """Whether the lineage knows this content: trained, in progress, parked or
        deliberately undone by a rollback to gold."""
        current = self.current_file
        return (
            self.completed(sha256) is not None
            or (current is not None and current.sha256 == sha256)
            or self.parked_file(sha256) is not None
            or any(f.get("sha256") == sha256 for f in self.files_rolled_back)
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["configured_batch"] = list(self.configured_batch)
        if self.current_file is not None:
            # Written for people reading the file; the cursor alone is the truth.
            data["current_file"]["epoch"] = self.current_file.epoch
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingState:
        data = upgrade(data)
        current = data.pop("current_file", None)
        completed = data.pop("files_completed", [])
        parked = data.pop("parked", [])
        known = {f.name for f in dataclasses.fields(cls)}
        state = cls(**{k: v for k, v in data.items() if k in known})
        state.configured_batch = tuple(state.configured_batch)
        state.current_file = _progress(current) if current else None
        state.parked = [_progress(f) for f in parked]
        state.files_completed = [CompletedFile(**f) for f in completed]
        return state


def _progress(data: dict[str, Any]) -> FileProgress:
    return FileProgress(**{k: v for k, v in data.items() if k != "epoch"})


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A ``training_state.json`` of any known version, in the current layout.

    Each step upgrades one version, so a file from the first release passes through all of
    them; a newer file than this traind knows is refused rather than misread.
    """
    data = dict(data)
    version = data.get("format_version", 1)
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"training_state.json has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"training_state.json has format_version {version}; this traind reads up to "
            f"{FORMAT_VERSION}: upgrade traind"
        )
    if version == 1:
        # Version 1 had no evaluation: nothing was held out, no gold was ever promoted.
        data.setdefault("eval_history", [])
        data.setdefault("gold", None)
        data.setdefault("gold_history", [])
        for record in [data.get("current_file"), *data.get("files_completed", [])]:
            if record:
                record.setdefault("holdout_fraction", 0.0)
                record.setdefault("n_holdout", 0)
        version = 2
    if version == 2:
        # Version 2 sized every step by the split in force, which was also the one the file
        # in progress started with unless the settings changed meanwhile (the bug version 3
        # fixes); nothing was parked or rolled back on record.
        current = data.get("current_file")
        if current:
            current.setdefault(
                "sequences_per_step",
                int(data.get("micro_batch_size", 1)) * int(data.get("grad_accum_steps", 1)),
            )
        data.setdefault("parked", [])
        data.setdefault("rollback_served", None)
        data.setdefault("files_rolled_back", [])
        version = 3
    if version == 3:
        # Version 3 knew no adaptation, and rebuilt the optimizer's groups without a record.
        data.setdefault("adaptation", {})
        data.setdefault("optimizer_layout", [])
        version = 4
    if version == 4:
        # Version 4 never replayed (the fields' defaults say so) nor scored drops alone.
        data.setdefault("drop_best", {})
        version = 5
    data["format_version"] = version
    return data


def read_training_state(folder: Path) -> dict[str, Any] | None:
    """The ``training_state.json`` of a checkpoint folder as plain JSON, or None if it has
    no readable one (no manifest check)."""
    return read_json_object(folder / STATE)


def newest_training_state(root: Path) -> dict[str, Any] | None:
    """``training_state.json`` of the newest step checkpoint whose manifest vouches for
    its files' sizes (a quick check: no weights are read), or None."""
    for _, folder in step_folders(root):
        if verify(folder, deep=False) is None:
            state = read_training_state(folder)
            if state:
                return state
    return None
