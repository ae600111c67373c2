"""The random-number generators' states, for exact resume (ARCHITECTURE.md rule 9).

Captured into ``training_state.json`` (JSON-safe: base64 bytes, lists) with every
checkpoint and restored when a lineage resumes: torch on the CPU and every CUDA device,
numpy, and python's ``random``.
"""

from __future__ import annotations

import base64
import random
from typing import Any

import numpy as np
import torch


def _b64(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode()


def _tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def capture_rng() -> dict[str, Any]:
    """JSON-safe snapshot of the torch (CPU and CUDA), numpy and python generators."""
    version, internal, gauss = random.getstate()
    state = {
        "torch_cpu": _b64(torch.get_rng_state()),
        "numpy": _numpy_state(),
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    if not state:
        return
    torch.set_rng_state(_tensor(state["torch_cpu"]))
    if "torch_cuda" in state and torch.cuda.is_available():
        cuda = [_tensor(s) for s in state["torch_cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    if "numpy" in state:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))


def _numpy_state() -> list[Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]
