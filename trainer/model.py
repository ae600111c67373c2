"""The built-in GPT: a small, readable decoder-only transformer.

Everything the architecture can vary is in :class:`trainer.config.ModelConfig`; this module
turns one into a ``torch.nn.Module``. Design points:

* pre-norm blocks (norm -> attention / MLP -> residual add), a final norm, and an LM head
  tied to the token embedding;
* attention through ``nn.functional.scaled_dot_product_attention`` with ``is_causal=True``. Callers
  right-pad variable-length batches, so the causal mask alone keeps real tokens from ever
  attending to padding and no explicit attention mask is needed;
* ``forward`` returns float32 logits and no loss: the trainer computes its own
  token-weighted loss;
* on CPU, LayerNorm and attention with dropout are spelled out (see :class:`LayerNorm`
  and :func:`_causal_attention_with_dropout`) so that training gives the same bits
  whatever the intra-op thread count, and a run resumed under another count stays on its
  trajectory. SwiGLU's SiLU is left to torch: at thread counts that split its input off
  the vector width (3, 6...) its scalar tails still round differently;
* state_dict keys are short and stable (``wte.weight``, ``blocks.0.attn.qkv.weight``,
  ``lm_head.weight``) because checkpoints are keyed by them; the rotary tables are
  non-persistent buffers, so they never reach a checkpoint.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from trainer.config import ModelConfig


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` whose gain and bias gradients on CPU do not depend on the thread count.

    ATen's fused CPU backward sums the gain/bias gradients row by row into one partial
    buffer per OpenMP thread, then adds the buffers: how the rows are split, and so the
    rounding, follows the number of threads. Two runs (or a run and its resume) with a
    different thread count then drift apart by a few ulps per step, and exact resume
    (ARCHITECTURE.md rule 9) breaks. Here the normalisation runs without the affine and the gain
    and bias are applied as a plain multiply and add, so autograd reduces their gradients
    column by column, the same whatever the split. CUDA keeps the fused kernel, which is
    already deterministic there and faster.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        y = nn.functional.layer_norm(x, self.normalized_shape, None, None, self.eps)
        y = y * self.weight
        return y if self.bias is None else y + self.bias


def _norm(config: ModelConfig) -> nn.Module:
    if config.norm_type == "rmsnorm":
        # RMSNorm has no bias term; config.bias only affects LayerNorm and the linears.
        return nn.RMSNorm(config.n_embd)
    return LayerNorm(config.n_embd, bias=config.bias)


def swiglu_hidden(n_embd: int, *, multiple: int = 64) -> int:
    """Hidden width of the SwiGLU MLP: 8/3 * n_embd rounded up to ``multiple``.

    8/3 keeps the parameter count of the three SwiGLU matrices equal to the two matrices
    of a 4x GELU MLP; the rounding keeps matmul shapes friendly to the hardware.
    """
    return multiple * math.ceil(8 * n_embd / 3 / multiple)


def _rope_tables(config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    head_dim = config.n_embd // config.n_head
    inv_freq = 1.0 / (
        config.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    )
    angles = torch.outer(torch.arange(config.block_size, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()  # each (block_size, head_dim / 2)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of each head (GPT-NeoX layout) of ``x``: (B, H, T, D)."""
    half = x.shape[-1] // 2
    # Rotate in float32: under bf16 autocast the angles at far positions lose precision.
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.type_as(x)


