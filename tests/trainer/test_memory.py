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
