"""Hugging Face lineages (``model.source = "hf:<folder>"``) keep every guarantee of the
built-in model: cumulative steps across processes, bit-exact resume after SIGKILL, gold and
rollback, and an export that transformers loads. On two tiny models built here from configs
(no hub): a Llama with grouped-query attention and an untied head, and a Qwen2 with tied
embeddings, each with its own BPE tokenizer and chat template."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_hf
import torch
from conftest import write_jsonl

from tests.corpus import make_drops, traind_env
from tests.runcheck import completions, same_files_and_steps, same_weights_and_moments
from trainer.checkpoint import latest_checkpoint, read_checkpoint
from trainer.config import EvalConfig, LineageSpec
from trainer.lineage import LineageError
from trainer.records.checkpoints import GOLD_DIR, WEIGHTS_INDEX

REPO = Path(__file__).resolve().parents[2]
BUILDERS = {"llama": tiny_hf.make_llama_dir, "qwen2": tiny_hf.make_qwen2_dir}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-models")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def drops(tmp_path_factory) -> list[Path]:
    """Text, prompt/completion and chat drops (the chat one rendered with the template)."""
    folder = tmp_path_factory.mktemp("drops")
    paths = make_drops(folder)
    for path in paths:  # short files: a few steps each
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:24]))
    return paths


def train(root: Path, model: Path, files: list[Path], **extra: str) -> subprocess.CompletedProcess:
    env = traind_env(
        root,
        TRAIND_MODEL__SOURCE=f"hf:{model}",
        TRAIND_EVAL__PROMPTS="[]",
        PYTHONPATH=str(REPO),
        **extra,
    )
    return subprocess.run(
        [sys.executable, "-m", "api.cli.main", "train", *map(str, files)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def trained(root: Path, model: Path, files: list[Path], **extra: str) -> None:
    result = train(root, model, files, **extra)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, models, drops) -> dict[str, Path]:
    """One uninterrupted process training the three drops, per model."""
    roots = {}
    for name, model in models.items():
        root = tmp_path_factory.mktemp(f"reference-{name}")
        trained(root, model, drops)
        roots[name] = root
    return roots


@pytest.mark.parametrize(
    # Qwen2 in the long run only: the two models share this code path, and its kill test
    # resumes in a new process too.
    "name",
    ["llama", pytest.param("qwen2", marks=pytest.mark.slow)],
)
def test_a_third_file_in_a_new_process_continues_the_steps_exactly(
    tmp_path, models, drops, reference, name
):
    trained(tmp_path, models[name], drops[:2])
    trained(tmp_path, models[name], drops[2:])
    done = same_files_and_steps(tmp_path, reference[name], drops)
    assert done[0]["start_step"] == 0
    for d in done:  # each file's budget: 1.5 epochs at 4 x 2 sequences a step (rule 1)
        assert d["end_step"] - d["start_step"] == math.ceil(1.5 * d["n_sequences"] / 8)
    same_weights_and_moments(tmp_path, reference[name])


KILLS = [
    ("llama", "loop:mid_step@3"),
    ("qwen2", "loop:before_file_complete@2"),
    # The other pairs in the long run only: the two models share every code path here, and
    # tests/trainer/test_lora.py kills a LoRA Llama inside a checkpoint write too.
    pytest.param("llama", "checkpoint:after_weights@2", marks=pytest.mark.slow),
    pytest.param("qwen2", "checkpoint:before_rename@3", marks=pytest.mark.slow),
    pytest.param("qwen2", "loop:mid_step@3", marks=pytest.mark.slow),
    pytest.param("llama", "loop:before_file_complete@2", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "point"), KILLS)
def test_sigkill_then_resume_is_bit_identical(tmp_path, models, drops, reference, name, point):
    killed = train(tmp_path, models[name], drops, TRAIND_FAULT=point)
    assert killed.returncode == -9, killed.stderr[-2000:]
    trained(tmp_path, models[name], drops)
    same_weights_and_moments(tmp_path, reference[name])
    assert [d["file"] for d in completions(tmp_path)] == [d.name for d in drops]


def test_sharded_checkpoints_resume_and_their_export_loads(tmp_path, models, drops, reference):
    from transformers import AutoModelForCausalLM

    # 0.05 MB shards: the tiny Llama's weights (~0.1 MB) take several.
    trained(tmp_path, models["llama"], drops[:1], TRAIND_TRAIN__SHARD_SIZE_MB="0.05")
    newest = latest_checkpoint(tmp_path / "checkpoints")
    index = json.loads((newest.path / WEIGHTS_INDEX).read_text())
    assert len(set(index["weight_map"].values())) > 1
    export = tmp_path / "checkpoints" / "export"
    assert (export / WEIGHTS_INDEX).is_file()
    AutoModelForCausalLM.from_pretrained(export, local_files_only=True)
    # The setting changed between restarts: the sharded checkpoint resumes, and the next
    # ones are single files again, on the uninterrupted run's trajectory.
    trained(tmp_path, models["llama"], drops[1:])
    assert not (latest_checkpoint(tmp_path / "checkpoints").path / WEIGHTS_INDEX).exists()
    same_weights_and_moments(tmp_path, reference["llama"])


@pytest.mark.parametrize("name", list(BUILDERS))
def test_the_export_loads_in_transformers_and_computes_like_traind(
    tmp_path, models, drops, reference, name
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = reference[name] / "checkpoints" / "export"
    info = json.loads((export / "export.json").read_text())
    assert info["hf_layout"] == name
    hf = AutoModelForCausalLM.from_pretrained(export, local_files_only=True)
    assert hf.dtype == torch.bfloat16  # the export's own dtype, from its config.json
    tokenizer = AutoTokenizer.from_pretrained(export, local_files_only=True)
    conversation = [{"role": "user", "content": "3 minus 1?"}]
    prompt = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])

    from trainer.export import load_for_generation

    ours = load_for_generation(
        reference[name] / "checkpoints" / read_checkpoint_name(reference[name])
    )
    with torch.no_grad():
        want = ours.model(ids)
        got = hf.float()(input_ids=ids).logits
    # bf16 weights against the fp32 checkpoint: half-precision tolerance.
    torch.testing.assert_close(got, want, atol=0.1, rtol=0.05)
    assert hf.generation_config.eos_token_id == tokenizer.eos_token_id


def read_checkpoint_name(root: Path) -> str:
    return json.loads((root / "checkpoints" / "export" / "export.json").read_text())[
        "source_checkpoint"
    ]


def test_generate_loads_an_hf_export(reference):
    from trainer.completion import complete
    from trainer.export import load_export

    loaded = load_export(reference["qwen2"] / "checkpoints" / "export")
    text = complete(loaded.model, loaded.tokenizer, "The cat", max_new_tokens=5)
    assert isinstance(text, str)
    assert loaded.info["hf_layout"] == "qwen2"


# --------------------------------------------------------------- in process


def hf_spec(folder: Path, **options) -> LineageSpec:
    return LineageSpec(source=f"hf:{folder}", **options)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_gold_and_rollback(open_trainer, models, tmp_path, name):
    rows = [{"text": f"The owl number {i} eats mice at {i % 12} o'clock."} for i in range(40)]
    files = [write_jsonl(tmp_path / f"d{i}.jsonl", rows[i * 20 : (i + 1) * 20]) for i in range(2)]
    evaluation = EvalConfig(interval=2, sequences=2, batch_size=2, holdout_fraction=0.2)
    trainer = open_trainer(spec=hf_spec(models[name]), evaluation=evaluation)
    for path in files:
        trainer.train_file(trainer.prepare(path), name=path.name)
    gold = read_checkpoint(trainer.paths.checkpoints / GOLD_DIR)
    assert 0 < gold.step <= trainer.state.global_step
    trainer = open_trainer(spec=hf_spec(models[name]), evaluation=evaluation, from_gold=True)
    assert trainer.state.global_step == gold.step
    for name, tensor in gold.weights().items():
        assert torch.equal(trainer.model.state_dict()[name], tensor), name


def test_another_model_or_tokenizer_is_refused(open_trainer, models, tmp_path):
    trainer = open_trainer(spec=hf_spec(models["llama"]))
    trainer.close()
    with pytest.raises(LineageError, match=r"was started from hf:.*set model\.source"):
        open_trainer(spec=hf_spec(models["qwen2"]))
    with pytest.raises(LineageError, match=r"was started from hf:.*but model\.source = 'builtin'"):
        open_trainer(spec=LineageSpec(preset="test"))
    other = tiny_hf.make_tokenizer_dir(tmp_path / "other-tokenizer", eos="<|endoftext|>")
    with pytest.raises(LineageError, match="differs"):
        open_trainer(spec=hf_spec(models["llama"], tokenizer=str(other), tokenizer_set=True))
    open_trainer(spec=hf_spec(models["llama"]))  # the same model still opens


def test_a_builtin_lineage_refuses_an_hf_source(open_trainer, models):
    open_trainer(spec=LineageSpec(preset="test")).close()
    with pytest.raises(LineageError, match="started from the built-in model"):
        open_trainer(spec=hf_spec(models["llama"]))


def test_activation_checkpointing_gives_the_same_step(open_trainer, models, tmp_path, run_paths):
    from trainer.config import RunPaths

    rows = [{"text": f"The dog number {i} eats bones."} for i in range(16)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    states = []
    for flag in (False, True):
        paths = RunPaths(checkpoints=tmp_path / f"c{flag}", state=tmp_path / f"s{flag}")
        trainer = open_trainer(
            spec=hf_spec(models["llama"]), paths=paths, activation_checkpointing=flag
        )
        trainer.train_file(trainer.prepare(path), name=path.name)
        states.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
    for name, tensor in states[0].items():
        torch.testing.assert_close(states[1][name], tensor, atol=1e-6, rtol=1e-5)


def test_init_from_an_hf_checkpoint_starts_a_new_lineage_with_its_weights(
    open_trainer, models, tmp_path
):
    from trainer.config import RunPaths

    rows = [{"text": f"The cat number {i} eats fish."} for i in range(16)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    first = open_trainer(spec=hf_spec(models["qwen2"]))
    first.train_file(first.prepare(path), name=path.name)
    source = latest_checkpoint(first.paths.checkpoints)
    paths = RunPaths(checkpoints=tmp_path / "new-ck", state=tmp_path / "new-st")
    second = open_trainer(spec=hf_spec(models["qwen2"]), paths=paths, init_from=source.path)
    assert second.state.global_step == 0
    assert second.state.init_from["global_step"] == source.step
    for name, tensor in source.weights().items():
        assert torch.equal(second.model.state_dict()[name], tensor), name
    second.close()
    open_trainer(spec=hf_spec(models["qwen2"]), paths=paths)  # and it resumes as hf: lineage
