"""SIGHUP to a real ``traind serve``: a new learning rate holds from the next file, logged
and recorded; a new port is refused and the service keeps serving on the old one; a file
that does not load changes nothing. One service, two small files."""

import signal

from conftest import wait_for

from tests.corpus import make_drops


def settings_text(*, lr: float, port: int) -> str:
    return f"[server]\nport = {port}\n\n[train]\nlearning_rate = {lr}\n"


def test_sighup_applies_training_settings_from_the_next_file_and_refuses_a_port(
    tmp_path, service_factory
):
    a, b, _ = make_drops(tmp_path / "drops")
    service = service_factory(TRAIND_TRAIN__WARMUP_STEPS="0")  # the lr is the setting itself
    # traind.toml decides these two here: a variable would win over the file.
    del service.env["TRAIND_TRAIN__LEARNING_RATE"], service.env["TRAIND_SERVER__PORT"]
    config = service.root / "traind.toml"  # found in serve's working folder
    service.root.mkdir(parents=True)
    config.write_text(settings_text(lr=0.003, port=service.port))
    service.start()
    service.drop(a)
    (first,) = service.wait_done(1)

    config.write_text(settings_text(lr=0.001, port=service.port + 1))
    service.proc.send_signal(signal.SIGHUP)
    (event,) = wait_for(lambda: service.events("settings_reloaded"), timeout=20, what="a reload")
    assert event["changed"] == {"train.learning_rate": [0.003, 0.001]}
    assert list(event["refused"]) == ["server.port"] and event["revision"] == 2
    assert event["refused"]["server.port"].startswith("needs a restart: ")
    shown = service.get("/v1/settings").json()  # still on the old port
    assert shown["revision"] == 2 and shown["config_file"] == str(config.resolve())
    assert shown["settings"]["server"]["port"] == service.port
    assert shown["settings"]["train"]["learning_rate"] == 0.001

    service.drop(b)
    second = next(f for f in service.wait_done(2) if f.name == "b.jsonl")
    assert second.start_step == first.end_step

    def lrs(start: int, end: int) -> set[float]:
        return {round(e["lr"], 12) for e in service.events("eval") if start < e["step"] <= end}

    assert lrs(-1, first.end_step) == {0.003}
    assert lrs(second.start_step, second.end_step) == {0.001}
    assert service.events("training_start")[-1]["train_config"]["learning_rate"] == 0.001
    log = service.log.read_text()
    assert (
        "settings reloaded: train.learning_rate 0.003 -> 0.001 (applies from the next file)" in log
    )
    assert "settings reload refused server.port" in log
    assert "settings revision 2 applied at global step" in log
    wait_for(
        lambda: service.get("/v1/settings").json()["worker_revision"] == 2,
        timeout=20,
        what="the worker's heartbeat with revision 2",
    )

    config.write_text("[train\nlearning_rate = 0.5\n")
    service.proc.send_signal(signal.SIGHUP)
    (failed,) = wait_for(
        lambda: service.events("settings_reload_failed"), timeout=20, what="the refusal"
    )
    assert failed["revision"] == 2 and "not valid TOML" in failed["error"]
    assert service.get("/v1/settings").json()["revision"] == 2
    assert service.terminate() == 0
