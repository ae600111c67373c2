"""Evaluation: the loss of each eval set, and greedy samples of the configured prompts.

Sets are the named JSONL files of the settings (any drop format, tokenized through the
same cache) and ``recent``: the held-out part of the latest drops. Besides, the held-out
part of each drop the forgetting report samples is scored on its own
(``trainer.forgetting``). Each evaluation uses
the same sequences of a set (a fixed, seeded selection), so its losses are comparable
from one evaluation to the next. A set's loss is the mean over all its target tokens,
like a training step's. Evaluating draws from no RNG (eval mode, greedy decoding), so a
run that evaluates mid-file still resumes bit-exactly.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainer.cache import load_cached, tokenize_file
from trainer.completion import complete
from trainer.config import RECENT_SET, EvalConfig
from trainer.data import TokenizedFile, sequence_order
from trainer.records.formats import DataError
from trainer.records.state import CompletedFile
from trainer.tokenizer import Tokenizer

log = logging.getLogger(__name__)


class EvalSetError(ValueError):
    """A named eval set cannot be used (missing, invalid or too short to score)."""


@dataclass(frozen=True, kw_only=True)
class EvalResult:
    """One evaluation's output."""

    losses: dict[str, float]
    """Loss per set name (sets with nothing to score are left out)."""
    samples: list[dict[str, str]]
    """``{"prompt", "completion"}`` for each configured prompt."""
    duration_s: float
    """Wall time of the evaluation."""
    drop_losses: dict[str, tuple[float, int]] = field(default_factory=dict)
    """Per finished drop scored alone (by sha256): its held-out loss and the sequences
    scored (drops whose cache entry is gone are left out)."""


