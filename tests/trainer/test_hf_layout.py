"""trainer.hf_layout: traind's GPT as a transformers Llama / GPT-2, checked by logits."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import GPT2LMHeadModel, LlamaForCausalLM

from trainer.config import ModelConfig
from trainer.hf_layout import from_hf, hf_architecture, to_hf
from trainer.model import GPT
from trainer.presets import model_config_for

VOCAB = 320
HF_CLASSES = {"llama": LlamaForCausalLM, "gpt2": GPT2LMHeadModel}


def _config(preset: str, **overrides) -> ModelConfig:
    return model_config_for(preset, vocab_size=VOCAB, overrides=overrides)


def _random_gpt(config: ModelConfig, *, seed: int = 0) -> GPT:
    """A GPT whose every weight, norm gains and biases included, is random and far from init."""
    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))  # gains, not the default ones
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model.eval()


def _tensors(model: GPT) -> dict[str, torch.Tensor]:
    """The state as traind saves it: the tied LM head stored once, under wte.weight."""
    return {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}


def _save_hf(config: ModelConfig, tensors: dict[str, torch.Tensor], folder: Path) -> dict:
    hf_config, hf_tensors = to_hf(config, tensors=tensors)
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_config))
    save_file(hf_tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return hf_config


LOGIT_CASES = [
    ("test-llama", False, "llama"),
    ("test-llama", True, "llama"),
    ("test", False, "gpt2"),
    ("test", True, "gpt2"),
]


@pytest.mark.parametrize(("preset", "bias", "arch"), LOGIT_CASES)
def test_export_loads_in_transformers_with_the_same_logits(tmp_path, preset, bias, arch) -> None:
    config = _config(preset, bias=bias)
    assert hf_architecture(config) == (arch, "")
    model = _random_gpt(config)
    hf_config = _save_hf(config, _tensors(model), tmp_path / "hf")

    hf_model = HF_CLASSES[arch].from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()

    # Every key written is one the HF config reads back unchanged (none silently ignored).
    for key, value in hf_config.items():
        if key == "dtype":
            assert hf_model.config.dtype == getattr(torch, value)
        else:
            assert getattr(hf_model.config, key) == value, key
    # The HF model has no parameter the export did not set (nothing freshly initialised).
    assert sum(p.numel() for p in hf_model.parameters()) == model.num_params() + (
        0 if bias or arch == "llama" else _gpt2_zero_bias_count(config)
    )
    ids = torch.randint(
        0, VOCAB, (2, config.block_size), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        ours, theirs = model(ids), hf_model(ids).logits
    assert ours.abs().max() > 1.0  # logits far from zero, so the comparison means something
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def _gpt2_zero_bias_count(config: ModelConfig) -> int:
    c = config.n_embd
    per_layer = 2 * c + 3 * c + c + 4 * c + c  # ln_1 + ln_2, c_attn, attn.c_proj, c_fc, mlp.c_proj
    return config.n_layer * per_layer + c  # + ln_f


@pytest.mark.parametrize(("preset", "bias", "arch"), LOGIT_CASES)
def test_from_hf_of_to_hf_is_bit_identical(preset, bias, arch) -> None:
    config = _config(preset, bias=bias)
    model = _random_gpt(config)
    tensors = _tensors(model)
    back = from_hf(config, tensors=to_hf(config, tensors=tensors)[1])
    assert back.keys() == tensors.keys()
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t), name
    # The whole state_dict (lm_head.weight included, tied) converts too, and loads back.
    again = from_hf(config, tensors=to_hf(config, tensors=model.state_dict())[1])
    fresh = GPT(config)
    result = fresh.load_state_dict(again, strict=False)
    assert result.missing_keys == ["lm_head.weight"] and not result.unexpected_keys
    assert fresh.lm_head.weight is fresh.wte.weight
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())


def test_llama_names_and_shapes() -> None:
    config = _config("test-llama")
    hf_config, hf = to_hf(config, tensors=_tensors(_random_gpt(config)))
    assert "lm_head.weight" not in hf
    assert hf["model.layers.1.self_attn.k_proj.weight"].shape == (32, 32)
    assert hf["model.layers.0.mlp.gate_proj.weight"].shape == (hf_config["intermediate_size"], 32)
    assert hf_config["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert hf_config["rms_norm_eps"] == torch.finfo(torch.float32).eps
    assert hf_config["tie_word_embeddings"] is True


def test_gpt2_conv1d_weights_are_transposed_and_missing_biases_are_zero() -> None:
    config = _config("test")
    tensors = _tensors(_random_gpt(config))
    _, hf = to_hf(config, tensors=tensors)
    assert torch.equal(
        hf["transformer.h.0.attn.c_attn.weight"], tensors["blocks.0.attn.qkv.weight"].T
    )
    assert hf["transformer.h.0.mlp.c_fc.weight"].shape == (32, 128)
    assert not hf["transformer.ln_f.bias"].any()


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"logit_softcap": 30.0}, "logit_softcap=30.0"),
        (
            {
                "logit_softcap": 30.0,
                "pos_encoding": "rope",
                "mlp_type": "swiglu",
                "norm_type": "rmsnorm",
            },
            "logit_softcap",
        ),
        ({"pos_encoding": "rope"}, "rope position encoding with a gelu MLP"),
        ({"norm_type": "rmsnorm"}, "rmsnorm"),
        ({"mlp_type": "swiglu"}, "swiglu"),
    ],
)
def test_unmatched_architectures_are_refused_with_a_reason(overrides, words) -> None:
    config = _config("test", **overrides)
    arch, reason = hf_architecture(config)
    assert arch is None and words in reason
    tensors = _tensors(GPT(config))
    with pytest.raises(ValueError, match=words):
        to_hf(config, tensors=tensors)
    with pytest.raises(ValueError, match=words):
        from_hf(config, tensors=tensors)


def test_from_hf_refuses_what_it_cannot_carry_back() -> None:
    config = _config("test")
    _, hf = to_hf(config, tensors=_tensors(_random_gpt(config)))
    with pytest.raises(ValueError, match="bias=False"):
        from_hf(config, tensors={**hf, "transformer.h.1.ln_2.bias": torch.ones(32)})
    untied = torch.zeros_like(hf["transformer.wte.weight"])
    with pytest.raises(ValueError, match="not tied"):
        from_hf(config, tensors={**hf, "lm_head.weight": untied})
    with pytest.raises(ValueError, match="missing"):
        from_hf(dataclasses.replace(config, n_layer=3), tensors=hf)


def test_to_hf_refuses_mismatched_names() -> None:
    config = _config("test-llama")
    tensors = _tensors(_random_gpt(config))
    with pytest.raises(ValueError, match="unexpected"):
        to_hf(config, tensors={**tensors, "blocks.0.attn.qkv.bias": torch.zeros(96)})


def test_llama_presets_map_to_llama_and_the_others_to_gpt2() -> None:
    assert hf_architecture(_config("test-llama"))[0] == "llama"
    assert hf_architecture(_config("tiny-llama"))[0] == "llama"
    assert hf_architecture(_config("tiny"))[0] == "gpt2"
    tiny, tiny_llama = _config("tiny"), _config("tiny-llama")
    same = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")
    assert all(getattr(tiny, f) == getattr(tiny_llama, f) for f in same)
