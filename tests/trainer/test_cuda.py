"""CUDA-only paths: bf16 autocast, the memory cap and a real OOM recovery.

Skipped on CPU-only machines; the CPU suite covers the same logic with simulated OOMs.
"""

import pytest
import torch
from conftest import text_rows, write_jsonl

from trainer.config import LineageSpec

pytestmark = pytest.mark.gpu


def test_bf16_autocast_on_cuda_keeps_fp32_master_weights(tmp_path, open_trainer):
    trainer = open_trainer(device="cuda")
    assert trainer.steps.half_precision
    trainer.train_file(
        trainer.prepare(write_jsonl(tmp_path / "a.jsonl", text_rows(200))), name="a.jsonl"
    )
    assert all(p.is_cuda and p.dtype == torch.float32 for p in trainer.model.parameters())
    assert trainer.state.nan_skips_total == 0


def test_memory_cap_is_enforced(tmp_path, open_trainer):
    open_trainer(device="cuda", cuda_memory_fraction=0.05)
    total = torch.cuda.get_device_properties(0).total_memory
    with pytest.raises(torch.OutOfMemoryError):
        torch.empty(int(total * 0.2), dtype=torch.uint8, device="cuda")


def test_real_oom_halves_the_micro_batch_until_it_fits(tmp_path, open_trainer, run_paths):
    trainer = open_trainer(
        spec=LineageSpec(preset="small"),
        device="cuda",
        cuda_memory_fraction=0.02,
        micro_batch_size=512,
        grad_accum_steps=1,
    )
    data = trainer.prepare(write_jsonl(tmp_path / "a.jsonl", text_rows(20_000)))
    calls = iter(range(10**6))
    trainer.train_file(data, name="a.jsonl", should_stop=lambda: next(calls) >= 3)
    assert trainer.state.micro_batch_size < 512
    assert trainer.state.micro_batch_size * trainer.state.grad_accum_steps == 512
    assert trainer.state.oom_recoveries >= 1
