"""Tests of the built-in GPT (trainer.model) and the architecture presets (trainer.presets)."""

from __future__ import annotations

import itertools

import pytest
import torch
from safetensors.torch import load_model, save_model

from trainer.config import ModelConfig
from trainer.model import GPT, swiglu_hidden
from trainer.presets import (
    PRESETS,
    model_config_for,
    padded_vocab_size,
)

VOCAB = 64


def describe_presets() -> list[tuple[str, str]]:
    """(name, description) of every preset, as a --help text would list them."""
    return [(name, spec.get("description", "")) for name, spec in PRESETS.items()]


def make_config(**overrides) -> ModelConfig:
    fields = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "vocab_size": VOCAB}
    fields.update(overrides)
    return ModelConfig(**fields)


def make_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(make_config(**overrides)).eval()


VARIANTS = [
    pytest.param({"pos_encoding": p, "mlp_type": m, "norm_type": n}, id=f"{p}-{m}-{n}")
    for p, m, n in itertools.product(
        ("learned", "rope"), ("gelu", "swiglu"), ("layernorm", "rmsnorm")
    )
]
DEFAULT_AND_MODERN = [
    pytest.param({}, id="default"),
    pytest.param(
        {"pos_encoding": "rope", "mlp_type": "swiglu", "norm_type": "rmsnorm"}, id="modern"
    ),
]


# --- forward -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("bias", [False, True])
def test_forward_shape_every_variant(variant: dict, bias: bool) -> None:
    model = make_model(bias=bias, **variant)
    idx = torch.randint(0, VOCAB, (3, 17))
    logits = model(idx)
    assert logits.shape == (3, 17, VOCAB)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_swiglu_hidden_width() -> None:
    assert swiglu_hidden(128) == 384  # 341.3 rounded up to a multiple of 64
    assert swiglu_hidden(768) == 2048
    model = make_model(mlp_type="swiglu")
    assert model.blocks[0].mlp.up.out_features % 64 == 0


def test_norm_types_and_bias() -> None:
    ln = make_model(norm_type="layernorm", bias=True)
    assert isinstance(ln.norm_f, torch.nn.LayerNorm) and ln.norm_f.bias is not None
    assert ln.blocks[0].attn.qkv.bias is not None
    rms = make_model(norm_type="rmsnorm")
    assert isinstance(rms.norm_f, torch.nn.RMSNorm)
    assert rms.blocks[0].attn.qkv.bias is None


def test_softcap_bounds_logits() -> None:
    model = make_model(logit_softcap=0.5)
    # Blow up the head so that uncapped logits would be far beyond the cap.
    with torch.no_grad():
        model.wte.weight.mul_(100.0)
    logits = model(torch.randint(0, VOCAB, (2, 16)))
    assert logits.abs().max() <= 0.5
    assert logits.abs().max() > 0.4  # actually saturating, not just small


@pytest.mark.parametrize("variant", DEFAULT_AND_MODERN)
def test_causality(variant: dict) -> None:
    model = make_model(**variant)
    idx = torch.randint(0, VOCAB, (2, 20))
    changed = idx.clone()
    changed[:, 12:] = (changed[:, 12:] + 1) % VOCAB
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


@pytest.mark.parametrize("variant", DEFAULT_AND_MODERN)
def test_right_padding_does_not_change_real_logits(variant: dict) -> None:
    model = make_model(**variant)
    real = torch.randint(1, VOCAB, (1, 10))
    padded = torch.cat([real, torch.zeros(1, 15, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded)[:, :10], model(real))
    # and in a batch with a longer row
    batch = torch.cat([padded, torch.randint(1, VOCAB, (1, 25))], dim=0)
    torch.testing.assert_close(model(batch)[:1, :10], model(real))


def test_too_long_sequence_raises() -> None:
    model = make_model()
    model(torch.zeros(1, 32, dtype=torch.long))  # exactly block_size is fine
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_dropout_active_only_in_training() -> None:
    model = make_model(dropout=0.5)
    idx = torch.randint(0, VOCAB, (2, 16))
    torch.testing.assert_close(model(idx), model(idx))
    model.train()
    assert not torch.allclose(model(idx), model(idx))


# --- initialisation and state dict ---------------------------------------------------------


@pytest.mark.parametrize("variant", DEFAULT_AND_MODERN)
def test_init_is_deterministic_under_seed(variant: dict) -> None:
    a, b, c = make_model(1, **variant), make_model(1, **variant), make_model(2, **variant)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0)
    assert not torch.equal(sa["wte.weight"], sc["wte.weight"])


