"""The deployment export (half-precision, atomic like a checkpoint) and ``complete``."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import special_id
from safetensors import safe_open

from trainer.checkpoint import MANIFEST, CheckpointContent, recover_root, write_checkpoint
from trainer.completion import complete
from trainer.export import (
    EXPORT_FILES,
    INFO,
    ExportError,
    export_checkpoint,
    load_export,
    load_for_generation,
    verify_export,
    write_export,
)
from trainer.hf_layout import from_hf
from trainer.model import GPT
from trainer.presets import model_config_for
from trainer.records.checkpoints import step_folder
from trainer.tokenizer import build_byte_tokenizer

TOKENIZER = build_byte_tokenizer()
TEXT = "the cat sat on the mat; the dog ate the log. " * 20
PROMPTS = ("the ", "the cat", "the d")
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


def make_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(model_config_for("test", vocab_size=TOKENIZER.vocab_size))


def export_to(root: Path, model: GPT, *, dtype: str = "bf16", step: int = 1) -> Path:
    return write_export(
        root,
        model=model,
        config=model.config.to_dict(),
        tokenizer_json=TOKENIZER.to_json(),
        dtype=dtype,
        info={"step": step, "lineage_id": "abc123", "source_checkpoint": step_folder(step)},
    )


@pytest.fixture(scope="module")
def trained() -> GPT:
    """A test-preset model trained briefly on a repetitive text, so greedy decoding
    follows learned preferences rather than an untrained model's near-ties."""
    threads = torch.get_num_threads()
    # One thread: a model this small only loses to thread hand-offs on a busy 2-core box.
    torch.set_num_threads(1)
    try:
        model = _train()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def _train() -> GPT:
    with torch.random.fork_rng(devices=[]):
        model = make_model()
        ids = torch.tensor(TOKENIZER.encode(TEXT))
        opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
        for _ in range(60):
            starts = torch.randint(0, len(ids) - 65, (8,))
            x = torch.stack([ids[s : s + 64] for s in starts])
            y = torch.stack([ids[s + 1 : s + 65] for s in starts])
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_layout_half_weights_and_tied_matrix_once(tmp_path, trained, dtype):
    path = export_to(tmp_path, trained, dtype=dtype, step=7)
    assert path == tmp_path / "export"
    files = [*EXPORT_FILES, "model.safetensors", "tokenizer_config.json", "generation_config.json"]
    assert sorted(p.name for p in path.iterdir()) == sorted([*files, MANIFEST])
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no staging left
    assert verify_export(path) is None
    manifest = json.loads((path / MANIFEST).read_text())
    assert set(manifest["files"]) == set(files)
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        tensors = {k: f.get_tensor(k) for k in keys}
    # The test preset is GPT-2 shaped, so the export is in GPT-2's layout, tied head once.
    assert "transformer.wte.weight" in keys and "lm_head.weight" not in keys
    assert {t.dtype for t in tensors.values()} == {HALF[dtype]}
    back = from_hf(trained.config, tensors=tensors)
    assert set(back) == set(trained.state_dict()) - {"lm_head.weight"}
    for name, tensor in back.items():
        assert torch.equal(tensor, trained.state_dict()[name].to(HALF[dtype])), name
    info = json.loads((path / INFO).read_text())
    assert info["step"] == 7 and info["lineage_id"] == "abc123"
    assert info["source_checkpoint"] == "step-00000007"
    # Stored elements: GPT-2's layout holds zero biases for the bias-free model.
    assert info["dtype"] == dtype and info["parameters"] == sum(t.numel() for t in tensors.values())
    assert info["created_at"] and "traind generate" in info["how_to_load"]
    assert info["hf_layout"] == "gpt2" and info["traind_config"] == trained.config.to_dict()
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["tie_word_embeddings"] is True
    assert config["eos_token_id"] == TOKENIZER.eos_id
    # The source model is untouched: still float32 and on the CPU.
    assert {p.dtype for p in trained.parameters()} == {torch.float32}


def test_an_architecture_without_hf_equivalent_keeps_traind_layout_and_says_why(tmp_path, caplog):
    torch.manual_seed(0)
    config = model_config_for(
        "test", vocab_size=TOKENIZER.vocab_size, overrides={"logit_softcap": 30.0}
    )
    model = GPT(config).eval()
    path = export_to(tmp_path, model)
    info = json.loads((path / INFO).read_text())
    assert info["hf_layout"] is None and "logit_softcap" in info["no_hf_reason"]
    assert "traind's own layout" in caplog.text
    assert json.loads((path / "config.json").read_text()) == config.to_dict()
    assert not (path / "generation_config.json").exists()
    loaded = load_export(path)
    x = torch.tensor([TOKENIZER.encode(TEXT[:32])])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x), atol=0.05, rtol=0.05)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_loaded_export_computes_like_the_fp32_model(tmp_path, trained, dtype):
    loaded = load_export(export_to(tmp_path, trained, dtype=dtype))
    model = loaded.model
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # CPU default
    assert model.lm_head.weight is model.wte.weight  # still tied after loading
    x = torch.tensor([TOKENIZER.encode(TEXT[:64])])
    with torch.no_grad():
        # Exactly the fp32 model with its weights rounded to the export dtype...
        rounded = make_model(seed=1)
        rounded.load_state_dict(
            {k: v.to(HALF[dtype]).float() for k, v in trained.state_dict().items()}
        )
        assert torch.equal(model(x), rounded.eval()(x))
        # ...and so close to the fp32 model: within rounding of the weights.
        ref = trained(x)
        error = (model(x) - ref).abs().max() / ref.std()
    assert error < {"fp16": 0.01, "bf16": 0.05}[dtype]
    for prompt in PROMPTS:
        expected = complete(trained, TOKENIZER, prompt, max_new_tokens=12)
        assert len(expected) == 12
        assert complete(model, loaded.tokenizer, prompt, max_new_tokens=12) == expected


