"""``traind train`` under torchrun on CPU (gloo): DDP and FSDP2 with two processes train
exact cumulative steps counted with ``world_size`` and end where one process with the
same global batch ends; a checkpoint written by two ranks (sharded, Distributed
Checkpoint) resumes at world size 1 and 3; one rank killed mid-file loses nothing.
"""

import shutil

import pytest
import torch
from conftest import read_events, run_traind

from tests.corpus import make_drops, traind_env
from trainer.checkpoint import latest_checkpoint
from trainer.records.checkpoints import SHARDED_METADATA

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is needed",
)

TOLERANCE = 1e-5
"""Two ranks sum gradients in another order than one process: equal to float rounding."""


def group_env(root, **extra):
    """A small lineage with one global batch of 8 sequences: micro 4 x accum 1 x 2 ranks
    (or x accum 2 alone), no dropout (each rank draws its own masks), eval and gold on."""
    return traind_env(
        root,
        TRAIND_MODEL__DROPOUT="0",
        TRAIND_TRAIN__EPOCHS_PER_FILE="1",
        TRAIND_TRAIN__CHECKPOINT_INTERVAL="2",
        **extra,
    )


def train(root, drops, *, nproc, **extra):
    """``traind train DROPS --nproc-per-node NPROC`` (torch's own launcher, by traind)."""
    root.mkdir(exist_ok=True)
    args = ["train", *map(str, drops), f"--nproc-per-node={nproc}"]
    return run_traind(args, env=group_env(root, **extra), cwd=root, timeout=240)


def assert_close_to(root, reference):
    """The newest checkpoint under ``root`` equals ``reference``'s to float rounding:
    same step, files and step ranges, weights and optimizer moments."""
    got, want = (
        latest_checkpoint(root / "checkpoints"),
        latest_checkpoint(reference / "checkpoints"),
    )
    assert got.step == want.step
    spans = [
        (f["name"], f["start_step"], f["end_step"]) for f in got.training_state["files_completed"]
    ]
    assert spans == [
        (f["name"], f["start_step"], f["end_step"]) for f in want.training_state["files_completed"]
    ]
    weights, ref_weights = got.weights(), want.weights()
    assert weights.keys() == ref_weights.keys()
    for name, value in weights.items():
        torch.testing.assert_close(value, ref_weights[name], atol=TOLERANCE, rtol=0, msg=name)
    moments, ref_moments = got.optimizer_state()["state"], want.optimizer_state()["state"]
    for index, saved in ref_moments.items():
        for key, value in saved.items():
            torch.testing.assert_close(moments[index][key], value, atol=TOLERANCE, rtol=0)


def file_completes(root):
    return [e["file"] for e in read_events(root) if e["event"] == "file_complete"]


