"""The worker takes up a new revision of the settings in force between files, and never
in the middle of one (service.worker.process, Worker.follow_settings): in-process, with
the test model. The lineage is opened again from the file-end checkpoint, so the weights
are exactly those the file left."""

from __future__ import annotations

import json
import logging

import torch

from service.config.in_force import InForce, in_force_path, write_in_force
from service.signals import StopFlag
from service.worker.process import Worker
from service.worker.revisions import SettingsRevisions
from tests.service.worker.tiny_settings import tiny_settings


def configured(tmp_path, **train):
    return tiny_settings(tmp_path, train=train)


def weights(worker: Worker) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in worker.trainer.model.state_dict().items()}


def test_a_new_revision_applies_between_files_never_mid_file(tmp_path, drops, caplog):
    first = configured(tmp_path, learning_rate=0.003)
    path = in_force_path(first)
    write_in_force(path, InForce(settings=first, revision=1, loaded_at="start"))
    worker = Worker(first, stop=StopFlag(), revisions=SettingsRevisions(path, held=1))
    worker.trainer = worker.open_lineage()
    try:
        trainer = worker.trainer
        trainer.train_file(trainer.prepare(drops[0]), name=drops[0].name)
        step, before = trainer.state.global_step, weights(worker)
        newer = configured(tmp_path, learning_rate=0.01, micro_batch_size=2, grad_accum_steps=2)
        write_in_force(path, InForce(settings=newer, revision=2, loaded_at="reload"))

        trainer.state.current_file = object()  # as if a file were in progress
        worker.follow_settings()
        assert worker.revisions.held == 1 and worker.trainer is trainer
        trainer.state.current_file = None

        caplog.set_level(logging.INFO, logger="service.worker.revisions")
        worker.follow_settings()
        assert worker.revisions.held == 2 and worker.settings is not first
        assert worker.trainer is not trainer
        assert worker.trainer.train.learning_rate == 0.01
        assert worker.trainer.state.global_step == step
        after = weights(worker)
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert "settings revision 2 applied at global step" in caplog.text
        events = [json.loads(line) for line in first.run_paths().events.read_text().splitlines()]
        assert events[-1]["event"] == "training_start"
        assert events[-1]["train_config"]["learning_rate"] == 0.01

        # A revision that cannot be read is logged once and the settings in force stay.
        path.write_text(json.dumps({"format_version": 1, "revision": 3, "settings": 7}))
        worker.follow_settings()
        worker.follow_settings()
        assert worker.revisions.held == 2 and worker.settings.train.learning_rate == 0.01
        assert caplog.text.count("settings revision 3 cannot be applied") == 1
    finally:
        worker.trainer.close()
        worker.ledger.close()
