"""What a lineage adds to its base model, and how a model with it is built and saved.

Two adaptations, recorded in ``training_state.json`` (``adaptation``) so every open
rebuilds the same structure before any weight is loaded (ARCHITECTURE.md rules 8 and 11):

* a vocabulary extension (``trainer.vocab``): how many rows the vocabulary had
  (``base_rows``, bit-frozen), how many it has now, and the tokens added;
* LoRA (``trainer.lora``): the adapter settings, and the base model as a reference (where
  it comes from and the sha256 of its weights) instead of a copy. A LoRA checkpoint holds
  only what trains (adapters, ``modules_to_save``, new token rows, and the base rows once
  unfrozen); the base is loaded from its reference and checked against the hash.

Order, always: base weights, then the extension, then the adapters, then the trainable
flags for the step, then the checkpoint's tensors, then the optimizer (whose groups are
recorded by name: ``trainer.optim``). The model object is never replaced on the way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from trainer.checkpoint import (
    model_tensors_names,
    trainable_tensor_names,
)
from trainer.config import LineageSpec, LoraConfig
from trainer.lora import inject, inner_model
from trainer.vocab import (
    extend_rows,
    extended_modules,
    new_rows_of,
    set_base_rows_trainable,
    token_modules,
)

log = logging.getLogger(__name__)


class AdaptationError(RuntimeError):
    """An adaptation that cannot be built or does not fit the lineage; says what to do."""


@dataclass(frozen=True, kw_only=True)
class Adaptation:
    """What a lineage adds to its base model (empty: a plain lineage)."""

    lora: LoraConfig | None = None
    """The adapters' settings, or None for full training."""
    base: dict[str, Any] | None = None
    """LoRA only: ``{"source": ..., "sha256": ...}``, where the frozen base comes from
    (``hf:<folder>``, ``checkpoint:<folder>`` or ``init``) and the hash of its weights."""
    base_rows: int | None = None
    """Rows the vocabulary had before its first extension (these stay frozen), or None."""
    rows: int | None = None
    """Rows after the extensions."""
    tokens: tuple[str, ...] = ()
    """The tokens added, in id order."""
    extensions: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    """Each extension: ``{at_step, tokens, rows}``."""

    @property
    def extended(self) -> bool:
        return self.base_rows is not None

    @property
    def active(self) -> bool:
        return self.lora is not None or self.extended

    def to_dict(self) -> dict[str, Any]:
        if not self.active:
            return {}
        return {
            "lora": None if self.lora is None else self.lora.to_dict(),
            "base": self.base,
            "base_rows": self.base_rows,
            "rows": self.rows,
            "tokens": list(self.tokens),
            "extensions": [dict(e) for e in self.extensions],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Adaptation:
        if not data:
            return cls()
        lora = data.get("lora")
        return cls(
            lora=None if lora is None else LoraConfig.from_dict(lora),
            base=data.get("base"),
            base_rows=data.get("base_rows"),
            rows=data.get("rows"),
            tokens=tuple(data.get("tokens") or ()),
            extensions=tuple(data.get("extensions") or ()),
        )

    def with_tokens(
        self, tokens: list[str], *, base_rows: int, model_rows: int, at_step: int
    ) -> Adaptation:
        """This adaptation after adding ``tokens`` at ``at_step`` to a model of
        ``model_rows`` rows whose tokenizer has ``base_rows`` tokens (before the first
        extension): their ids follow the tokens added before."""
        first = self.base_rows if self.base_rows is not None else base_rows
        used = first + len(self.tokens) + len(tokens)
        rows = max(model_rows, used)
        record = {"at_step": at_step, "tokens": list(tokens), "rows": rows}
        return Adaptation(
            lora=self.lora,
            base=self.base,
            base_rows=first,
            rows=rows,
            tokens=(*self.tokens, *tokens),
            extensions=(*self.extensions, record),
        )

    @property
    def token_rows(self) -> tuple[int, int]:
        """The rows of the tokens added (``base_rows`` to ``base_rows + len(tokens)``)."""
        assert self.base_rows is not None
        return self.base_rows, self.base_rows + len(self.tokens)


def apply(
    model: nn.Module, adaptation: Adaptation, *, seed: int, step: int, unfreeze_at: int | None
) -> None:
    """Build ``adaptation``'s structure on a model holding its base weights, then set what
    trains at ``step``."""
    extend(model, adaptation)
    if adaptation.lora is not None:
        refuse_saved_token_modules(model, adaptation)
        inject(model, adaptation.lora, seed=seed)
    set_trainable(model, adaptation, step=step, unfreeze_at=unfreeze_at)


def extend(model: nn.Module, adaptation: Adaptation, *, since: int = 0) -> None:
    """Give the model the rows of ``adaptation``'s tokens; those after the first ``since``
    (the ones not in the model yet) start as the mean of the base rows."""
    if not adaptation.extended:
        return
    assert adaptation.base_rows is not None and adaptation.rows is not None
    first, last = adaptation.token_rows
    extend_rows(
        model, base_rows=adaptation.base_rows, rows=adaptation.rows, fresh=(first + since, last)
    )


def set_trainable(
    model: nn.Module, adaptation: Adaptation, *, step: int, unfreeze_at: int | None
) -> None:
    """New token rows train (peft leaves only its adapters trainable); the base rows train
    from ``unfreeze_at`` on."""
    for _module, rows in extended_modules(model):
        rows.rows.requires_grad_(True)
    release_base_rows(model, step=step, unfreeze_at=unfreeze_at)


def release_base_rows(model: nn.Module, *, step: int, unfreeze_at: int | None) -> None:
    """The base rows train from ``unfreeze_at`` on (never while it is None)."""
    set_base_rows_trainable(model, unfreeze_at is not None and step >= unfreeze_at)


def refuse_saved_token_modules(model: nn.Module, adaptation: Adaptation) -> None:
    """``modules_to_save`` may not name the embedding or the head of an extended
    vocabulary: their new rows train already, and a full copy would train the frozen rows
    too. Checked before the extension and before the adapters (peft's wrapper of a saved
    module is seen through)."""
    lora = adaptation.lora
    if lora is None or not lora.modules_to_save or not adaptation.extended:
        return
    embedding, head = token_modules(model)
    tokens = {id(getattr(m, "original_module", m)) for m in (embedding, head) if m is not None}
    for name, module in inner_model(model).named_modules():
        wanted = any(name == w or name.endswith(f".{w}") for w in lora.modules_to_save)
        if wanted and id(getattr(module, "original_module", module)) in tokens:
            raise AdaptationError(
                f"model.lora.modules_to_save names {name!r}, and the vocabulary is extended: "
                "its new rows train already and its base rows stay frozen; take it out of "
                "modules_to_save (or extend the vocabulary of a lineage without it)"
            )


def saved_names(model: nn.Module, adaptation: Adaptation) -> list[str]:
    """The tensors a checkpoint of this lineage holds: all of them, or with LoRA only the
    ones that train (each storage once)."""
    names = model_tensors_names(model)
    if adaptation.lora is None:
        return names
    trainable = trainable_tensor_names(model)
    return [n for n in names if n in trainable]


def trainable_count(model: nn.Module) -> int:
    """Parameters that train now (a shared one once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def check_same_adaptation(adaptation: Adaptation, spec: LineageSpec, *, where: Path) -> None:
    """Refuse settings that would change a lineage's adapters, or add tokens the lineage
    does not have by a setting meant for new lineages."""
    recorded = adaptation.lora
    if _normal(recorded) != _normal(spec.lora):
        was = "no LoRA (full training)" if recorded is None else f"LoRA {recorded.to_dict()}"
        now = "no [model.lora]" if spec.lora is None else f"[model.lora] {spec.lora.to_dict()}"
        raise AdaptationError(
            f"the lineage in {where} was trained with {was}, but the settings now say {now}. "
            "Adapters cannot change under a lineage (the saved adapters and optimizer moments "
            "belong to those settings): set [model.lora] back to what the lineage was "
            "trained with, or start a new lineage (`traind train --new-lineage FILE`, or "
            "paths.checkpoints pointing at an empty folder; a LoRA lineage's export holds "
            "merged weights to start from with --init-from)"
        )
    missing = [t for t in spec.new_tokens if t not in adaptation.tokens]
    if missing:
        raise AdaptationError(
            f"model.new_tokens names {len(missing)} token(s) the lineage in {where} does not "
            f"have (e.g. {missing[:3]}); that setting applies when a lineage starts. Add them "
            "to this lineage with `traind extend-vocab --tokens FILE`"
        )


def _normal(lora: LoraConfig | None) -> dict[str, Any] | None:
    """LoRA settings compared as sets where order means nothing (the module lists)."""
    if lora is None:
        return None
    data = lora.to_dict()
    return {
        **data,
        "target_modules": sorted(data["target_modules"]),
        "modules_to_save": sorted(data["modules_to_save"]),
    }


def describe(adaptation: Adaptation) -> str:
    """One line for logs: what the lineage adds to its base."""
    parts = []
    if adaptation.lora is not None:
        lora = adaptation.lora
        parts.append(
            f"LoRA r={lora.r} alpha={lora.alpha:g} on {adaptation.base['source'] if adaptation.base else '?'}"
        )
    if adaptation.extended:
        parts.append(f"vocabulary extended from {adaptation.base_rows} to {adaptation.rows} rows")
    return ", ".join(parts) or "no adaptation"


def extension_event(adaptation: Adaptation, model: nn.Module) -> dict[str, Any]:
    """The fields of a ``vocab_extended`` event for the newest extension."""
    newest = adaptation.extensions[-1]
    embedding, head = token_modules(model)
    tied = head is not None and new_rows_of(head) is new_rows_of(embedding)
    return {
        "step": newest["at_step"],
        "tokens_added": len(newest["tokens"]),
        "tokens": newest["tokens"][:50],
        "base_rows": adaptation.base_rows,
        "rows": adaptation.rows,
        "tied_head": tied,
    }


def embedding_rows(model: nn.Module) -> int:
    """Rows of the input embedding now."""
    embedding, _head = token_modules(model)
    return int(embedding.weight.shape[0])
