"""Text in, text out: one completion of a prompt by a :class:`trainer.model.GPT` or a
:class:`trainer.hf_model.HfCausalLM`.

``complete`` is what ``traind generate`` runs on an export or a checkpoint, and what the
trainer may call between steps to sample its eval prompts. The second use sets the rules:
it never touches a global RNG (sampling draws from its own ``torch.Generator``, seeded
from ``seed``, or from the OS when no seed is given) and never leaves the model in a
different train/eval mode, so a run that samples mid-file still resumes bit-exactly.
"""

from __future__ import annotations

import logging
import secrets

import torch

from trainer.hf_model import HfCausalLM
from trainer.model import GPT
from trainer.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def complete(
    model: GPT | HfCausalLM,
    tokenizer: Tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = None,
    device: torch.device | str | None = None,
) -> str:
    """The text ``model`` writes after ``prompt``, without the prompt.

    ``temperature`` 0 is greedy decoding (``seed`` and ``top_k`` are then unused); above
    0, tokens are sampled from the ``top_k`` most likely (all if None) with a generator
    seeded from ``seed``, so the same seed gives the same text. An empty prompt starts
    from the end-of-text token; a prompt longer than the model's context keeps its end.
    Generation stops at the end-of-text token, and special tokens are left out of the
    returned text. ``device`` is where the prompt's ids go; by default the model's.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be at least 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be at least 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if max_new_tokens == 0:
        return ""
    target = torch.device(device) if device is not None else _model_device(model)
    eos_id = tokenizer.eos_id
    ids = tokenizer.encode(prompt) or [eos_id]
    block_size = model.config.block_size
    if len(ids) > block_size:
        log.debug("prompt of %d tokens cropped to its last %d", len(ids), block_size)
        ids = ids[-block_size:]
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=target)
        # secrets, not random or torch.seed(): drawing a seed must not advance any RNG
        # whose state a checkpoint records.
        generator.manual_seed(seed if seed is not None else secrets.randbits(63))
    idx = torch.tensor([ids], dtype=torch.long, device=target)
    out = model.generate(
        idx,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        eos_id=eos_id,
        generator=generator,
    )
    new = out[0, len(ids) :].tolist()
    if eos_id in new:
        new = new[: new.index(eos_id)]
    return tokenizer.decode(new, skip_special_tokens=True)


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")
