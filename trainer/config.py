"""Internal configuration of the trainer: frozen dataclasses, no validation library.

Settings are validated at the edge (``service.config.settings``, pydantic) and handed to the
trainer as these plain, immutable objects.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

PosEncoding = Literal["learned", "rope"]
MlpType = Literal["gelu", "swiglu"]
NormType = Literal["layernorm", "rmsnorm"]
LrSchedule = Literal["constant", "cosine", "inverse_sqrt"]
Precision = Literal["auto", "fp32", "bf16"]
LostCheckpoints = Literal["refuse", "gold"]
Readback = Literal["auto", "step", "log"]


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Architecture only: this is exactly what ``config.json`` holds for a lineage."""

    n_layer: int
    """Number of transformer blocks."""
    n_head: int
    """Attention heads per block; ``n_embd`` must divide evenly by it."""
    n_embd: int
    """Width of the residual stream."""
    block_size: int
    """Longest sequence (context length) the model sees, in tokens."""
    vocab_size: int
    """Rows of the token embedding; at least the tokenizer's vocabulary."""
    dropout: float = 0.0
    """Dropout probability on attention, MLP and embeddings (0 for none)."""
    bias: bool = False
    """Whether linear layers and norms carry a bias."""
    pos_encoding: PosEncoding = "learned"
    """``learned`` absolute position embeddings, or ``rope`` rotary embeddings."""
    rope_theta: float = 10000.0
    """Base of the rotary frequencies (used only with ``rope``)."""
    mlp_type: MlpType = "gelu"
    """``gelu`` (4x wide) or ``swiglu`` (gated, about 8/3x wide)."""
    norm_type: NormType = "layernorm"
    """``layernorm`` or ``rmsnorm``."""
    logit_softcap: float | None = None
    """If set, logits are squashed to ``softcap * tanh(logits / softcap)``."""

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.pos_encoding == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError("rope needs an even head size (n_embd / n_head)")
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config.json has unknown architecture keys: {unknown}")
        return cls(**data)

    def shape_key(self) -> dict[str, Any]:
        """The fields that decide parameter names and shapes (not dropout)."""
        data = self.to_dict()
        data.pop("dropout")
        return data


