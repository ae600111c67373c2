"""Run-to-run determinism on CPU (issue 10, item 12): the same seed, data and settings train
the same bits, whatever the intra-op thread count.

At a fixed thread count every CPU kernel of a step is deterministic, but two of them gave
bits that depend on how many threads ran: ``nn.LayerNorm``'s backward (gain and bias
gradients summed in one buffer per thread's share of the rows) and the softmax backward
inside SDPA's dropout path (another code path on one thread than on several). A run
started, or resumed, under another thread count (``OMP_NUM_THREADS``, a CPU affinity mask,
a container's cpuset) then drifted from its twin. ``trainer.model`` spells both out on CPU;
these tests hold it to that.
"""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TEST_TRAIN, qa_rows, text_rows, write_jsonl

from trainer.config import LineageSpec, RunPaths, TrainConfig
from trainer.loop import Trainer
from trainer.model import LayerNorm, _causal_attention_with_dropout
from trainer.optim import build_optimizer


@pytest.fixture
def files(tmp_path) -> list[Path]:
    """A text file, packed into 256-token windows, and a prompt/completion file of short
    ragged rows (right-padded batches whose width is no multiple of the vector width): one
    step and two steps with the test batch of 4 x 2."""
    return [
        write_jsonl(tmp_path / "text.jsonl", text_rows(40)),
        write_jsonl(tmp_path / "qa.jsonl", qa_rows(16)),
    ]