def test_complete_leaves_rng_and_mode_alone(trained):
    model = make_model(seed=3)
    model.train()
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    greedy = complete(model, TOKENIZER, "the ", max_new_tokens=8)
    first = complete(model, TOKENIZER, "the ", max_new_tokens=16, temperature=1.0, seed=5)
    again = complete(model, TOKENIZER, "the ", max_new_tokens=16, temperature=1.0, seed=5)
    unseeded = complete(trained, TOKENIZER, "the ", max_new_tokens=4, temperature=0.7, top_k=3)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == py_state
    assert model.training and not trained.training
    assert first == again  # same seed, same text
    assert greedy == complete(model, TOKENIZER, "the ", max_new_tokens=8)
    assert isinstance(unseeded, str)


def test_complete_crops_long_prompts_and_starts_empty_ones_from_eos(trained):
    block = trained.config.block_size
    long_prompt = "x" * (3 * block) + "the "
    assert complete(trained, TOKENIZER, long_prompt, max_new_tokens=5) == complete(
        trained, TOKENIZER, long_prompt[-block:], max_new_tokens=5
    )
    assert complete(trained, TOKENIZER, "the ", max_new_tokens=0) == ""
    scripted = ScriptedModel([*b"ok"])
    assert complete(scripted, TOKENIZER, "", max_new_tokens=5) == "ok"
    assert scripted.seen == [TOKENIZER.eos_id]
    complete(scripted, TOKENIZER, long_prompt, max_new_tokens=5)
    assert scripted.seen == TOKENIZER.encode(long_prompt[-block:])
    with pytest.raises(ValueError, match="temperature"):
        complete(trained, TOKENIZER, "x", temperature=-1.0)


class ScriptedModel(torch.nn.Module):
    """Stands in for GPT where the test needs a chosen token sequence (an early eos)."""

    def __init__(self, new_ids: list[int]) -> None:
        super().__init__()
        self.config = make_model().config
        self.new_ids = new_ids
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[int] = []

    def generate(self, idx, *, max_new_tokens, eos_id, **_):
        self.seen = idx[0].tolist()
        tail = torch.tensor([self.new_ids[:max_new_tokens]], dtype=torch.long)
        return torch.cat((idx, tail), dim=1)


def test_complete_stops_at_eos_and_drops_special_tokens():
    eos, im_end = TOKENIZER.eos_id, special_id(TOKENIZER, "<|im_end|>")
    model = ScriptedModel([*b"hi", im_end, *b"!", eos, *b"after", eos])
    assert complete(model, TOKENIZER, "say ", max_new_tokens=10) == "hi!"


