"""traind's GPT in the Hugging Face layout of the architecture it matches, and back.

The built-in GPT (:mod:`trainer.model`) is, depending on its :class:`ModelConfig`, the same
network as one of two ``transformers`` models, so its weights can be renamed (never
recomputed) into a folder that ``from_pretrained`` loads:

* ``rope`` + ``swiglu`` + ``rmsnorm`` is ``LlamaForCausalLM`` with as many key/value heads
  as query heads. The fused ``attn.qkv`` matrix is cut into ``q_proj``/``k_proj``/``v_proj``
  (its rows are q, then k, then v). No q/k row permutation is needed: traind rotates the
  two halves of each head (GPT-NeoX layout), which is what Llama's ``rotate_half`` does.
  Llama has no embedding or residual dropout, so only ``attention_dropout`` carries
  traind's dropout (inference is unaffected).
* ``learned`` + ``gelu`` + ``layernorm`` is ``GPT2LMHeadModel``. GPT-2's ``Conv1D`` stores
  its weight as (in, out), the transpose of ``nn.Linear``; its fused ``c_attn`` splits into
  q, k, v in traind's order, so it is only transposed. GPT-2 always has biases: without
  ``config.bias`` they are written as zeros, and dropped again (after checking they are
  still zero) on the way back.

Any other combination, and ``logit_softcap``, has no equivalent: :func:`hf_architecture`
says why, and :func:`to_hf` refuses with that reason.

Both directions read one table of :class:`_Entry` rows per architecture, so they are each
other's inverse by construction: ``from_hf(c, tensors=to_hf(c, tensors=t)[1])`` returns
``t``'s tensors bit for bit. The LM head is tied to the token embedding in both models, so
``lm_head.weight`` is never written; it is accepted on input (traind saves a tied tensor
once, but a plain ``state_dict()`` holds both names) when it equals the embedding.

Pure functions over tensor dicts: no file I/O, no ``transformers`` import (the trainer
must not depend on it), so the caller decides where and in which format to save.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from trainer.config import ModelConfig
from trainer.model import swiglu_hidden

LLAMA = "llama"
GPT2 = "gpt2"
LM_HEAD = "lm_head.weight"
_EMBEDDING = {LLAMA: "model.embed_tokens.weight", GPT2: "transformer.wte.weight"}

GPT2_LAYER_NORM_EPS = 1e-5
"""traind's LayerNorm keeps ``nn.LayerNorm``'s default eps, GPT-2's own value."""
RMS_NORM_EPS = torch.finfo(torch.float32).eps
"""``nn.RMSNorm(eps=None)`` uses the eps of the input's dtype; traind runs it in float32."""


def hf_architecture(config: ModelConfig) -> tuple[str | None, str]:
    """``("llama", "")``, ``("gpt2", "")``, or ``(None, why)`` when nothing in HF matches."""
    if config.logit_softcap is not None:
        # Checked first: whatever the body, neither HF model squashes its logits.
        return None, (
            f"logit_softcap={config.logit_softcap} has no equivalent in LlamaForCausalLM "
            "or GPT2LMHeadModel"
        )
    body = (config.pos_encoding, config.mlp_type, config.norm_type)
    if body == ("rope", "swiglu", "rmsnorm"):
        return LLAMA, ""
    if body == ("learned", "gelu", "layernorm"):
        return GPT2, ""
    return None, (
        f"{config.pos_encoding} position encoding with a {config.mlp_type} MLP and "
        f"{config.norm_type} matches no Hugging Face architecture (Llama is "
        "rope + swiglu + rmsnorm, GPT-2 is learned + gelu + layernorm)"
    )