def test_init_statistics() -> None:
    torch.manual_seed(0)
    model = GPT(make_config(n_embd=128, n_head=4, n_layer=8, bias=True))
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    resid = 0.02 / (2 * 8) ** 0.5
    assert model.blocks[0].attn.proj.weight.std().item() == pytest.approx(resid, rel=0.05)
    assert model.blocks[0].mlp.down.weight.std().item() == pytest.approx(resid, rel=0.05)
    assert torch.count_nonzero(model.blocks[0].attn.qkv.bias) == 0


def test_state_dict_keys_no_rope_buffers_and_tied_head() -> None:
    model = make_model(pos_encoding="rope", mlp_type="swiglu")
    keys = set(model.state_dict())
    assert not any("rope" in k for k in keys)
    assert {"wte.weight", "lm_head.weight", "blocks.0.attn.qkv.weight"} <= keys
    assert {
        "blocks.1.mlp.gate.weight",
        "blocks.1.mlp.up.weight",
        "blocks.1.mlp.down.weight",
    } <= keys
    assert "wpe.weight" not in keys
    assert model.lm_head.weight is model.wte.weight
    sd = model.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["wte.weight"].data_ptr()
    assert "wpe.weight" in make_model().state_dict()


@pytest.mark.parametrize("variant", DEFAULT_AND_MODERN)
def test_safetensors_round_trip(tmp_path, variant: dict) -> None:
    model = make_model(3, **variant)
    path = tmp_path / "model.safetensors"
    save_model(model, str(path))
    fresh = make_model(4, **variant)
    missing, unexpected = load_model(fresh, str(path))
    assert not missing and not unexpected
    assert fresh.lm_head.weight is fresh.wte.weight  # loading must not break the tie
    idx = torch.randint(0, VOCAB, (2, 24))
    torch.testing.assert_close(fresh(idx), model(idx), rtol=0, atol=0)


def test_num_params_counts_tied_weights_once() -> None:
    model = make_model(bias=True)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert model.num_params() == sum(unique.values())
    cfg = model.config
    embeddings = cfg.vocab_size * cfg.n_embd + cfg.block_size * cfg.n_embd
    assert model.num_params(non_embedding=True) == model.num_params() - embeddings
    rope = make_model(pos_encoding="rope")
    assert rope.num_params(non_embedding=True) == rope.num_params() - VOCAB * 32


# --- generation ----------------------------------------------------------------------------


def test_greedy_generate_is_deterministic() -> None:
    model = make_model()
    prompt = torch.randint(0, VOCAB, (2, 5))
    a = model.generate(prompt, max_new_tokens=40)  # longer than block_size: context is cropped
    b = model.generate(prompt, max_new_tokens=40)
    assert a.shape == (2, 45)
    assert torch.equal(a, b)
    assert torch.equal(a[:, :5], prompt)
    # greedy really is argmax of the forward pass
    assert torch.equal(a[:, 5], model(prompt)[:, -1].argmax(-1))


def test_generate_stops_at_eos() -> None:
    model = make_model()
    prompt = torch.randint(0, VOCAB, (1, 5))
    free = model.generate(prompt, max_new_tokens=10)
    eos = int(free[0, 7])  # the third token it would emit anyway
    out = model.generate(prompt, max_new_tokens=10, eos_id=eos)
    first_eos = int((free[0, 5:] == eos).nonzero()[0])
    assert out.shape[1] == 5 + first_eos + 1
    assert int(out[0, -1]) == eos


def test_generate_pads_finished_rows_with_eos() -> None:
    model = make_model()
    prompt = torch.randint(0, VOCAB, (2, 5))
    free = model.generate(prompt, max_new_tokens=12)
    eos = int(free[0, 6])
    out = model.generate(prompt, max_new_tokens=12, eos_id=eos)
    row = out[0, 5:]
    first = int((row == eos).nonzero()[0])
    assert (row[first:] == eos).all()