MAX_REPLAY_FRACTION = 0.9
"""Above this, a file would take ten times its own steps: surely a mistake."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Hyper-parameters in force; stored in ``training_state.json`` with every checkpoint."""

    micro_batch_size: int = 8
    """Sequences per forward/backward pass."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step."""
    epochs_per_file: float = 1.0
    """Passes over each file; sets its budget of optimizer steps (ARCHITECTURE.md rule 1)."""
    learning_rate: float = 3e-4
    """Peak learning rate, reached after warm-up."""
    min_lr_ratio: float = 0.1
    """Floor of the cosine schedule as a fraction of ``learning_rate``."""
    lr_schedule: LrSchedule = "constant"
    """Shape after warm-up: ``constant`` (endless training), ``cosine``, ``inverse_sqrt``."""
    lr_decay_steps: int = 100_000
    """Length of the cosine decay, in global steps after warm-up."""
    warmup_steps: int = 100
    """Linear warm-up, in global steps (counted once per lineage, not per file)."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay (applied to matrices, not to norms and biases)."""
    beta1: float = 0.9
    """AdamW first-moment decay."""
    beta2: float = 0.95
    """AdamW second-moment decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables clipping)."""
    seed: int = 1337
    """Seed of the lineage: data order, dropout and initialisation derive from it."""
    checkpoint_interval: int = 500
    """Save every this many global steps (and always at the end of a file)."""
    keep_checkpoints: int = 3
    """Newest ``step-*`` checkpoints kept; gold and export are never rotated."""
    async_checkpoints: bool = True
    """Write interval checkpoints in the background: training waits only while the state
    is copied to host memory (a copy of the weights and optimizer state, held while it
    is written), and goes on while it is written and committed, one at a time; every
    other checkpoint, such as a file's end, is written before training goes on."""
    device: str = "auto"
    """``auto`` (CUDA if present), ``cpu``, ``cuda`` or ``cuda:N``."""
    precision: Precision = "auto"
    """``auto`` is bf16 autocast on CUDA and fp32 on CPU."""
    log_interval: int = 10
    """Console progress line every this many steps."""
    nan_skip_limit: int = 3
    """Non-finite steps within ``nan_window`` steps that rewind the weights to the newest
    checkpoint (event ``rollback``)."""
    nan_window: int = 100
    """Window, in global steps, over which non-finite skips are counted."""
    cuda_memory_fraction: float | None = None
    """If set, ``torch.cuda.set_per_process_memory_fraction`` caps the worker's memory."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass instead of keeping them:
    about a third more compute for a fraction of the activation memory."""
    compile: bool = False
    """Compile the training forward and backward with ``torch.compile`` (inductor) at one
    fixed shape: every micro-batch is padded to ``micro_batch_size`` rows of the model's
    block size, with no targets in the padding, so losses and gradients are unchanged and
    one compilation serves every file. The first step of a process waits for the compiler
    (tens of seconds; minutes for a large model); whether later steps gain enough to pay
    for it depends on the model and device: ``bench/throughput.py --compile`` measures it.
    In a torchrun group the model trains uncompiled."""
    readback: Readback = "auto"
    """When the host reads a step's loss and gradient norm back from the device: ``step``
    after every step; ``log`` only at log intervals, evaluations, checkpoints and the
    file's end, so the host never waits for the accelerator in between (a non-finite
    step is still skipped, on the device, and reported when read back); ``auto`` is
    ``log`` on CUDA in one process, ``step`` elsewhere (a torchrun group always reads
    back every step)."""
    shard_size_mb: float = 5000.0
    """Checkpoint and export weights above this many megabytes are written as shards with
    an index (``model-00001-of-0000N.safetensors``), as ``save_pretrained`` does."""
    on_lost_checkpoints: LostCheckpoints = "refuse"
    """When every ``step-*`` checkpoint of a lineage is gone or broken: ``refuse`` to start
    (saying what to do), or continue from ``gold``. Never a silent new lineage."""
    replay_fraction: float = 0.0
    """Share of each optimizer step's sequences replayed from drops the lineage finished
    earlier, against forgetting: 0.05 for a weak shift between drops, 0.25 for a strong one
    (even 0.01 helps). A file's budget counts its own sequences only, so replay adds steps:
    ``1 / (1 - replay_fraction)`` times as many per file. Held-out examples never replay."""
    replay_recent_weight: float = 0.0
    """Tilt of the replay toward recent drops: 0 draws every earlier training sequence
    equally likely; above 0, each drop weighs ``(1 - replay_recent_weight)`` times as much
    as the next newer one (0.5 halves the weight per drop of age)."""

    def __post_init__(self) -> None:
        if self.micro_batch_size < 1 or self.grad_accum_steps < 1:
            raise ValueError("micro_batch_size and grad_accum_steps must be at least 1")
        if self.epochs_per_file <= 0:
            raise ValueError("epochs_per_file must be positive")
        if self.keep_checkpoints < 1:
            raise ValueError("keep_checkpoints must be at least 1")
        if self.checkpoint_interval < 1:
            raise ValueError("checkpoint_interval must be at least 1")
        if self.shard_size_mb <= 0:
            raise ValueError("shard_size_mb must be positive")
        if not 0.0 <= self.replay_fraction <= MAX_REPLAY_FRACTION:
            raise ValueError(f"replay_fraction must be in [0, {MAX_REPLAY_FRACTION}]")
        if not 0.0 <= self.replay_recent_weight < 1.0:
            raise ValueError("replay_recent_weight must be in [0, 1)")

    @property
    def shard_bytes(self) -> int:
        return max(1, int(self.shard_size_mb * 10**6))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True, kw_only=True)