def _causal_attention_with_dropout(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float
) -> torch.Tensor:
    """Causal attention with dropout on the attention weights, for training on CPU.

    Not SDPA: on CPU, SDPA with dropout runs its math path, whose softmax backward takes
    another code path on one thread than on several, so the gradients (and every later
    step) would depend on the thread count. ``exp(log_softmax)`` is the same softmax, and
    both of its backward passes give the same bits however the rows are split.
    """
    t = q.shape[-2]
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5)
    future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu_(1)
    attn = torch.exp(torch.log_softmax(scores.masked_fill_(future, float("-inf")), dim=-1))
    return torch.matmul(nn.functional.dropout(attn, p, training=True), v)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None):
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        # (B, T, C) -> (B, H, T, D)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        if rope is not None:
            cos, sin = rope
            q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        if self.training and self.dropout > 0 and x.device.type == "cpu":
            y = _causal_attention_with_dropout(q, k, v, self.dropout)
        else:
            y = nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.swiglu = config.mlp_type == "swiglu"
        hidden = swiglu_hidden(config.n_embd) if self.swiglu else 4 * config.n_embd
        if self.swiglu:
            self.gate = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.up = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.down = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (
            nn.functional.silu(self.gate(x)) * self.up(x)
            if self.swiglu
            else nn.functional.gelu(self.up(x))
        )
        return self.drop(self.down(h))


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm1 = _norm(config)
        self.attn = CausalSelfAttention(config)
        self.norm2 = _norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None):
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """Decoder-only transformer built from a :class:`ModelConfig`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.pos_encoding == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        else:
            cos, sin = _rope_tables(config)
            # Non-persistent: derived from the config, so checkpoints need not carry them.
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = _norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: one matrix both embeds tokens and scores them.
        self.lm_head.weight = self.wte.weight
        self.activation_checkpointing = False
        """Recompute each block in the backward pass (``train.activation_checkpointing``)."""
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2 init. Residual output projections are scaled down by sqrt(2 * n_layer) so
        # the residual stream's variance does not grow with depth (two adds per block).
        resid_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if module is self.lm_head:
                continue  # tied to wte, initialised there
            if isinstance(module, nn.Linear):
                std = resid_std if name.endswith(("attn.proj", "mlp.down")) else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, *, non_embedding: bool = False) -> int:
        """Number of parameters, the tied embedding/LM-head matrix counted once.

        With ``non_embedding`` the token and position embedding tables are left out
        (the Kaplan et al. convention for scaling laws).
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() de-duplicates ties
        if non_embedding:
            n -= self.wte.weight.numel()
            if self.config.pos_encoding == "learned":
                n -= self.wpe.weight.numel()
        return n

    def enable_activation_checkpointing(self) -> None:
        """Keep only each block's input for the backward pass, and recompute the rest."""
        self.activation_checkpointing = True

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab_size), float32, for token ids ``idx`` (B, T)."""
        t = idx.shape[1]
        if t > self.config.block_size:
            raise ValueError(
                f"sequence length {t} exceeds the model's block_size {self.config.block_size}"
            )
        x = self.wte(idx)
        rope = None
        if self.config.pos_encoding == "learned":
            x = x + self.wpe(torch.arange(t, device=idx.device))
        else:
            rope = (self.rope_cos[:t], self.rope_sin[:t])
        x = self.drop(x)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            # Under checkpoint the saved RNG state replays the same dropout masks.
            x = checkpoint(block, x, rope, use_reentrant=False) if recompute else block(x, rope)
        # float32 logits: stable loss and softcap even when the body ran in bf16.
        logits = self.lm_head(self.norm_f(x)).float()
        if self.config.logit_softcap is not None:
            c = self.config.logit_softcap
            logits = c * torch.tanh(logits / c)
        return logits

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Extend ``idx`` (B, T) by up to ``max_new_tokens``; returns prompt + new tokens.

        ``temperature`` 0 is greedy decoding. Rows that have emitted ``eos_id`` keep
        emitting it, so the batch stays rectangular; decoding stops once every row has.
        The model is put in eval mode for the call and its mode restored afterwards.
        """
        was_training = self.training
        self.eval()
        try:
            done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
            for _ in range(max_new_tokens):
                # No KV cache: re-run the (cropped) context each step. Simple, and fast
                # enough for the short samples the daemon produces.
                logits = self(idx[:, -self.config.block_size :])[:, -1, :]
                if temperature <= 0.0:
                    next_id = logits.argmax(dim=-1, keepdim=True)
                else:
                    logits = logits / temperature
                    if top_k is not None:
                        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, [-1]]
                        logits = logits.masked_fill(logits < kth, float("-inf"))
                    probs = nn.functional.softmax(logits, dim=-1)
                    next_id = torch.multinomial(probs, num_samples=1, generator=generator)
                if eos_id is not None:
                    next_id = next_id.masked_fill(done.unsqueeze(1), eos_id)
                    done |= next_id.squeeze(1) == eos_id
                idx = torch.cat((idx, next_id), dim=1)
                if eos_id is not None and bool(done.all()):
                    break
        finally:
            self.train(was_training)
        return idx
