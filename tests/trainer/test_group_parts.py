"""The pieces of group training that need no second process: how a step's rows are
shared out, how rank 0's decisions and settings travel, how a collective's timeout is
told, and the sharded checkpoint's atomic write and whole read (on a one-process gloo
group). The two-process runs are in tests/service/test_distributed.py."""

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
from conftest import write_jsonl

from trainer.cache import tokenize_file
from trainer.config import (
    EvalConfig,
    ExportConfig,
    GoldConfig,
    LineageSpec,
    LoraConfig,
    TrainConfig,
)
from trainer.distributed import Channel, CollectiveTimeoutError, Group, choose_strategy
from trainer.opening import plain, unpack
from trainer.records.checkpoints import SHARDED_METADATA
from trainer.records.manifest import verify
from trainer.rows import StepRows
from trainer.sharded import read_sharded, small_files, write_sharded
from trainer.tokenizer import load_tokenizer


@pytest.fixture
def data(tmp_path):
    path = write_jsonl(
        tmp_path / "a.jsonl", [{"text": f"line {i} " * (i % 5 + 1)} for i in range(30)]
    )
    return tokenize_file(
        path, tokenizer=load_tokenizer("bytes"), block_size=32, cache_dir=tmp_path / "c"
    )


@pytest.mark.parametrize(("n", "world"), [(8, 2), (8, 3), (2, 3), (7, 4), (5, 1)])
def test_shards_cover_every_row_of_the_step_once_in_order(data, n, world):
    rows = StepRows.of(data, np.arange(n))
    other = StepRows.of(data, np.arange(10, 10 + n // 2))
    step = StepRows((rows.own, *other.parts))  # the file's own rows, then replayed ones
    shards = [step.shard(rank, world) for rank in range(world)]
    flat = [(d.sha256, int(r)) for s in shards for d, idx in s.parts for r in idx]
    assert flat == [(d.sha256, int(r)) for d, idx in step.parts for r in idx]
    per = -(-len(step) // world)
    assert [len(s) for s in shards] == [
        max(0, min(per, len(step) - rank * per)) for rank in range(world)
    ]


def test_rank_zeros_settings_travel_as_json_and_come_back_equal():
    configs = (
        LineageSpec(lora=LoraConfig(r=4), new_tokens=("<a>",), overrides={"block_size": 64}),
        TrainConfig(learning_rate=1e-3, replay_fraction=0.25),
        EvalConfig(holdout_fraction=0.1),
        GoldConfig(),
        ExportConfig(),
    )
    sent = json.loads(json.dumps([plain(c) for c in configs]))
    assert unpack(sent) == configs
    with pytest.raises(ValueError, match="unknown kind"):
        unpack([{"__class__": "os:system"}])


def test_a_collective_timeout_is_told_with_the_setting_to_change():
    group = Group(rank=1, world_size=2, timeout_s=5)
    timeout = RuntimeError("[gloo] Timed out waiting 5000ms for recv operation to complete")
    with (
        pytest.raises(CollectiveTimeoutError, match=r"worker\.collective_timeout_s") as caught,
        group.watched(),
    ):
        raise timeout
    assert "rank 1 waited more than 5s" in str(caught.value)
    with pytest.raises(RuntimeError, match="something else"), group.watched():
        raise RuntimeError("something else")


def test_auto_picks_fsdp_only_when_one_device_is_too_small():
    assert choose_strategy("auto", fits_one_device=True) == "ddp"
    assert choose_strategy("auto", fits_one_device=False) == "fsdp"
    assert choose_strategy("ddp", fits_one_device=False) == "ddp"
    with pytest.raises(ValueError, match=r"worker\.strategy"):
        choose_strategy("zero3", fits_one_device=True)


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group(
        "gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


def test_decisions_arrive_in_order_and_old_ones_are_dropped(one_process_group):
    leader, follower = Channel(Group()), Channel(Group())
    for step in range(Channel.KEEP + 5):
        leader.send("decision", stop=step % 2 == 0)
        assert follower.receive() == ("decision", {"stop": step % 2 == 0})
    assert not leader.store.check([f"{Channel.PREFIX}1"]), "the oldest decisions are deleted"


def test_a_sharded_checkpoint_is_atomic_and_reads_back_whole(tmp_path, one_process_group):
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    small = small_files(
        config={"n": 1},
        tokenizer_json="{}",
        training_state={"global_step": 7, "format_version": 5},
        tokenizer_config_json=None,
    )
    target = tmp_path / "step-00000007"

    def write(fault=lambda point: None):
        return write_sharded(
            target,
            tensors=dict(model.state_dict()),
            optimizer_state=optimizer.state_dict(),
            small=small,
            leader=True,
            fault=fault,
            format_version=5,
        )

    def crash(point):
        if point == "before_manifest":
            raise KeyboardInterrupt  # a kill here, as far as the folder can tell

    with pytest.raises(KeyboardInterrupt):
        write(crash)
    assert list(tmp_path.iterdir()) == [tmp_path / "store"], "nothing under a real name"
    write()
    assert verify(target) is None
    assert (target / SHARDED_METADATA).is_file()
    tensors, saved = read_sharded(target)
    for name, value in model.state_dict().items():
        assert torch.equal(tensors[name], value)
    live = optimizer.state_dict()
    assert saved["param_groups"] == live["param_groups"]
    for index, moments in live["state"].items():
        for key, value in moments.items():
            assert torch.equal(saved["state"][index][key], value)
    # A shard gone or cut short: the manifest no longer vouches for the folder.
    shard = next((target / "sharded").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-1])
    assert "has" in verify(target)