def test_a_failed_write_keeps_the_previous_export(tmp_path, trained, monkeypatch):
    export_to(tmp_path, trained, step=1)

    def crash(name):
        if name == "export:after_weights":
            raise OSError("disk full")

    monkeypatch.setattr("trainer.export.fault_point", crash)
    with pytest.raises(OSError, match="disk full"):
        export_to(tmp_path, make_model(seed=9), step=2)
    recover_root(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    assert load_export(tmp_path / "export").info["step"] == 1


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_export import export_to, make_model
    export_to(Path(sys.argv[1]), make_model(seed=9), step=2)
    """
)


@pytest.mark.parametrize(
    "point",
    ["export:after_weights", "export:before_rename", "export:after_rename"],
)
def test_kill_during_write_leaves_a_complete_export(tmp_path, trained, point):
    export_to(tmp_path, trained, step=1)
    proc = subprocess.run(
        [sys.executable, "-c", WRITER.format(tests=str(Path(__file__).parent)), str(tmp_path)],
        env={**os.environ, "TRAIND_FAULT": point, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    # Before the rename the old export is in place; after it, the new one, complete.
    expected = 2 if point == "export:after_rename" else 1
    assert load_export(tmp_path / "export").info["step"] == expected
    recover_root(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    assert verify_export(tmp_path / "export") is None


def _truncate(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: _truncate(p / "model.safetensors"), "model.safetensors has"),
        (lambda p: _flip_byte(p / "model.safetensors"), "model.safetensors does not match"),
        (lambda p: (p / "tokenizer.json").unlink(), "tokenizer.json is missing"),
        (lambda p: (p / MANIFEST).unlink(), "no manifest.json"),
    ],
)
def test_a_broken_export_is_refused_naming_folder_and_file(tmp_path, trained, damage, reason):
    path = export_to(tmp_path, trained)
    damage(path)
    with pytest.raises(ExportError, match=reason) as caught:
        load_export(path)
    assert str(path) in str(caught.value)
    with pytest.raises(ExportError, match=reason):
        load_for_generation(path)


def test_folders_that_are_not_exports_are_refused(tmp_path, trained):
    with pytest.raises(ExportError, match="no such folder"):
        load_export(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="not an export"):
        load_export(tmp_path / "empty")
    with pytest.raises(ExportError, match="neither an export nor a checkpoint"):
        load_for_generation(tmp_path / "empty")
    checkpoint = write_checkpoint(tmp_path / "ck", "step-00000003", _content(trained, 3))
    with pytest.raises(ExportError, match="a training checkpoint, not an export"):
        load_export(checkpoint)


def test_unknown_dtype_is_refused_before_anything_is_written(tmp_path, trained):
    with pytest.raises(ValueError, match="fp16, bf16"):
        export_to(tmp_path, trained, dtype="int8")
    assert list(tmp_path.iterdir()) == []


def _content(model: GPT, step: int) -> CheckpointContent:
    return CheckpointContent(
        model=model,
        optimizer_state=torch.optim.AdamW(model.parameters()).state_dict(),
        config=model.config.to_dict(),
        tokenizer_json=TOKENIZER.to_json(),
        training_state={"format_version": 1, "global_step": step, "lineage_id": "L1"},
    )


def test_export_checkpoint_and_load_for_generation_accept_every_folder(tmp_path, trained):
    root = tmp_path / "checkpoints"
    write_checkpoint(root, step_folder(4), _content(make_model(seed=4), 4))
    newest = write_checkpoint(root, step_folder(8), _content(trained, 8))
    path = export_checkpoint(newest, tmp_path / "deploy", dtype="fp16")
    assert path == tmp_path / "deploy" / "export"
    info = load_export(path).info
    assert (info["step"], info["lineage_id"], info["source_checkpoint"]) == (8, "L1", newest.name)
    # A checkpoints root exports its newest checkpoint.
    assert load_export(export_checkpoint(root, root, dtype="bf16")).info["step"] == 8
    expected = complete(trained, TOKENIZER, "the ", max_new_tokens=6)
    for folder, step in ((newest, 8), (root / step_folder(4), 4), (root, 8), (path, 8)):
        loaded = load_for_generation(folder)
        assert loaded.info["step"] == step, folder
        assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
        if step == 8:
            assert complete(loaded.model, loaded.tokenizer, "the ", max_new_tokens=6) == expected
    # With its step-* folders gone, a checkpoints root still serves its export.
    for _, step_path in ((4, root / step_folder(4)), (8, newest)):
        shutil.rmtree(step_path)
    assert load_for_generation(root).path == root / "export"


@pytest.mark.gpu
def test_on_cuda_an_export_keeps_its_half_precision(tmp_path, trained):
    loaded = load_export(export_to(tmp_path, trained, dtype="bf16"), device="cuda")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in loaded.model.parameters()} == {"cuda"}
    state = torch.cuda.get_rng_state()
    text = complete(loaded.model, loaded.tokenizer, "the ", max_new_tokens=8, temperature=0.8)
    assert len(text) <= 8 and torch.equal(torch.cuda.get_rng_state(), state)


@pytest.mark.parametrize(
    ("preset", "hf_class"), [("test-llama", "LlamaForCausalLM"), ("test", "GPT2LMHeadModel")]
)
def test_a_builtin_export_loads_in_transformers_with_the_same_logits(tmp_path, preset, hf_class):
    import transformers

    torch.manual_seed(2)
    model = GPT(model_config_for(preset, vocab_size=TOKENIZER.vocab_size)).eval()
    path = export_to(tmp_path, model, dtype="bf16")
    hf = getattr(transformers, hf_class).from_pretrained(path, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    ids = tokenizer(TEXT[:40], add_special_tokens=False)["input_ids"]
    assert ids == TOKENIZER.encode(TEXT[:40])
    assert tokenizer.eos_token_id == TOKENIZER.eos_id
    x = torch.tensor([ids])
    # The same model with its weights rounded to bf16, as the export stores them.
    rounded = GPT(model.config).eval()
    rounded.load_state_dict(
        {k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()}
    )
    with torch.no_grad():
        got = hf.float()(input_ids=x).logits
        torch.testing.assert_close(got, rounded(x), atol=1e-4, rtol=1e-4)
        # ...and within half-precision rounding of the fp32 model.
        torch.testing.assert_close(got, model(x), atol=0.1, rtol=0.05)
    loaded = load_export(path)  # traind reads its Hugging Face layout back without transformers
    with torch.no_grad():
        assert torch.equal(loaded.model(x), rounded(x))
