import pytest

from trainer.memory import estimate_training_memory
from trainer.presets import model_config_for

CONFIG = model_config_for("small", vocab_size=260)


def test_batch_multiplier_counts_like_a_bigger_batch():
    one = estimate_training_memory(CONFIG, n_params=10_000_000, micro_batch=8, batch_multiplier=2)
    two = estimate_training_memory(CONFIG, n_params=10_000_000, micro_batch=16)
    assert one == two
    base = estimate_training_memory(CONFIG, n_params=10_000_000, micro_batch=8)
    assert one.activations == 2 * base.activations
    assert one.params == base.params


def test_weights_grads_and_adamw_are_16_bytes_a_parameter():
    est = estimate_training_memory(CONFIG, n_params=1_000, micro_batch=1)
    assert est.params + est.grads + est.optimizer == 16_000
    assert est.total > 16_000
    assert "GiB" in est.describe()


def test_fp32_activations_double():
    half = estimate_training_memory(CONFIG, n_params=1, micro_batch=4, activation_bytes=2)
    full = estimate_training_memory(CONFIG, n_params=1, micro_batch=4, activation_bytes=4)
    logits = 2 * 4 * CONFIG.block_size * CONFIG.vocab_size * 4
    assert full.activations - logits == 2 * (half.activations - logits)


def test_rejects_nonsense():
    with pytest.raises(ValueError):
        estimate_training_memory(CONFIG, n_params=1, micro_batch=0)


HF_CONFIG = {  # a 1B-class Llama: Llama 3.2 1B's shape
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "max_position_embeddings": 131072,
}


def hf_lineage(*, micro_batch: int = 8, block_size: int = 2048):
    from types import SimpleNamespace

    from trainer.hf_model import HfModelConfig

    config = HfModelConfig(config=HF_CONFIG, block_size=block_size)
    return SimpleNamespace(
        model_config=config,
        model=SimpleNamespace(
            num_params=lambda: 1_235_814_400,
            # Every parameter trains (no LoRA): what the plan counts gradients and moments of.
            parameters=lambda: [SimpleNamespace(numel=lambda: 1_235_814_400, requires_grad=True)],
        ),
        state=SimpleNamespace(micro_batch_size=micro_batch),
    )


def test_the_plan_reads_a_hugging_face_config_and_checkpointing_shrinks_activations():
    lineage = hf_lineage()
    full = estimate_training_memory(lineage.model_config, n_params=1, micro_batch=8)
    kept = estimate_training_memory(
        lineage.model_config, n_params=1, micro_batch=8, activation_checkpointing=True
    )
    tokens = 8 * 2048
    per_layer = tokens * (18 * 2048 + 4 * 8192)  # the MLP width is the config's own
    logits = 2 * tokens * 128256 * 4
    assert full.activations == 16 * per_layer + logits
    assert kept.activations == 16 * tokens * 2048 * 2 + per_layer + logits
    # The layers' part shrinks; the fp32 logits of a 128k vocabulary stay what they are.
    assert kept.activations - logits < (full.activations - logits) / 3
    assert (full.activations_full, full.activations_checkpointed) == (
        kept.activations_full,
        kept.activations_checkpointed,
    )


def test_only_what_trains_has_gradients_and_moments():
    lineage = hf_lineage()
    full = estimate_training_memory(lineage.model_config, n_params=1000, micro_batch=1)
    lora = estimate_training_memory(
        lineage.model_config, n_params=1000, n_trainable=10, micro_batch=1
    )
    assert lora.params == full.params == 4000  # the frozen base is still in memory
    assert (lora.grads, lora.optimizer) == (40, 80)
    assert (full.grads, full.optimizer) == (4000, 8000)
    assert full.activations == lora.activations


def fake_cuda(monkeypatch, gib: float):
    from types import SimpleNamespace

    import torch

    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda device: SimpleNamespace(total_memory=int(gib * 2**30)),
    )
    return torch.device("cuda", 0)


def test_a_model_that_cannot_fit_at_micro_batch_one_is_refused_with_the_table(monkeypatch):
    from trainer.config import TrainConfig
    from trainer.opening import MemoryPlanError, check_memory

    device = fake_cuda(monkeypatch, gib=16)
    with pytest.raises(MemoryPlanError) as refused:
        check_memory(hf_lineage(), train=TrainConfig(), device=device, half_precision=True)
    message = str(refused.value)
    assert "even at micro-batch 1" in message and "16.00 GiB" in message
    for row in ("weights (fp32)", "AdamW moments", "activations, checkpointed", "total"):
        assert row in message
    assert "train.activation_checkpointing = true" in message


def test_one_that_fits_only_at_a_smaller_micro_batch_starts_with_a_warning(monkeypatch, caplog):
    from trainer.config import TrainConfig
    from trainer.opening import check_memory

    device = fake_cuda(monkeypatch, gib=80)
    estimate = check_memory(
        hf_lineage(micro_batch=64), train=TrainConfig(), device=device, half_precision=True
    )
    assert estimate.total > 80 * 2**30
    assert "expect OOM recovery" in caplog.text and "AdamW moments" in caplog.text
