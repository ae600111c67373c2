"""A Hugging Face model in a real ``traind serve``: the worker loads it from its folder,
trains the three drop formats (chat through the tokenizer's template) on one step count,
exports a folder transformers loads, and, when the operator points the settings at
another model between two runs, refuses to start rather than train it silently."""

import itertools
import json
import math

import tiny_hf
from transformers import AutoModelForCausalLM

from tests.corpus import make_drops
from trainer.checkpoint import latest_checkpoint


def test_an_hf_model_trains_in_the_daemon_and_another_model_is_refused(tmp_path, service_factory):
    qwen = tiny_hf.make_qwen2_dir(tmp_path / "models" / "qwen2")
    llama = tiny_hf.make_llama_dir(tmp_path / "models" / "llama")
    service = service_factory(TRAIND_MODEL__SOURCE=f"hf:{qwen}").start()
    for drop in make_drops(tmp_path / "drops"):
        service.drop(drop)
    done = sorted(service.wait_done(3), key=lambda f: f.start_step)
    starts = {e["file"]: e for e in service.events("file_start")}
    assert starts["c.jsonl"]["format"] == "messages"
    for before, after in itertools.pairwise(done):
        assert after.start_step == before.end_step
    for record in done:  # the service's budgets: 1.5 epochs at 4 x 2 sequences a step
        n = starts[record.name]["n_sequences"]
        assert record.end_step - record.start_step == math.ceil(1.5 * n / 8)
    assert service.status()["global_step"] == done[-1].end_step
    export = service.root / "checkpoints" / "export"
    assert json.loads((export / "export.json").read_text())["hf_layout"] == "qwen2"
    AutoModelForCausalLM.from_pretrained(export, local_files_only=True)
    assert service.terminate() == 0
    step = latest_checkpoint(service.root / "checkpoints").step

    service.env["TRAIND_MODEL__SOURCE"] = f"hf:{llama}"
    service.start(wait_ready=False)
    assert service.proc.wait(timeout=90) == 2
    log = service.log.read_text()
    assert f"was started from hf:{qwen}" in log and "--new-lineage" in log
    assert latest_checkpoint(service.root / "checkpoints").step == step