class RunPaths:
    """Where a lineage lives on disk."""

    checkpoints: Any
    """Folder holding ``step-*``, ``gold`` and ``export`` (a ``pathlib.Path``)."""
    state: Any
    """Folder for the event log and the tokenized cache (a ``pathlib.Path``)."""

    @property
    def events(self) -> Any:
        return self.state / "events.jsonl"

    @property
    def cache(self) -> Any:
        return self.state / "cache"


BUILTIN_SOURCE = "builtin"
"""``model.source`` of traind's own GPT."""
HF_PREFIX = "hf:"
"""``model.source`` values that name a Hugging Face model folder start with this."""


@dataclass(frozen=True, kw_only=True)
class LineageSpec:
    """How to build or find the model when no checkpoint exists yet."""

    source: str = BUILTIN_SOURCE
    """``builtin`` (traind's GPT, from ``preset``) or ``hf:<folder>``: a Hugging Face causal
    LM saved in a local folder (``trainer.hf_model``)."""
    preset: str = "tiny"
    """Named architecture preset (see ``trainer.presets``)."""
    tokenizer: str = "bytes"
    """``bytes`` (built-in byte-level), a Hugging Face ``tokenizer.json``, or a folder holding
    one (with its ``tokenizer_config.json``: chat template, special tokens)."""
    tokenizer_set: bool = False
    """Whether ``tokenizer`` was chosen in the settings (not left at its default): only
    then does a new lineage started from another checkpoint (``--init-from``) take it
    instead of the checkpoint's own."""
    dropout: float = 0.0
    """Dropout applied on top of the preset."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Architecture fields that replace the preset's (e.g. ``{"block_size": 512}``)."""
    lora: LoraConfig | None = None
    """Train low-rank adapters on a frozen base instead of every weight (``[model.lora]``)."""
    new_tokens: tuple[str, ...] = ()
    """Tokens a new lineage adds to its tokenizer, with embedding rows of their own
    (``trainer.vocab``); an existing lineage adds them with ``traind extend-vocab``."""
    unfreeze_base_rows_at_step: int | None = None
    """Global step from which the embedding rows the vocabulary had before an extension
    train too; None keeps them bit-frozen for ever."""