def train_small(root: Path, files, *, dropout: float, threads: int | None = None) -> dict:
    """Weights and Adam moments after training ``files`` into a new small-preset lineage."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        trainer = Trainer.open(
            spec=LineageSpec(preset="small", dropout=dropout),
            train=TrainConfig(**{**TEST_TRAIN, "keep_checkpoints": 1, "checkpoint_interval": 1000}),
            paths=RunPaths(checkpoints=root / "checkpoints", state=root / "state"),
        )
        try:
            for path in files:
                trainer.train_file(trainer.prepare(path), name=path.name)
            assert trainer.state.global_step == 3
            result = {k: v.clone() for k, v in trainer.model.state_dict().items()}
            for index, moments in trainer.optimizer.state_dict()["state"].items():
                for name in ("exp_avg", "exp_avg_sq"):
                    result[f"adam.{index}.{name}"] = moments[name].clone()
            return result
        finally:
            trainer.close()
    finally:
        torch.set_num_threads(previous)


def assert_same_bits(run: dict, reference: dict, what: str) -> None:
    assert run.keys() == reference.keys()
    differing = [key for key in reference if not torch.equal(run[key], reference[key])]
    assert not differing, f"{what}: {len(differing)} tensors differ, e.g. {differing[:4]}"


# The reported case: default settings (no dropout), the default thread count.
def test_two_fresh_runs_of_the_small_preset_do_not_drift_apart(tmp_path, files):
    first = train_small(tmp_path / "run-0", files, dropout=0.0)
    second = train_small(tmp_path / "run-1", files, dropout=0.0)
    assert_same_bits(second, first, "the second run")


@pytest.mark.slow
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_ten_fresh_runs_of_the_small_preset_do_not_drift_apart(tmp_path, files, dropout):
    first = train_small(tmp_path / "run-0", files, dropout=dropout)
    for n in range(1, 10):
        run = train_small(tmp_path / f"run-{n}", files, dropout=dropout)
        assert_same_bits(run, first, f"run {n}")


# Dropout on: the attention-dropout path and the RNG are in play as well as the norms.
def test_one_and_two_threads_train_the_same_bits(tmp_path, files):
    one = train_small(tmp_path / "one", files, dropout=0.1, threads=1)
    two = train_small(tmp_path / "two", files, dropout=0.1, threads=2)
    assert_same_bits(two, one, "two threads against one")


@pytest.mark.slow
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_one_to_four_threads_train_the_same_bits(tmp_path, files, dropout):
    one = train_small(tmp_path / "t1", files, dropout=dropout, threads=1)
    for threads in (2, 3, 4):
        run = train_small(tmp_path / f"t{threads}", files, dropout=dropout, threads=threads)
        assert_same_bits(run, one, f"{threads} threads against one")


def at_thread_counts(fn, counts=(1, 2, 3)) -> list:
    previous = torch.get_num_threads()
    try:
        results = []
        for n in counts:
            torch.set_num_threads(n)
            results.append(fn())
        return results
    finally:
        torch.set_num_threads(previous)


def test_layer_norm_gradients_do_not_depend_on_the_thread_count():
    torch.manual_seed(0)
    norm = LayerNorm(384, bias=True)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.1)
        norm.bias.normal_(0.0, 0.1)
    x = torch.randn(8, 200, 384, requires_grad=True)
    grad = torch.randn(8, 200, 384)

    def run():
        out = norm(x)
        return (out.detach(), *torch.autograd.grad(out, (x, norm.weight, norm.bias), grad))

    reference, *others = at_thread_counts(run)
    for other in others:
        for a, b in zip(other, reference, strict=True):
            assert torch.equal(a, b)
    # The same function as torch's fused LayerNorm, up to rounding (the gain and bias
    # gradients are sums over 1600 rows, added in another order).
    fused = torch.nn.LayerNorm(384, bias=True)
    fused.load_state_dict(norm.state_dict())
    out = fused(x)
    expected = (out.detach(), *torch.autograd.grad(out, (x, fused.weight, fused.bias), grad))
    for a, b, tol in zip(reference, expected, (1e-5, 1e-5, 2e-4, 2e-4), strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_attention_dropout_gradients_do_not_depend_on_the_thread_count():
    torch.manual_seed(0)
    # 106 positions: not a multiple of the vector width, where the SDPA math path's softmax
    # backward gave other bits on one thread than on two.
    q, k, v = (torch.randn(4, 6, 106, 64, requires_grad=True) for _ in range(3))
    grad = torch.randn(4, 6, 106, 64)

    def run():
        torch.manual_seed(3)
        out = _causal_attention_with_dropout(q, k, v, 0.1)
        return (out.detach(), *torch.autograd.grad(out, (q, k, v), grad))

    reference, *others = at_thread_counts(run)
    for other in others:
        for a, b in zip(other, reference, strict=True):
            assert torch.equal(a, b)


def test_attention_with_dropout_is_causal_attention_with_dropped_weights():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 37, 16) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(_causal_attention_with_dropout(q, k, v, 0.0), expected)
    # With v the identity, the output rows are the (dropped, rescaled) attention weights.
    eye = torch.eye(37).expand(2, 3, 37, 37)
    torch.manual_seed(1)
    weights = _causal_attention_with_dropout(q, k, eye, 0.5)
    assert torch.all(weights.triu(1) == 0), "no position attends to a later one"
    kept = weights.tril() != 0
    assert 0.4 < kept.sum() / torch.ones(37, 37).tril().sum() / 6 < 0.6
    full = F.scaled_dot_product_attention(q, k, eye, is_causal=True)
    torch.testing.assert_close(weights[kept], 2 * full[kept])


def test_adamw_steps_with_the_fused_kernel_on_cpu_and_agrees_with_foreach():
    """The fused CPU kernel (several times faster than foreach) is the one every lineage
    steps with; it differs from foreach only in the last bits. That it gives the same bits
    whatever the thread count, the thread tests above show over whole runs."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LayerNorm(64))
    twin = copy.deepcopy(model)
    config = TrainConfig(**TEST_TRAIN)
    fused = build_optimizer(model, config)
    assert fused.defaults["fused"] is True
    reference = torch.optim.AdamW(
        [
            {"params": [twin[0].weight], "weight_decay": config.weight_decay},
            {"params": [twin[0].bias, *twin[1].parameters()], "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
        betas=(config.beta1, config.beta2),
        foreach=True,
    )
    # One step: over several, Adam's normalisation lets last-bit differences grow where a
    # gradient is near zero (bench/optimizer.py prints the drift over 40 steps).
    for net, optimizer in ((model, fused), (twin, reference)):
        net(torch.ones(8, 64)).square().mean().backward()
        optimizer.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