def to_hf(
    config: ModelConfig, *, tensors: dict[str, torch.Tensor]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config.json dict, tensors under HF names)`` for traind's ``tensors``.

    ``tensors`` is GPT's state as traind saves it, with or without the tied
    ``lm_head.weight``. Renamed tensors are the caller's own objects (no copy); cut or
    transposed ones are new, contiguous and share no storage, as safetensors requires.
    Raises ValueError when the architecture has no HF equivalent or the names do not
    match ``config``.
    """
    arch = _require_architecture(config)
    tensors = _without_tied_head(tensors, embedding="wte.weight")
    entries = _entries(config, arch=arch)
    _check_names(tensors, expected={e.traind for e in entries if e.traind}, side="traind")
    dtype = tensors["wte.weight"].dtype
    out: dict[str, torch.Tensor] = {}
    for entry in entries:
        out.update(entry.to_hf(tensors, dtype=dtype))
    return _hf_config(config, arch=arch, dtype=dtype), out


def from_hf(
    traind_config: ModelConfig, *, tensors: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """traind's tensors (no ``lm_head.weight``) from HF-layout ``tensors`` of ``traind_config``.

    Load the result with ``GPT.load_state_dict(..., strict=False)``: the only key it lacks
    is the LM head tied to ``wte.weight``. Raises ValueError when the names do not match,
    when a bias GPT-2 forces on a bias-free model is not zero (dropping it would change
    the model), or when ``lm_head.weight`` is present but not tied to the embedding.
    """
    arch = _require_architecture(traind_config)
    tensors = _without_tied_head(tensors, embedding=_EMBEDDING[arch])
    entries = _entries(traind_config, arch=arch)
    _check_names(tensors, expected={n for e in entries for n in e.hf}, side="Hugging Face")
    out: dict[str, torch.Tensor] = {}
    for entry in entries:
        out.update(entry.from_hf(tensors))
    return out


@dataclass(frozen=True, kw_only=True)
class _Entry:
    """One traind tensor and the HF tensor(s) it becomes; read in both directions."""

    traind: str | None
    """traind's name; None for a zero bias that only the HF model has."""
    hf: tuple[str, ...]
    """One HF name, or three (q, k, v) for a fused qkv cut in three."""
    transpose: bool = False
    """Whether HF stores the matrix transposed (GPT-2's Conv1D)."""
    zero_shape: tuple[int, ...] = ()
    """Shape of the zero bias when ``traind`` is None."""

    def to_hf(
        self, tensors: dict[str, torch.Tensor], *, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        if self.traind is None:
            return {self.hf[0]: torch.zeros(self.zero_shape, dtype=dtype)}
        t = tensors[self.traind]
        if len(self.hf) == 3:
            # clone: chunks are views of one storage, which safetensors refuses to save.
            return {n: part.clone() for n, part in zip(self.hf, t.chunk(3, dim=0), strict=True)}
        return {self.hf[0]: t.t().contiguous() if self.transpose else t}

    def from_hf(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.traind is None:
            if torch.count_nonzero(tensors[self.hf[0]]):
                raise ValueError(
                    f"{self.hf[0]} is not zero, but the traind config has bias=False: "
                    "dropping it would change the model"
                )
            return {}
        if len(self.hf) == 3:
            return {self.traind: torch.cat([tensors[n] for n in self.hf], dim=0)}
        t = tensors[self.hf[0]]
        return {self.traind: t.t().contiguous() if self.transpose else t}


def _require_architecture(config: ModelConfig) -> str:
    arch, reason = hf_architecture(config)
    if arch is None:
        raise ValueError(reason)
    return arch


def _without_tied_head(
    tensors: dict[str, torch.Tensor], *, embedding: str
) -> dict[str, torch.Tensor]:
    """``tensors`` less ``lm_head.weight``, which must be the (tied) embedding if present."""
    if LM_HEAD not in tensors:
        return tensors
    head, emb = tensors[LM_HEAD], tensors.get(embedding)
    # Both targets tie the head to the embedding, so an untied head cannot be carried over.
    if emb is None or head.shape != emb.shape or not torch.equal(head, emb):
        raise ValueError(f"{LM_HEAD} is not tied to {embedding}; only tied LM heads convert")
    return {k: v for k, v in tensors.items() if k != LM_HEAD}


def _check_names(tensors: dict[str, torch.Tensor], *, expected: set[str], side: str) -> None:
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{side} tensors do not match the config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
            + (" (and more)" if len(missing) > 5 or len(unexpected) > 5 else "")
        )


def _entries(config: ModelConfig, *, arch: str) -> list[_Entry]:
    return _llama_entries(config) if arch == LLAMA else _gpt2_entries(config)


def _llama_entries(config: ModelConfig) -> list[_Entry]:
    # RMSNorm has no bias in either model; with config.bias every linear has one, which is
    # what Llama's attention_bias (q, k, v, o) and mlp_bias (gate, up, down) give.
    params = ("weight", "bias") if config.bias else ("weight",)
    entries = [_Entry(traind="wte.weight", hf=("model.embed_tokens.weight",))]
    for i in range(config.n_layer):
        b, h = f"blocks.{i}", f"model.layers.{i}"
        entries += [
            _Entry(traind=f"{b}.norm1.weight", hf=(f"{h}.input_layernorm.weight",)),
            _Entry(traind=f"{b}.norm2.weight", hf=(f"{h}.post_attention_layernorm.weight",)),
        ]
        for p in params:
            qkv = tuple(f"{h}.self_attn.{x}_proj.{p}" for x in "qkv")
            entries += [
                _Entry(traind=f"{b}.attn.qkv.{p}", hf=qkv),
                _Entry(traind=f"{b}.attn.proj.{p}", hf=(f"{h}.self_attn.o_proj.{p}",)),
            ]
            entries += [
                _Entry(traind=f"{b}.mlp.{x}.{p}", hf=(f"{h}.mlp.{x}_proj.{p}",))
                for x in ("gate", "up", "down")
            ]
    entries.append(_Entry(traind="norm_f.weight", hf=("model.norm.weight",)))
    return entries


def _gpt2_entries(config: ModelConfig) -> list[_Entry]:
    c = config.n_embd
    entries = [
        _Entry(traind="wte.weight", hf=("transformer.wte.weight",)),
        _Entry(traind="wpe.weight", hf=("transformer.wpe.weight",)),
    ]
    for i in range(config.n_layer):
        b, h = f"blocks.{i}", f"transformer.h.{i}"
        # (traind module, HF module, output width, whether HF's Conv1D transposes it)
        modules = [
            ("norm1", "ln_1", c, False),
            ("attn.qkv", "attn.c_attn", 3 * c, True),
            ("attn.proj", "attn.c_proj", c, True),
            ("norm2", "ln_2", c, False),
            ("mlp.up", "mlp.c_fc", 4 * c, True),
            ("mlp.down", "mlp.c_proj", c, True),
        ]
        for ours, theirs, width, transpose in modules:
            entries += _gpt2_module(
                config, traind=f"{b}.{ours}", hf=f"{h}.{theirs}", width=width, transpose=transpose
            )
    entries += _gpt2_module(
        config, traind="norm_f", hf="transformer.ln_f", width=c, transpose=False
    )
    return entries


def _gpt2_module(
    config: ModelConfig, *, traind: str, hf: str, width: int, transpose: bool
) -> list[_Entry]:
    weight = _Entry(traind=f"{traind}.weight", hf=(f"{hf}.weight",), transpose=transpose)
    # GPT-2 has no bias switch: a bias-free traind module gets an all-zero one, which adds
    # nothing, so the HF model computes the same function.
    bias = _Entry(
        traind=f"{traind}.bias" if config.bias else None, hf=(f"{hf}.bias",), zero_shape=(width,)
    )
    return [weight, bias]


def _hf_config(config: ModelConfig, *, arch: str, dtype: torch.dtype) -> dict[str, Any]:
    common = {
        "vocab_size": config.vocab_size,
        # Both models tie the LM head to the embedding, as traind does; lm_head is not saved.
        "tie_word_embeddings": True,
        # The token ids belong to the tokenizer, not to ModelConfig; None rather than the
        # HF defaults (Llama's 1/2, GPT-2's 50256), which would be wrong for most tokenizers.
        "bos_token_id": None,
        "eos_token_id": None,
        "dtype": str(dtype).removeprefix("torch."),
    }
    if arch == LLAMA:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": config.n_embd,
            "intermediate_size": swiglu_hidden(config.n_embd),
            "num_hidden_layers": config.n_layer,
            "num_attention_heads": config.n_head,
            # traind's attention is plain multi-head: one key/value head per query head.
            "num_key_value_heads": config.n_head,
            "head_dim": config.n_embd // config.n_head,
            "max_position_embeddings": config.block_size,
            "hidden_act": "silu",
            "rms_norm_eps": RMS_NORM_EPS,
            # transformers 5 reads the rotary base from rope_parameters, not rope_theta.
            "rope_parameters": {"rope_type": "default", "rope_theta": float(config.rope_theta)},
            "attention_bias": config.bias,
            "mlp_bias": config.bias,
            "attention_dropout": config.dropout,
            **common,
        }
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": 4 * config.n_embd,
        "n_positions": config.block_size,
        # Exact (erf) GELU, as traind's nn.functional.gelu; GPT-2's default is the tanh one.
        "activation_function": "gelu",
        "layer_norm_epsilon": GPT2_LAYER_NORM_EPS,
        # Written out although they are the defaults: they change the maths if flipped.
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        **common,
    }
