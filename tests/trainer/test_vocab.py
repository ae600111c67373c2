"""Vocabulary extension: new token rows train, the rows the vocabulary had stay bit-frozen
under AdamW with weight decay 0.1 and across resumes; built-in GPT (tied head) and Hugging
Face models (a Llama with an untied head, a Qwen2 with a tied one), with and without LoRA.
A gradient hook alone is shown to let the base rows drift, so the mechanism (two
parameters, ``trainer.vocab``) is what keeps them."""

import json
from pathlib import Path

import pytest
import tiny_hf
import torch
from conftest import write_jsonl

from trainer.adaptation import Adaptation
from trainer.checkpoint import latest_checkpoint, read_checkpoint
from trainer.config import LineageSpec, LoraConfig, ModelConfig, RunPaths, TrainConfig
from trainer.extension import extend_vocabulary
from trainer.lineage import LineageError
from trainer.model import GPT
from trainer.optim import build_optimizer
from trainer.records.checkpoints import step_folder
from trainer.vocab import ORIGINAL, extend_rows, token_modules

NEW = ("<lang:xx>", "<lang:yy>", "qqzzx")
LORA = LoraConfig(r=4, alpha=8.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-models")
    return {
        "llama": tiny_hf.make_llama_dir(root / "llama"),
        "qwen2": tiny_hf.make_qwen2_dir(root / "qwen2"),
    }


def spec_for(kind: str, models: dict[str, Path], **options) -> LineageSpec:
    if kind == "builtin":
        return LineageSpec(preset="test", **options)
    return LineageSpec(source=f"hf:{models[kind]}", **options)


def rows_with_new_tokens(n: int, *, offset: int = 0) -> list[dict]:
    return [
        {"text": f"{NEW[i % 3]} the owl {i} says {NEW[(i + 1) % 3]} twice at {i % 12}."}
        for i in range(offset, offset + n)
    ]


def base_and_head(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Copies of the base rows of the embedding and (untied) head, and the base row count."""
    embedding, head = token_modules(model)
    base = embedding.parametrizations.weight.original.detach().clone()
    head_base = None
    if (
        head is not None
        and head.parametrizations.weight.original is not embedding.parametrizations.weight.original
    ):
        head_base = head.parametrizations.weight.original.detach().clone()
    return base, head_base, base.shape[0]


def full_weights(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    embedding, head = token_modules(model)
    return embedding.weight.detach().clone(), head.weight.detach().clone()


CASES = [
    ("builtin", None),  # tied head
    ("llama", None),  # untied head: its new rows train too
    ("qwen2", None),  # tied
    ("builtin", LORA),
    ("llama", LORA),
    ("qwen2", LORA),
]


@pytest.mark.parametrize(
    ("kind", "lora"), CASES, ids=[f"{kind}-{'lora' if lora else 'full'}" for kind, lora in CASES]
)
def test_base_rows_stay_bit_identical_under_weight_decay_and_resume(
    tmp_path, open_trainer, models, kind, lora
):
    spec = spec_for(kind, models, new_tokens=NEW, lora=lora)
    files = [
        write_jsonl(tmp_path / f"d{i}.jsonl", rows_with_new_tokens(32, offset=32 * i))
        for i in range(2)
    ]
    trainer = open_trainer(spec=spec, weight_decay=0.1)
    tokenizer = trainer.lineage.tokenizer
    ids = [tokenizer.encode(t) for t in NEW]
    assert all(len(i) == 1 for i in ids), ids  # each new token is one id, after the old ones
    base, head_base, n_base = base_and_head(trainer.model)
    assert [i[0] for i in ids] == list(range(n_base, n_base + 3))
    start_embedding, start_head = full_weights(trainer.model)
    # New rows start as the mean of the base rows.
    assert torch.allclose(start_embedding[n_base], base.mean(dim=0))
    if kind == "builtin":
        assert torch.equal(base, GPT_at_seed(spec, trainer).wte.weight[:n_base])
    trainer.train_file(trainer.prepare(files[0]), name=files[0].name)
    trainer = open_trainer(spec=spec, weight_decay=0.1)  # resume in a new Trainer
    trainer.train_file(trainer.prepare(files[1]), name=files[1].name)
    assert trainer.state.global_step >= 2
    embedding, head = full_weights(trainer.model)
    assert torch.equal(embedding[:n_base], base)
    new = slice(n_base, n_base + 3)
    assert not torch.equal(embedding[new], start_embedding[new])  # the new rows learned
    if head_base is not None:
        assert torch.equal(head[:n_base], head_base)
        assert not torch.equal(head[new], start_head[new])
    if kind != "builtin":  # the base rows are the pretrained model's own, bit for bit
        pretrained = tiny_hf_weights(models[kind])
        assert torch.equal(embedding[:n_base], pretrained["model.embed_tokens.weight"][:n_base])
    events = [json.loads(line) for line in trainer.paths.events.read_text().splitlines()]
    extended = [e for e in events if e["event"] == "vocab_extended"]
    assert len(extended) == 1 and extended[0]["tokens_added"] == 3
    # Padding rows past the tokenizer (the built-in presets round up) are used first.
    rows = max(start_embedding.shape[0], n_base + 3)
    assert extended[0]["base_rows"] == n_base and extended[0]["rows"] == rows


def GPT_at_seed(spec: LineageSpec, trainer) -> GPT:
    """The built-in model as a new lineage of this seed starts it (before any extension)."""
    from trainer.presets import model_config_for

    torch.manual_seed(trainer.state.seed)
    config = model_config_for(spec.preset, vocab_size=trainer.lineage.tokenizer.vocab_size - 3)
    return GPT(config)


def tiny_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_a_gradient_hook_alone_lets_the_base_rows_drift():
    """What the issue measured (1.35e-3 in 20 steps): zeroing the base rows' gradient keeps
    neither weight decay nor earlier moments from moving them; two parameters do."""
    config = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64)
    train = TrainConfig(learning_rate=1e-2, weight_decay=0.1, warmup_steps=1)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 64, (4, 16), generator=generator) for _ in range(20)]

    def run(model: GPT) -> None:
        optimizer = build_optimizer(model, train)
        for batch in batches:
            logits = model(batch[:, :-1])
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, 64), batch[:, 1:].reshape(-1)
            )
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    torch.manual_seed(0)
    hooked = GPT(config)
    frozen = hooked.wte.weight[:48].detach().clone()
    hooked.wte.weight.register_hook(
        lambda grad: torch.cat((torch.zeros_like(grad[:48]), grad[48:]))
    )
    run(hooked)
    drift = (hooked.wte.weight[:48] - frozen).abs().max().item()
    assert drift > 1e-4, drift  # weight decay alone moves every row

    torch.manual_seed(0)
    split = GPT(config)
    extend_rows(split, base_rows=48, rows=64, fresh=(48, 64))
    run(split)
    assert torch.equal(split.wte.parametrizations.weight.original, frozen)


def test_unfreeze_base_rows_at_step_releases_them(tmp_path, open_trainer):
    spec = LineageSpec(preset="test", new_tokens=NEW, unfreeze_base_rows_at_step=3)
    path = write_jsonl(tmp_path / "a.jsonl", rows_with_new_tokens(96))
    trainer = open_trainer(spec=spec, checkpoint_interval=1, keep_checkpoints=20)
    base, _, n_base = base_and_head(trainer.model)
    trainer.train_file(trainer.prepare(path), name="a.jsonl")
    root = trainer.paths.checkpoints
    name = "wte" + ORIGINAL
    assert torch.equal(read_checkpoint(root / step_folder(3)).weights()[name], base)
    newest = latest_checkpoint(root)
    assert newest.step > 3
    assert not torch.equal(newest.weights()[name], base)
    assert n_base == base.shape[0]


def test_extend_vocab_on_an_existing_lineage_keeps_step_moments_and_base_rows(
    tmp_path, open_trainer, run_paths
):

    first = write_jsonl(tmp_path / "a.jsonl", rows_with_new_tokens(24))
    second = write_jsonl(tmp_path / "b.jsonl", rows_with_new_tokens(24, offset=24))
    trainer = open_trainer()
    trainer.train_file(trainer.prepare(first), name="a.jsonl")
    step = trainer.state.global_step
    before = latest_checkpoint(run_paths.checkpoints)
    embedding = before.weights()["wte.weight"]
    moments = before.optimizer_state()
    trainer.close()

    train = TrainConfig(**{**_test_train(), "weight_decay": 0.1})
    fields = extend(run_paths, train=train)
    assert fields["tokens_added"] == 3 and fields["step"] == step
    after = latest_checkpoint(run_paths.checkpoints)
    assert after.step == step
    state = after.training_state
    assert Adaptation.from_dict(state["adaptation"]).tokens == NEW
    base = after.weights()["wte" + ORIGINAL]
    n_base = base.shape[0]
    assert torch.equal(base, embedding[:n_base])
    carried = after.optimizer_state()
    # The embedding's moments went with it to its base rows; every other one is unchanged.
    layout = state["optimizer_layout"][0]
    old_layout = before.training_state["optimizer_layout"][0]
    for index, name in enumerate(layout):
        old = old_layout.index(name.replace(ORIGINAL, ".weight")) if "rows" not in name else None
        if old is None:
            assert index not in carried["state"]
            continue
        carried_moment = carried["state"][index]["exp_avg"]
        saved_moment = moments["state"][old]["exp_avg"][: len(carried_moment)]
        assert torch.equal(carried_moment, saved_moment), name
    # A second time: nothing new, nothing changed.
    assert extend(run_paths, train=train) is None

    trainer = open_trainer()
    assert trainer.state.global_step == step
    assert len(trainer.lineage.tokenizer.encode(NEW[0])) == 1
    trainer.train_file(trainer.prepare(second), name="b.jsonl")
    weights = latest_checkpoint(run_paths.checkpoints).weights()
    assert torch.equal(weights["wte" + ORIGINAL], embedding[:n_base])
    # The export holds the whole matrix, new rows in place, for the extended tokenizer.
    from trainer.export import load_export

    exported = load_export(run_paths.checkpoints / "export")
    assert exported.model.wte.weight.shape[0] == embedding.shape[0]  # padding rows took them
    assert len(exported.tokenizer.encode(NEW[1])) == 1


def extend(
    paths: RunPaths, *, spec: LineageSpec | None = None, train: TrainConfig | None = None
) -> dict | None:
    """``extend_vocabulary`` with the tokens of these tests, on the lineage under ``paths``."""
    from trainer.config import ExportConfig

    return extend_vocabulary(
        list(NEW),
        spec=spec or LineageSpec(preset="test"),
        train=train or TrainConfig(**_test_train()),
        paths=paths,
        export=ExportConfig(),
    )


def _test_train() -> dict:
    from conftest import TEST_TRAIN

    return dict(TEST_TRAIN)


def test_extend_vocab_refuses_a_half_trained_file(tmp_path, open_trainer, run_paths):
    from trainer.loop import FileOutcome

    path = write_jsonl(tmp_path / "a.jsonl", rows_with_new_tokens(64))
    trainer = open_trainer()
    outcome = trainer.train_file(
        trainer.prepare(path), name="a.jsonl", should_stop=lambda: trainer.state.global_step >= 2
    )
    assert outcome is not FileOutcome.COMPLETED
    trainer.close()
    with pytest.raises(LineageError, match=r"a.jsonl is trained partly.*between files"):
        extend(run_paths)


def test_a_larger_vocab_size_keeps_every_learned_row(tmp_path, open_trainer):
    """Before, a larger ``model.overrides.vocab_size`` re-initialised the whole embedding."""
    path = write_jsonl(tmp_path / "a.jsonl", rows_with_new_tokens(24))
    trainer = open_trainer()
    trainer.train_file(trainer.prepare(path), name="a.jsonl")
    learned = trainer.model.wte.weight.detach().clone()
    grown = open_trainer(spec=LineageSpec(preset="test", overrides={"vocab_size": 448}))
    weight = grown.model.wte.weight.detach()
    assert weight.shape[0] == 448 and learned.shape[0] < 448
    assert torch.equal(weight[: learned.shape[0]], learned)
    assert torch.allclose(weight[-1], learned.mean(dim=0))


def test_an_extended_head_cannot_also_be_saved_in_full(open_trainer, models):
    lora = LoraConfig(r=4, alpha=8.0, modules_to_save=("lm_head",))
    with pytest.raises(LineageError, match="modules_to_save names 'lm_head', and the vocabulary"):
        open_trainer(spec=spec_for("llama", models, new_tokens=NEW, lora=lora))


def test_extend_vocab_refuses_a_head_saved_in_full(open_trainer, models, run_paths):

    spec = spec_for("llama", models, lora=LoraConfig(r=4, alpha=8.0, modules_to_save=("lm_head",)))
    open_trainer(spec=spec).close()
    with pytest.raises(LineageError, match="modules_to_save names 'lm_head', and the vocabulary"):
        extend(run_paths, spec=spec)


def test_extend_vocab_needs_a_lineage(run_paths):

    with pytest.raises(LineageError, match=r"for a new one, set model\.new_tokens"):
        extend(run_paths)