@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """Low-rank adapters (LoRA, through peft) on a frozen base model."""

    r: int = 8
    """Rank of each adapter."""
    alpha: float = 16.0
    """Scaling numerator: an adapter's update is multiplied by ``alpha / r``."""
    dropout: float = 0.0
    """Dropout on the adapters' input."""
    target_modules: tuple[str, ...] = ()
    """Names (or name endings) of the linear layers that get adapters; empty: every linear
    layer but the output head."""
    modules_to_save: tuple[str, ...] = ()
    """Modules trained in full beside the adapters (e.g. an extra head); saved with them."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError("lora r must be at least 1")
        if self.alpha <= 0:
            raise ValueError("lora alpha must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("lora dropout must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {
            **data,
            "target_modules": list(self.target_modules),
            "modules_to_save": list(self.modules_to_save),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in data.items() if k in known}
        for key in ("target_modules", "modules_to_save"):
            if key in kept:
                kept[key] = tuple(kept[key])
        return cls(**kept)


RECENT_SET = "recent"
"""Name of the rolling set made of the held-out part of recent drops."""


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """What to evaluate, and when (ARCHITECTURE.md rule 10's inputs)."""

    interval: int = 500
    """Evaluate every this many global steps."""
    sequences: int = 160
    """Sequences scored per eval set and evaluation: a fixed, seeded selection of each set
    (``recent`` shares them among its files), the same whatever the batch sizes, so losses
    stay comparable across evaluations, restarts and batch changes."""
    batch_size: int = 8
    """Sequences per forward pass: how the selection is cut up, for speed and memory only
    (the losses agree to float error at any value)."""
    at_file_end: bool = True
    """Evaluate at the end of every file and before a lineage's first step (the baseline),
    besides every ``interval`` steps."""
    sets: tuple[tuple[str, Any], ...] = ()
    """Named eval sets: (name, path of a JSONL file in any drop format), in order."""
    holdout_fraction: float = 0.0
    """Fraction of each drop's examples held out (by content hash) and never trained on."""
    recent_files: int = 5
    """The ``recent`` set is the held-out examples of this many latest files."""
    gold_set: str = ""
    """The set whose loss is ``val_loss`` and decides gold; empty: ``recent`` when there is
    a holdout, else the first named set."""
    prompts: tuple[str, ...] = ()
    """Prompts completed greedily at each evaluation and logged."""
    sample_tokens: int = 48
    """Tokens generated per prompt."""
    tensorboard: bool = False
    """Write TensorBoard scalars to ``<state>/tensorboard`` (needs the tensorboard extra)."""
    forgetting_drops: int = 8
    """With a holdout: finished drops whose held-out part each evaluation scores on its own,
    to report forgetting (the oldest and newest always among them, the rest spread evenly
    between); 0 turns the report off."""
    forgetting_sequences: int = 32
    """Held-out sequences scored per drop of the forgetting report (a fixed selection)."""

    def __post_init__(self) -> None:
        if self.interval < 1 or self.sequences < 1 or self.batch_size < 1:
            raise ValueError("eval interval, sequences and batch_size must be at least 1")
        if self.forgetting_drops == 1 or self.forgetting_drops < 0:
            raise ValueError("forgetting_drops must be 0 (off) or at least 2")
        if self.forgetting_sequences < 1:
            raise ValueError("forgetting_sequences must be at least 1")
        if not 0.0 <= self.holdout_fraction <= 0.5:
            raise ValueError("holdout_fraction must be in [0, 0.5]")
        names = [name for name, _ in self.sets]
        if RECENT_SET in names:
            raise ValueError(f"{RECENT_SET!r} is the name of the held-out set; rename yours")
        if self.gold_set and self.gold_set not in (*names, RECENT_SET):
            raise ValueError(
                f"gold_set {self.gold_set!r} is neither a named set nor {RECENT_SET!r}"
            )
        if self.gold_set == RECENT_SET and self.holdout_fraction == 0:
            raise ValueError("gold_set 'recent' needs a holdout_fraction above 0")

    @property
    def deciding_set(self) -> str | None:
        """The set whose loss is the validation loss, or None (no val loss at all)."""
        if self.gold_set:
            return self.gold_set
        if self.holdout_fraction > 0:
            return RECENT_SET
        return self.sets[0][0] if self.sets else None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["sets"] = {name: str(path) for name, path in self.sets}
        return data


@dataclass(frozen=True, kw_only=True)
class GoldConfig:
    """Guards on promoting a new best validation loss to ``checkpoints/gold``."""

    overfit_ratio: float = 5.0
    """No gold while val loss / train loss is above this."""
    consecutive_rises: int = 2
    """No gold when val loss rose at each of this many evaluations just before the dip."""
    regression_threshold: float = 0.2
    """No gold when any eval set is worse than at the current gold by more than this
    fraction."""
    forgetting_threshold: float | None = None
    """If set, no gold when a drop of the forgetting report is worse than its own best by
    more than this fraction (0.1: 10%); the reason names the drop. Off by default."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """The half-precision copy for inference, rewritten whenever its source changes."""

    enabled: bool = True
    """Keep ``checkpoints/export`` up to date (a request, POST /v1/export, always writes
    one, from the model in memory)."""
    source: Literal["latest", "gold"] = "latest"
    """What the export holds (the TOML key is ``from``): ``latest``, the model at the end
    of the newest file, rewritten after each file and after a rollback; or ``gold``, the guarded
    best checkpoint, rewritten at each new gold and after a rollback (none until the
    first gold). ``latest`` is the default because it needs no eval set and never lags;
    serve ``gold`` where a worse day must not reach users."""
    dtype: Literal["fp16", "bf16"] = "bf16"
    """Half-precision type of the exported weights."""
    adapter_only: bool = False
    """With LoRA on a Hugging Face model: export the adapter alone (``adapter_config.json``
    and ``adapter_model.safetensors``, for ``PeftModel.from_pretrained`` on the base model)
    instead of merged weights."""