class Evaluator:
    """Holds the eval sets of one trainer and scores its model on them."""

    def __init__(
        self,
        config: EvalConfig,
        *,
        tokenizer: Tokenizer,
        block_size: int,
        cache_dir: Path,
        seed: int,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.cache_dir = cache_dir
        self.seed = seed
        self.named = {name: self._load_set(name, Path(path)) for name, path in config.sets}
        self._recent: list[tuple[str, TokenizedFile]] = []
        self._selections: dict[tuple[str, int, int], np.ndarray] = {}
        self._holdouts: OrderedDict[str, TokenizedFile | None] = OrderedDict()
        """Held-out parts of the drops the forgetting report scored lately (None: gone)."""

    def _load_set(self, name: str, path: Path) -> TokenizedFile:
        try:
            data = tokenize_file(
                path, tokenizer=self.tokenizer, block_size=self.block_size, cache_dir=self.cache_dir
            )
        except DataError as exc:
            raise EvalSetError(f"eval set {name!r} ({path}): {exc}") from exc
        if data.n_targets == 0:
            raise EvalSetError(f"eval set {name!r} ({path}) has no target tokens to score")
        log.info("eval set %r: %d sequences from %s", name, data.n_sequences, path)
        return data

    # ------------------------------------------------------------- recent
    def add_recent(self, sha256: str, holdout: TokenizedFile | None) -> None:
        """Add a file's held-out part to ``recent`` (the oldest file drops out)."""
        if holdout is None or holdout.n_targets == 0:
            return
        self._recent = [(s, h) for s, h in self._recent if s != sha256]
        self._recent.append((sha256, holdout))
        del self._recent[: -self.config.recent_files]
        # Forget the selections of files that left the set (a daemon runs for months).
        live = {d.key for d in self.named.values()} | {h.key for _, h in self._recent}
        self._selections = {k: v for k, v in self._selections.items() if k[0] in live}

    def restore_recent(self, files: list[tuple[str, str, float]]) -> None:
        """Rebuild ``recent`` on start from (name, sha256, holdout fraction) of the latest
        files, using their cache entries (a file whose entry is gone is left out)."""
        for name, sha256, fraction in files[-self.config.recent_files :]:
            if fraction <= 0:
                continue
            cached = load_cached(
                sha256,
                name=name,
                tokenizer=self.tokenizer,
                block_size=self.block_size,
                cache_dir=self.cache_dir,
                holdout_fraction=fraction,
            )
            if cached is None:
                log.info("held-out part of %s is not in the cache; it leaves the recent set", name)
                continue
            self.add_recent(sha256, cached.holdout)

    @property
    def recent_files(self) -> int:
        return len(self._recent)

    @property
    def has_work(self) -> bool:
        """Whether an evaluation would score a set or sample a prompt."""
        return bool(self.named or self._recent or self.config.prompts)

    # ------------------------------------------------------------- scoring
    def evaluate(
        self,
        model: torch.nn.Module,
        *,
        device: torch.device,
        autocast: Callable[[], contextlib.AbstractContextManager],
        drops: Sequence[CompletedFile] = (),
    ) -> EvalResult:
        """Score every set, and the held-out part of each of ``drops`` alone."""
        started = time.monotonic()
        drop_losses: dict[str, tuple[float, int]] = {}
        losses: dict[str, float] = {}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for name, data in self.named.items():
                    budget = self.config.sequences
                    losses[name] = self._score([(data, budget)], model, device, autocast)
                if self._recent:
                    # Never the batch size: what is scored must not depend on how it is cut.
                    share = max(1, self.config.sequences // len(self._recent))
                    parts = [(data, share) for _, data in self._recent]
                    losses[RECENT_SET] = self._score(parts, model, device, autocast)
                for done in drops:
                    holdout = self._holdout_of(done)
                    if holdout is None:
                        continue
                    budget = self.config.forgetting_sequences
                    loss = self._score([(holdout, budget)], model, device, autocast)
                    if loss is not None:
                        drop_losses[done.sha256] = (loss, min(budget, holdout.n_sequences))
            samples = [
                {
                    "prompt": prompt,
                    "completion": complete(
                        model,
                        self.tokenizer,
                        prompt,
                        max_new_tokens=self.config.sample_tokens,
                        device=device,
                    ),
                }
                for prompt in self.config.prompts
            ]
        finally:
            model.train(was_training)
        losses = {name: loss for name, loss in losses.items() if loss is not None}
        return EvalResult(
            losses=losses,
            samples=samples,
            duration_s=time.monotonic() - started,
            drop_losses=drop_losses,
        )

    def _holdout_of(self, done: CompletedFile) -> TokenizedFile | None:
        """A finished drop's held-out part: the ``recent`` set's own when it is among the
        latest files, else from its cache entry (kept open among the recently scored), or
        None when the entry is gone."""
        recent = dict(self._recent).get(done.sha256)
        if recent is not None:
            return recent
        if done.sha256 in self._holdouts:
            self._holdouts.move_to_end(done.sha256)
            return self._holdouts[done.sha256]
        cached = load_cached(
            done.sha256,
            name=done.name,
            tokenizer=self.tokenizer,
            block_size=self.block_size,
            cache_dir=self.cache_dir,
            holdout_fraction=done.holdout_fraction,
        )
        holdout = cached.holdout if cached is not None else None
        if holdout is None:
            log.info(
                "held-out part of %s is not in the cache; the forgetting report skips it", done.name
            )
        self._holdouts[done.sha256] = holdout
        while len(self._holdouts) > 2 * max(self.config.forgetting_drops, 1):
            self._holdouts.popitem(last=False)
        return holdout

    def _selection(self, data: TokenizedFile, budget: int) -> np.ndarray:
        """The fixed sequences of ``data`` an evaluation scores (computed once per set)."""
        key = (data.key, data.n_sequences, budget)
        chosen = self._selections.get(key)
        if chosen is None:
            order = sequence_order(data.n_sequences, seed=self.seed, sha256=data.sha256, epoch=0)
            chosen = self._selections[key] = order[:budget]
        return chosen

    def _score(
        self,
        parts: list[tuple[TokenizedFile, int]],
        model: torch.nn.Module,
        device: torch.device,
        autocast: Callable[[], contextlib.AbstractContextManager],
    ) -> float | None:
        """Mean loss over the target tokens of the first ``budget`` sequences of each part
        in its fixed order."""
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        targets = 0
        for data, budget in parts:
            chosen = self._selection(data, budget)
            for start in range(0, len(chosen), self.config.batch_size):
                rows = np.sort(chosen[start : start + self.config.batch_size])
                x_np, y_np = data.batch(rows)
                x = torch.from_numpy(x_np).to(device)
                y = torch.from_numpy(y_np).to(device)
                with autocast():
                    logits = model(x)
                loss_sum += F.cross_entropy(
                    logits.float().reshape(-1, logits.size(-1)),
                    y.reshape(-1),
                    ignore_index=-1,
                    reduction="sum",
                ).double()
                targets += int((y_np >= 0).sum())
        if targets == 0:
            return None
        return float(loss_sum.item() / targets)