def test_sampling_with_generator_is_reproducible_and_restores_mode() -> None:
    model = make_model(dropout=0.1).train()
    prompt = torch.randint(0, VOCAB, (2, 4))
    kwargs = {"max_new_tokens": 12, "temperature": 1.0, "top_k": 5}
    a = model.generate(prompt, generator=torch.Generator().manual_seed(7), **kwargs)
    b = model.generate(prompt, generator=torch.Generator().manual_seed(7), **kwargs)
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() < VOCAB
    assert model.training  # generate switched to eval and back


# --- learning ------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", DEFAULT_AND_MODERN)
def test_overfits_a_single_sequence(variant: dict) -> None:
    model = make_model(5, **variant).train()
    torch.manual_seed(5)
    seq = torch.randint(0, VOCAB, (1, 33))
    x, y = seq[:, :-1], seq[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(200):
        loss = torch.nn.functional.cross_entropy(model(x).view(-1, VOCAB), y.view(-1))
        first = loss.item() if first is None else first
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert first > 3.5  # about ln(64) at init
    assert loss.item() < 0.2


# --- presets -------------------------------------------------------------------------------


def _meta_params(config: ModelConfig) -> int:
    with torch.device("meta"):
        return GPT(config).num_params()


def test_padded_vocab_size() -> None:
    assert padded_vocab_size(260) == 320
    assert padded_vocab_size(50257) == 50304
    assert padded_vocab_size(64) == 64
    assert padded_vocab_size(10, multiple=8) == 16
    with pytest.raises(ValueError):
        padded_vocab_size(0)


def test_tiny_and_small_param_counts() -> None:
    tiny = model_config_for("tiny", vocab_size=260)
    assert tiny.vocab_size == 320
    assert 0.5e6 <= GPT(tiny).num_params() <= 1.5e6
    small = model_config_for("small", vocab_size=260)
    assert 7e6 <= _meta_params(small) <= 13e6


def test_large_preset_param_counts_on_meta_device() -> None:
    gpt2 = model_config_for("gpt2-124m", vocab_size=50257)
    assert 120e6 <= _meta_params(gpt2) <= 130e6
    big = model_config_for("gpt-750m", vocab_size=50257)
    assert 700e6 <= _meta_params(big) <= 800e6


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_on_meta(name: str) -> None:
    config = model_config_for(name, vocab_size=260)
    assert _meta_params(config) > 0


def test_preset_dropout_and_overrides() -> None:
    config = model_config_for(
        "test",
        vocab_size=100,
        dropout=0.1,
        overrides={"block_size": 128, "pos_encoding": "rope", "logit_softcap": 30.0},
    )
    assert config.dropout == 0.1
    assert config.block_size == 128
    assert config.pos_encoding == "rope"
    assert config.logit_softcap == 30.0
    assert config.vocab_size == 128
    assert config.n_embd == PRESETS["test"]["n_embd"]
    reserved = model_config_for("test", vocab_size=100, overrides={"vocab_size": 200})
    assert reserved.vocab_size == 256


def test_unknown_preset_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown preset") as err:
        model_config_for("huge", vocab_size=260)
    for name in PRESETS:
        assert name in str(err.value)


def test_bad_overrides_raise() -> None:
    with pytest.raises(ValueError, match="n_layers"):
        model_config_for("tiny", vocab_size=260, overrides={"n_layers": 3})
    with pytest.raises(ValueError, match="description"):
        model_config_for("tiny", vocab_size=260, overrides={"description": "x"})
    with pytest.raises(ValueError, match="smaller"):
        model_config_for("tiny", vocab_size=260, overrides={"vocab_size": 100})
    with pytest.raises(ValueError, match="divisible"):
        model_config_for("tiny", vocab_size=260, overrides={"n_head": 3})


def test_describe_presets() -> None:
    described = dict(describe_presets())
    assert set(described) == set(PRESETS)
    assert all(isinstance(d, str) and d for d in described.values())
