"""Open a lineage: resume the newest valid checkpoint, or start one.

The checkpoint is the truth of what was trained. Three ways in:

* resume: weights, optimizer moments, step, data position and RNG from the newest
  valid ``step-*`` folder (broken ones are skipped with a warning);
* architecture changed since the checkpoint: keep every weight whose name and shape
  still fit, start a fresh optimizer, and say so loudly (ARCHITECTURE.md rule 3);
* new: from the preset (``--init-from`` takes another checkpoint's weights instead),
  with a fresh optimizer at step 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer.adaptation import AdaptationError, extension_event
from trainer.adapted_model import adapt_new_model
from trainer.checkpoint import (
    LoadedCheckpoint,
    latest_checkpoint,
    read_checkpoint,
    resolve_checkpoint,
)
from trainer.config import LineageSpec, ModelConfig, TrainConfig
from trainer.hf_lineage import (
    ModelMismatchError,
    check_same_model,
    is_hf_source,
    rebuild_hf,
    start_hf,
)
from trainer.hf_model import HfCausalLM, HfModelConfig, is_hf_config
from trainer.lora import LoraError
from trainer.model import GPT
from trainer.optim import OptimizerStateError, build_optimizer
from trainer.presets import model_config_for
from trainer.records.state import TrainingState
from trainer.records.traces import lineage_traces, refusal, retire
from trainer.restore import (
    apply_batch_settings,
    log_changes,
    restore_adapted,
    restore_builtin,
    restore_hf,
    spec_record,
    wanted_config,
)
from trainer.rng import restore_rng
from trainer.tokenizer import Tokenizer, TokenizerError, load_tokenizer
from trainer.vocab import VocabError

log = logging.getLogger(__name__)


class LineageError(RuntimeError):
    """The requested start is not possible (e.g. ``--init-from`` onto an existing lineage)."""


class LostCheckpointsError(LineageError):
    """A lineage exists but no step checkpoint of it can be resumed (rule 15)."""


@dataclass(kw_only=True)
class Lineage:
    """A model ready to train, with everything that came with it."""

    model: GPT | HfCausalLM
    """The bare model on its device: the built-in GPT or a Hugging Face model."""
    optimizer: torch.optim.AdamW
    """The optimizer, with saved moments when they fit."""
    tokenizer: Tokenizer
    """The lineage's tokenizer (a checkpoint's wins over the settings)."""
    model_config: ModelConfig | HfModelConfig
    """Architecture in force."""
    state: TrainingState
    """Progress and data position."""
    resumed_from: Path | None
    """The checkpoint folder resumed, or None for a new lineage."""
    notices: list[dict[str, Any]]
    """Loud things to put in the event log (optimizer resets, dropped weights)."""
    retired: Path | None = None
    """Where an earlier lineage's folders were moved when this one started on purpose."""
    announcements: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """Events opening has to tell (``vocab_extended`` of a new lineage's tokens)."""
    unfreeze_base_rows_at: int | None = None
    """Global step from which an extended vocabulary's base rows train (None: never)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LineageError(f"train.device is {name!r} but no CUDA device is available")
    return device


def open_lineage(
    checkpoints: Path,
    *,
    spec: LineageSpec,
    train: TrainConfig,
    device: torch.device,
    init_from: Path | None = None,
    new_lineage: bool = False,
    expected: str | None = None,
    resume: Path | None = None,
) -> Lineage:
    """Resume the lineage under ``checkpoints``, or start one where none exists.

    ``resume`` names the checkpoint to resume (a torchrun rank opens the one rank 0 did);
    otherwise the newest that verifies.

    Never a silent new lineage (ARCHITECTURE.md rule 15): where the folder holds traces of one
    (gold, export, rolled-back or broken checkpoints) or ``expected`` says one must exist
    (e.g. the ledger records trained files), but no step checkpoint can be resumed,
    LineageError says what to do. ``new_lineage`` starts one on purpose, after moving the
    old lineage's folders to ``retired/``.
    """
    retired = None
    if new_lineage:
        retired = retire(checkpoints, lineage_traces(checkpoints))
    broken: dict[str, str] = {}
    found = None
    if resume is not None:
        found = read_checkpoint(resume)
    elif init_from is None:
        found = latest_checkpoint(checkpoints, on_skip=lambda p, why: broken.update({p.name: why}))
    if found is None:
        traces = lineage_traces(checkpoints, broken=broken)
        if init_from is not None and traces:
            raise LineageError(
                f"{checkpoints} already holds a lineage ({'; '.join(traces.found)}); "
                "--init-from starts a new one. Point paths.checkpoints at an empty folder, "
                "drop --init-from to resume, or add --new-lineage to move the old lineage's "
                "folders aside first."
            )
        if traces or (expected and init_from is None):
            raise LostCheckpointsError(refusal(checkpoints, traces, expected=expected))
    if init_from is not None:
        lineage = _start_from(resolve_checkpoint(init_from), spec=spec, train=train, device=device)
    elif found is None:
        lineage = _start_fresh(spec=spec, train=train, device=device)
    else:
        lineage = _resume(found, spec=spec, train=train, device=device, where=checkpoints)
    lineage.retired = retired
    lineage.unfreeze_base_rows_at = spec.unfreeze_base_rows_at_step
    if lineage.resumed_from is None and (spec.lora is not None or spec.new_tokens):
        _adapt(lineage, spec=spec, train=train, device=device)
    if train.activation_checkpointing:
        lineage.model.enable_activation_checkpointing()
    return lineage


def _new_state(train: TrainConfig, spec: LineageSpec) -> TrainingState:
    return TrainingState(
        model_spec=spec_record(spec),
        seed=train.seed,
        micro_batch_size=train.micro_batch_size,
        grad_accum_steps=train.grad_accum_steps,
        configured_batch=(train.micro_batch_size, train.grad_accum_steps),
        train_config=train.to_dict(),
    )


def _start_fresh(*, spec: LineageSpec, train: TrainConfig, device: torch.device) -> Lineage:
    if is_hf_source(spec.source):
        return _start_hf(spec=spec, train=train, device=device)
    tokenizer = load_tokenizer(spec.tokenizer)
    config = model_config_for(
        spec.preset, vocab_size=tokenizer.vocab_size, dropout=spec.dropout, overrides=spec.overrides
    )
    torch.manual_seed(train.seed)
    model = GPT(config).to(device)
    log.info(
        "new lineage: preset %s, %s parameters, tokenizer %s (vocab %d)",
        spec.preset,
        f"{model.num_params():,}",
        spec.tokenizer,
        tokenizer.vocab_size,
    )
    return Lineage(
        model=model,
        optimizer=build_optimizer(model, train),
        tokenizer=tokenizer,
        model_config=config,
        state=_new_state(train, spec),
        resumed_from=None,
        notices=[],
    )


def _start_hf(*, spec: LineageSpec, train: TrainConfig, device: torch.device) -> Lineage:
    torch.manual_seed(train.seed)
    model, tokenizer, record = start_hf(spec)
    model.to(device)
    state = _new_state(train, spec)
    state.model_spec = record
    return Lineage(
        model=model,
        optimizer=build_optimizer(model, train),
        tokenizer=tokenizer,
        model_config=model.config,
        state=state,
        resumed_from=None,
        notices=[],
    )


def _start_from(
    source: LoadedCheckpoint, *, spec: LineageSpec, train: TrainConfig, device: torch.device
) -> Lineage:
    if source.training_state.get("adaptation"):
        raise LineageError(
            f"--init-from {source.path}: that lineage has LoRA adapters or an extended "
            "vocabulary, whose checkpoints need their structure rebuilt; start from its export "
            "instead (merged weights: `traind export --checkpoint ...` writes one)"
        )
    state = _new_state(train, spec)
    torch.manual_seed(train.seed)
    if is_hf_config(source.config):
        model = rebuild_hf(source.config, spec)
        config = model.config
        tokenizer = _checkpoint_tokenizer(source)
        state.model_spec = dict(source.training_state.get("model_spec") or {})
    else:
        config = ModelConfig.from_dict({**source.config, "dropout": spec.dropout})
        tokenizer = _tokenizer_for(source, spec=spec, config=config)
        model = GPT(config)
    source.load_into(model)
    model.to(device)
    state.init_from = {
        "path": str(source.path),
        "lineage_id": source.training_state.get("lineage_id"),
        "global_step": source.step,
    }
    log.info(
        "new lineage from the weights of %s (step %d), fresh optimizer at step 0",
        source.path,
        source.step,
    )
    return Lineage(
        model=model,
        optimizer=build_optimizer(model, train),
        tokenizer=tokenizer,
        model_config=config,
        state=state,
        resumed_from=None,
        notices=[],
    )


def _tokenizer_for(
    source: LoadedCheckpoint, *, spec: LineageSpec, config: ModelConfig
) -> Tokenizer:
    """The source checkpoint's tokenizer, unless the settings name another one: a new
    lineage is the one moment a tokenizer may change, as long as the model's embedding has
    a row for each of its tokens."""
    own = _checkpoint_tokenizer(source)
    if not spec.tokenizer_set:
        return own
    chosen = load_tokenizer(spec.tokenizer)
    if chosen.fingerprint == own.fingerprint:
        return own
    if chosen.vocab_size > config.vocab_size:
        raise LineageError(
            f"model.tokenizer ({spec.tokenizer}) has {chosen.vocab_size} tokens, but the model "
            f"of {source.path} has {config.vocab_size} embedding rows; pick a tokenizer with at "
            "most that many tokens, or leave model.tokenizer unset to keep the checkpoint's"
        )
    log.warning(
        "new lineage with model.tokenizer %s instead of the tokenizer saved in %s "
        "(embedding rows are kept by token id)",
        spec.tokenizer,
        source.path,
    )
    return chosen


def _checkpoint_tokenizer(found: LoadedCheckpoint) -> Tokenizer:
    return Tokenizer.from_files(found.tokenizer_json, found.tokenizer_config_json)


def _resume(
    found: LoadedCheckpoint,
    *,
    spec: LineageSpec,
    train: TrainConfig,
    device: torch.device,
    where: Path,
) -> Lineage:
    tokenizer = _checkpoint_tokenizer(found)
    state = TrainingState.from_dict(found.training_state)
    try:
        check_same_model(state.model_spec, spec, checkpoint_config=found.config, where=where)
    except ModelMismatchError as exc:
        raise LineageError(str(exc)) from None
    try:
        return _resume_checked(
            found, state=state, spec=spec, train=train, device=device, tokenizer=tokenizer
        )
    except OptimizerStateError as exc:
        raise LineageError(str(exc)) from None


def _resume_checked(
    found: LoadedCheckpoint,
    *,
    state: TrainingState,
    spec: LineageSpec,
    train: TrainConfig,
    device: torch.device,
    tokenizer: Tokenizer,
) -> Lineage:
    torch.manual_seed(state.seed)
    wanted: ModelConfig | HfModelConfig
    model: torch.nn.Module
    if state.adaptation or spec.lora is not None:
        try:
            model, optimizer = restore_adapted(
                found, state=state, spec=spec, train=train, device=device
            )
        except (AdaptationError, LoraError, VocabError) as exc:
            raise LineageError(str(exc)) from None
        wanted, notices = model.config, []
    elif is_hf_config(found.config):
        model, optimizer, notices = restore_hf(found, spec=spec, train=train, device=device)
        wanted = model.config
        state.model_spec = {**state.model_spec, "overrides": dict(spec.overrides)}
    else:
        saved_config = ModelConfig.from_dict(found.config)
        wanted = wanted_config(state, spec, saved=saved_config, tokenizer=tokenizer, found=found)
        model, optimizer, notices = restore_builtin(
            found, wanted=wanted, saved=saved_config, train=train, device=device
        )
    for notice in notices:
        log.warning("OPTIMIZER RESET: %s", notice["reason"])
        state.optimizer_resets.append(notice)
    apply_batch_settings(state, train)
    if train.seed != state.seed:
        log.warning(
            "train.seed is %d but this lineage was created with seed %d; the lineage keeps its "
            "seed because its data order derives from it",
            train.seed,
            state.seed,
        )
    log_changes(state.train_config, train)
    restore_rng(state.rng)
    log.info(
        "resuming %s at global step %d (%d files done%s)",
        found.path.name,
        state.global_step,
        len(state.files_completed),
        f", {state.current_file.name} at step {state.global_step}/{state.current_file.target_step}"
        if state.current_file
        else "",
    )
    return Lineage(
        model=model,
        optimizer=optimizer,
        tokenizer=tokenizer,
        model_config=wanted,
        state=state,
        resumed_from=found.path,
        notices=notices,
    )


def _adapt(
    lineage: Lineage, *, spec: LineageSpec, train: TrainConfig, device: torch.device
) -> None:
    """Give a new lineage its LoRA adapters and new tokens before its first checkpoint."""
    state = lineage.state
    started = Path(state.init_from["path"]) if state.init_from else None
    try:
        adaptation, lineage.tokenizer = adapt_new_model(
            lineage.model, lineage.tokenizer, spec=spec, seed=state.seed, init_from=started
        )
    except (AdaptationError, LoraError, TokenizerError, VocabError) as exc:
        raise LineageError(str(exc)) from None
    lineage.model.to(device)
    state.adaptation = adaptation.to_dict()
    lineage.optimizer = build_optimizer(lineage.model, train)
    if adaptation.extended:
        lineage.announcements.append(("vocab_extended", extension_event(adaptation, lineage.model)))