@pytest.fixture(scope="module")
def drops(tmp_path_factory):
    return make_drops(tmp_path_factory.mktemp("drops"))[:2]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, drops):
    """The reference: one process, micro 4 x accum 2 (the same 8 sequences per step)."""
    root = tmp_path_factory.mktemp("one")
    result = train(root, drops, nproc=1, TRAIND_TRAIN__GRAD_ACCUM_STEPS="2")
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, drops):
    """Uninterrupted two-rank runs by strategy (micro 4 x accum 1 x world 2), each made
    once for the module: ``two_ranks(strategy)`` is (root, result)."""
    runs = {}

    def run(strategy):
        if strategy not in runs:
            root = tmp_path_factory.mktemp(strategy)
            result = train(
                root,
                drops,
                nproc=2,
                TRAIND_TRAIN__GRAD_ACCUM_STEPS="1",
                TRAIND_WORKER__STRATEGY=strategy,
            )
            runs[strategy] = root, result
        return runs[strategy]

    return run


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_train_exact_steps_and_match_one_process(two_ranks, drops, one_process, strategy):
    tmp_path, result = two_ranks(strategy)
    assert result.returncode == 0, result.stderr[-3000:]
    starts = [e for e in read_events(tmp_path) if e["event"] == "file_start"]
    # ceil(n / (micro 4 x accum 1 x world 2)), from the step the file starts at.
    assert [(e["start_step"], e["steps"], e["sequences_per_step"]) for e in starts] == [
        (0, -(-starts[0]["n_sequences"] // 8), 8),
        (starts[0]["steps"], -(-starts[1]["n_sequences"] // 8), 8),
    ]
    assert file_completes(tmp_path) == [p.name for p in drops]
    newest = latest_checkpoint(tmp_path / "checkpoints")
    assert (newest.path / SHARDED_METADATA).is_file()
    assert len(list((newest.path / "sharded").glob("*.distcp"))) == 2
    assert_close_to(tmp_path, one_process)
    # Gold and the export stay whole, in the single-process layout.
    assert (tmp_path / "checkpoints" / "gold" / "model.safetensors").is_file()
    assert (tmp_path / "checkpoints" / "export" / "model.safetensors").is_file()


def test_killed_rank_then_resume_at_world_size_one_and_three(tmp_path, drops, two_ranks):
    """Rank 1 dies mid-file (SIGKILL) at world size 2; the group goes down with it. The
    same command at world size 1, or 3, resumes the sharded checkpoint (the file keeps
    its 8 sequences per step, now split over the ranks there are) and ends where an
    uninterrupted two-rank run ends, each file completed once."""
    fsdp = {"TRAIND_TRAIN__GRAD_ACCUM_STEPS": "1", "TRAIND_WORKER__STRATEGY": "fsdp"}
    whole, result = two_ranks("fsdp")
    assert result.returncode == 0, result.stderr[-3000:]
    killed = tmp_path / "killed"
    result = train(
        killed, drops, nproc=2, TRAIND_FAULT="loop:mid_step@9", TRAIND_FAULT_RANK="1", **fsdp
    )
    assert result.returncode != 0
    found = latest_checkpoint(killed / "checkpoints")
    # Interval checkpoints are written in the background: step 8's may not have been
    # committed when rank 1 died, but step 6's was before step 8's began (one at a time).
    assert found.step in (6, 8)
    assert found.training_state["current_file"]["name"] == drops[1].name
    assert (found.path / SHARDED_METADATA).is_file()
    for nproc in (1, 3):
        root = tmp_path / f"world{nproc}"
        shutil.copytree(killed, root, symlinks=True)
        result = train(root, drops, nproc=nproc, **fsdp)
        assert result.returncode == 0, result.stderr[-3000:]
        assert_close_to(root, whole)
        assert file_completes(root) == [p.name for p in drops], f"world size {nproc}"
        starts = [e for e in read_events(root) if e["event"] == "file_start"]
        assert len(starts) == 2, "the file in progress continues, it does not start again"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    import tiny_hf

    return tiny_hf.make_llama_dir(tmp_path_factory.mktemp("models") / "llama")


@pytest.mark.parametrize(
    "strategy",
    [
        # The built-in model's runs above cover DDP; FSDP is the one that touches how a
        # Hugging Face model's blocks are found and sharded.
        pytest.param("ddp", marks=pytest.mark.slow),
        "fsdp",
    ],
)
def test_a_hugging_face_model_on_two_ranks_matches_one_process(tmp_path, drops, llama, strategy):
    hf = {"TRAIND_MODEL__SOURCE": f"hf:{llama}", "TRAIND_EVAL__PROMPTS": "[]"}
    one = tmp_path / "one"
    assert train(one, drops, nproc=1, TRAIND_TRAIN__GRAD_ACCUM_STEPS="2", **hf).returncode == 0
    two = tmp_path / "two"
    result = train(
        two,
        drops,
        nproc=2,
        TRAIND_TRAIN__GRAD_ACCUM_STEPS="1",
        TRAIND_WORKER__STRATEGY=strategy,
        **hf,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert file_completes(two) == [p.name for p in drops]
    assert_close_to(two, one)


@pytest.mark.slow  # torch's agent gives the hung rank 30 s before its SIGKILL
def test_a_hung_rank_is_caught_by_the_collective_timeout_and_reported(tmp_path, drops):
    """Rank 1 hangs mid-step (a stuck device, a dead mount): rank 0's next collective
    gives up after worker.collective_timeout_s, says so (log and collective_timeout
    event), and the run exits 70; the last committed checkpoint stands."""
    result = train(
        tmp_path,
        drops[:1],
        nproc=2,
        TRAIND_TRAIN__GRAD_ACCUM_STEPS="1",
        TRAIND_WORKER__COLLECTIVE_TIMEOUT_S="3",
        TRAIND_FAULT="loop:mid_step@3",
        TRAIND_FAULT_RANK="1",
        TRAIND_FAULT_ACTION="hang",
        TORCH_ELASTIC_SHUTDOWN_TIMEOUT="1",  # how long the agent waits before SIGKILL
    )
    assert result.returncode != 0
    assert "worker.collective_timeout_s" in result.stderr
    assert result.returncode == 70, result.stderr[-3000:]
    timeouts = [e for e in read_events(tmp_path) if e["event"] == "collective_timeout"]
    assert [(e["step"], e["rank"], e["timeout_s"]) for e in timeouts] == [(3, 0, 3.0)]
    assert latest_checkpoint(tmp_path / "checkpoints").step == 2


def test_a_crash_while_a_group_checkpoint_is_written_in_the_background(tmp_path, drops):
    """Rank 0 dies while its background thread seals the group's first interval
    checkpoint (shards written, manifest not yet): the previous checkpoint stands, the
    half-written one is never taken for a checkpoint, and the same command (here with one
    process) finishes every file once."""
    result = train(
        tmp_path,
        drops,
        nproc=2,
        TRAIND_TRAIN__GRAD_ACCUM_STEPS="1",
        TRAIND_WORKER__STRATEGY="fsdp",
        TRAIND_FAULT="checkpoint:before_manifest@2",  # 1: lineage_start; 2: step 2, async
        TRAIND_FAULT_RANK="0",
    )
    assert result.returncode != 0
    saved = [e for e in read_events(tmp_path) if e["event"] == "checkpoint_saved"]
    assert [(e["step"], e["async"]) for e in saved] == [(0, False)]
    assert latest_checkpoint(tmp_path / "checkpoints").step == 0
    result = train(tmp_path, drops, nproc=1, TRAIND_TRAIN__GRAD_ACCUM_STEPS="2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert file_completes(tmp_path) == [p.name for p in drops]
    assert not list((tmp_path / "checkpoints").glob(".staging-*"))


def test_a_group_rolls_back_to_gold_together(tmp_path, two_ranks):
    """``traind train --from gold --nproc-per-node 2``: rank 0 moves the folders, and the
    rollback's checkpoint is written by both ranks at gold's step."""
    source, result = two_ranks("ddp")
    assert result.returncode == 0, result.stderr[-3000:]
    root = tmp_path / "copy"
    shutil.copytree(source, root, symlinks=True)
    gold_step = latest_checkpoint(root / "checkpoints").training_state["gold"]["step"]
    result = run_traind(
        ["train", "--from", "gold", "--nproc-per-node=2"],
        env=group_env(root, TRAIND_TRAIN__GRAD_ACCUM_STEPS="1", TRAIND_WORKER__STRATEGY="ddp"),
        cwd=root,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rollbacks = [e for e in read_events(root) if e["event"] == "rolled_back_to_gold"]
    assert [e["gold_step"] for e in rollbacks] == [gold_step]
    newest = latest_checkpoint(root / "checkpoints")
    assert newest.step == gold_step
    assert (newest.path / SHARDED_METADATA).is_file(), "written by the group"
