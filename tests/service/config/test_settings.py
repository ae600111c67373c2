"""Settings: sources and their priority, validation messages, paths, trainer conversions."""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path

import pytest

from service.config.sections import OVERRIDABLE_ARCH_FIELDS, TrainSection
from service.config.settings import Settings, SettingsError, load_settings
from trainer.config import LineageSpec, ModelConfig, RunPaths, TrainConfig


@pytest.fixture(autouse=True)
def clean_env(clean_env: Path) -> Path:
    """As the suite's, but working in a folder of its own, so no traind.toml is found."""
    work = clean_env / "cwd"
    work.mkdir()
    os.chdir(work)  # the suite fixture's monkeypatch.chdir restores the folder afterwards
    return work


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file(clean_env: Path) -> None:
    settings = load_settings()
    assert settings.config_file is None
    assert settings.paths.inbox == clean_env / "data_inbox"
    assert settings.paths.checkpoints == clean_env / "checkpoints"
    assert settings.paths.state == clean_env / "state"
    assert (settings.server.host, settings.server.port, settings.server.token) == (
        "127.0.0.1",
        8321,
        None,
    )
    assert settings.model.source == "builtin"
    assert settings.model.preset == "tiny"
    assert settings.model.tokenizer == "bytes"
    assert settings.model.dropout == 0.0
    assert settings.model.overrides == {}
    assert settings.eval.interval == 500
    assert settings.eval_config().sequences == 160 and settings.eval.batch_size == 8
    assert settings.eval.at_file_end is True
    assert settings.export.source == "latest"
    assert settings.eval.sets == {}
    assert settings.eval.holdout_fraction == 0.0
    assert settings.eval.prompts == []
    assert settings.gold.overfit_ratio == 5.0
    assert settings.gold.consecutive_rises == 2
    assert settings.gold.regression_threshold == 0.2
    assert settings.train_config() == TrainConfig()


def test_values_from_the_toml_file(tmp_path: Path) -> None:
    config = write(
        tmp_path / "run" / "traind.toml",
        """
        [server]
        port = 9000
        token = "s3cret"
        [model]
        preset = "small"
        dropout = 0.1
        overrides = { block_size = 512, pos_encoding = "rope" }
        [train]
        learning_rate = 1e-3
        lr_schedule = "cosine"
        cuda_memory_fraction = 0.5
        [eval]
        holdout_fraction = 0.1
        prompts = ["2+2="]
        [gold]
        consecutive_rises = 3
        """,
    )
    settings = load_settings(config)
    assert settings.config_file == config.resolve()
    assert settings.server.port == 9000
    assert settings.server.token == "s3cret"
    assert "s3cret" not in repr(settings)
    assert settings.model.overrides == {"block_size": 512, "pos_encoding": "rope"}
    assert settings.train.learning_rate == 1e-3
    assert settings.train.lr_schedule == "cosine"
    assert settings.train.cuda_memory_fraction == 0.5
    assert settings.train.micro_batch_size == 8  # untouched keys keep their default
    assert settings.eval.prompts == ["2+2="]
    assert settings.gold.consecutive_rises == 3


def test_environment_overrides_including_nested_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAIND_TRAIN__LEARNING_RATE", "1e-3")
    monkeypatch.setenv("TRAIND_TRAIN__MICRO_BATCH_SIZE", "4")
    monkeypatch.setenv("TRAIND_SERVER__TOKEN", "from-env")
    monkeypatch.setenv("TRAIND_MODEL__OVERRIDES__BLOCK_SIZE", "512")
    monkeypatch.setenv("TRAIND_EVAL__PROMPTS", '["a", "b"]')
    settings = load_settings()
    assert settings.train.learning_rate == 1e-3
    assert settings.train.micro_batch_size == 4
    assert settings.server.token == "from-env"
    # Typed per architecture field: the string from the environment becomes an int.
    assert settings.model.overrides == {"block_size": 512}
    assert settings.eval.prompts == ["a", "b"]


def test_precedence_kwargs_over_env_over_file_over_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(
        tmp_path / "traind.toml",
        "[train]\nlearning_rate = 0.1\nseed = 1\nwarmup_steps = 7\n",
    )
    monkeypatch.setenv("TRAIND_TRAIN__LEARNING_RATE", "0.2")
    monkeypatch.setenv("TRAIND_TRAIN__SEED", "2")
    settings = load_settings(config, train={"learning_rate": 0.3})
    assert settings.train.learning_rate == 0.3  # keyword argument wins
    assert settings.train.seed == 2  # environment beats the file
    assert settings.train.warmup_steps == 7  # the file beats the default
    assert settings.train.grad_clip == 1.0  # default


def test_config_file_from_traind_config_then_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    write(clean_env / "traind.toml", "[train]\nseed = 11\n")
    assert load_settings().train.seed == 11
    assert load_settings().config_file == (clean_env / "traind.toml").resolve()

    elsewhere = write(tmp_path / "etc" / "other.toml", "[train]\nseed = 22\n")
    monkeypatch.setenv("TRAIND_CONFIG", str(elsewhere))
    assert load_settings().train.seed == 22
    assert load_settings().config_file == elsewhere.resolve()

    explicit = write(tmp_path / "explicit.toml", "[train]\nseed = 33\n")
    assert load_settings(explicit).train.seed == 33


def test_missing_config_file_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match=r"nope\.toml: config file not found"):
        load_settings(tmp_path / "nope.toml")
    monkeypatch.setenv("TRAIND_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(SettingsError, match=r"gone\.toml: config file not found.*TRAIND_CONFIG"):
        load_settings()


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "broken.toml", "[train\nseed = 1\n")
    with pytest.raises(SettingsError, match=r"broken\.toml: not valid TOML"):
        load_settings(config)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[train]\nlearning_rat = 1e-3\n", "train.learning_rat: unknown key"),
        ("[paths]\ninbx = 'x'\n", "paths.inbx: unknown key"),
        ("[trian]\nseed = 1\n", "trian: unknown key"),
        ("log_level = 'INFO'\n", "log_level: unknown key"),
    ],
)
def test_unknown_key_fails_naming_it(tmp_path: Path, text: str, expected: str) -> None:
    config = write(tmp_path / "traind.toml", text)
    with pytest.raises(SettingsError) as info:
        load_settings(config)
    assert f"{config}: {expected}" in str(info.value)


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    config = write(tmp_path / "traind.toml", "[train]\nlearning_rat = 1e-3\n")
    with pytest.raises(SettingsError, match="did you mean 'learning_rate'"):
        load_settings(config)


def test_bad_value_names_file_section_key_and_reason(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(clean_env / "traind.toml", "[train]\nmicro_batch_size = 0\n[eval]\nsequences = 0\n")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert info.value.problems == (
        "traind.toml: train.micro_batch_size: Input should be greater than or equal to 1",
        "traind.toml: eval.sequences: Input should be greater than or equal to 1",
    )
    assert isinstance(info.value, ValueError)


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAIND_TRAIN__GRAD_ACCUM_STEPS", "many")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value).startswith(
        "environment TRAIND_TRAIN__GRAD_ACCUM_STEPS: train.grad_accum_steps: Input should be"
    )


@pytest.mark.parametrize(
    ("section", "values", "expected"),
    [
        (
            "model",
            {"source": "hf:/models/llama"},
            "/models/llama is not a Hugging Face model folder",
        ),
        ("model", {"source": "hub:meta-llama/Llama-3.2-1B"}, 'use "builtin" or "hf:/path'),
        ("model", {"tokenizer": "/"}, "tokenizer folder / holds no tokenizer.json"),
        ("model", {"dropout": 1.0}, "model.dropout"),
        ("model", {"overrides": {"n_hed": 4}}, "did you mean 'n_head'"),
        ("model", {"overrides": {"dropout": 0.1}}, "set dropout with model.dropout"),
        ("model", {"overrides": {"block_size": "big"}}, "block_size: Input should be"),
        ("model", {"tokenizer": "missing/tokenizer.json"}, "model.tokenizer: tokenizer"),
        ("train", {"lr_schedule": "linear"}, "train.lr_schedule"),
        ("train", {"device": "gpu"}, "'gpu' is not a device"),
        ("train", {"epochs_per_file": 0}, "train.epochs_per_file"),
        ("train", {"cuda_memory_fraction": 1.5}, "train.cuda_memory_fraction"),
        ("eval", {"holdout_fraction": 0.6}, "eval.holdout_fraction"),
        ("eval", {"sets": {"math": "nowhere.jsonl"}}, "eval set 'math'"),
        ("server", {"port": 70000}, "server.port"),
        ("gold", {"consecutive_rises": 0}, "gold.consecutive_rises"),
    ],
)
def test_validation(section: str, values: dict[str, object], expected: str) -> None:
    with pytest.raises(SettingsError, match="load_settings\\(\\) argument") as info:
        load_settings(**{section: values})
    assert expected in str(info.value)


def test_an_hf_source_is_a_model_folder_relative_to_the_config(
    tmp_path: Path, clean_env: Path
) -> None:
    run = tmp_path / "run"
    write(run / "models" / "llama" / "config.json", '{"model_type": "llama"}')
    write(run / "tok" / "tokenizer.json", "{}")
    config = write(
        run / "traind.toml",
        """
        [model]
        source = "hf:models/llama"
        tokenizer = "tok"
        overrides = { block_size = 512 }
        [train]
        activation_checkpointing = true
        shard_size_mb = 0.5
        """,
    )
    settings = load_settings(config)
    spec = settings.lineage_spec()
    assert spec.source == f"hf:{(run / 'models' / 'llama').resolve()}"
    assert spec.tokenizer == str((run / "tok").resolve()) and spec.tokenizer_set
    assert spec.overrides == {"block_size": 512}
    train = settings.train_config()
    assert train.activation_checkpointing and train.shard_bytes == 500_000
    with pytest.raises(SettingsError, match="apply to the builtin model only"):
        load_settings(config, model={"overrides": {"n_layer": 2}})


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, clean_env: Path) -> None:
    run = tmp_path / "run"
    write(run / "tok" / "tokenizer.json", "{}")
    write(run / "sets" / "math.jsonl", '{"text": "1+1=2"}\n')
    config = write(
        run / "traind.toml",
        """
        [paths]
        inbox = "incoming"
        state = "/abs/state"
        [model]
        tokenizer = "tok/tokenizer.json"
        [eval]
        sets = { math = "sets/math.jsonl" }
        """,
    )
    settings = load_settings(config)  # the working directory is clean_env, not run/
    assert settings.paths.inbox == run.resolve() / "incoming"
    assert settings.paths.checkpoints == run.resolve() / "checkpoints"  # defaults too
    assert settings.paths.state == Path("/abs/state")
    assert settings.model.tokenizer == str(run.resolve() / "tok" / "tokenizer.json")
    assert settings.eval.sets == {"math": run.resolve() / "sets" / "math.jsonl"}


def test_parent_relative_paths_like_the_demo_config(tmp_path: Path) -> None:
    config = write(tmp_path / "repo" / "examples" / "demo.toml", '[paths]\ninbox = "../demo/in"\n')
    assert load_settings(config).paths.inbox == tmp_path.resolve() / "repo" / "demo" / "in"


def test_relative_paths_from_env_resolve_against_the_working_dir(
    tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path / "run" / "traind.toml", "")
    monkeypatch.setenv("TRAIND_PATHS__CHECKPOINTS", "ckpt")
    settings = load_settings(config)
    assert settings.paths.checkpoints == clean_env.resolve() / "ckpt"
    assert settings.paths.inbox == (tmp_path / "run").resolve() / "data_inbox"


def test_demo_config_loads() -> None:
    demo = Path(__file__).resolve().parents[3] / "examples" / "demo.toml"
    settings = load_settings(demo)
    repo = demo.parent.parent
    assert settings.paths.checkpoints == repo / "demo" / "checkpoints"
    train = settings.train_config()
    assert (train.micro_batch_size, train.grad_accum_steps, train.epochs_per_file) == (8, 2, 2.0)
    assert (train.learning_rate, train.warmup_steps) == (1e-3, 20)
    assert (train.checkpoint_interval, train.log_interval, train.keep_checkpoints) == (50, 10, 3)
    assert settings.lineage_spec().preset == "tiny"


def test_train_section_mirrors_train_config() -> None:
    """Every TrainConfig field, same order, same type and same default: no silent drift."""
    fields = dataclasses.fields(TrainConfig)
    hints = typing.get_type_hints(TrainConfig)
    assert list(TrainSection.model_fields) == [f.name for f in fields]
    for f in fields:
        info = TrainSection.model_fields[f.name]
        assert info.annotation == hints[f.name], f.name
        assert info.get_default(call_default_factory=True) == f.default, f.name
        assert info.description, f.name
    assert TrainConfig(**TrainSection().model_dump()) == TrainConfig()


@pytest.mark.parametrize(
    "bad",
    [
        {"micro_batch_size": 0},
        {"grad_accum_steps": 0},
        {"epochs_per_file": 0.0},
        {"keep_checkpoints": 0},
        {"checkpoint_interval": 0},
    ],
)
def test_train_section_rejects_what_train_config_rejects(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        TrainConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match=f"train.{next(iter(bad))}"):
        load_settings(train=bad)


def test_overridable_fields_are_the_architecture_fields() -> None:
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    assert set(OVERRIDABLE_ARCH_FIELDS) == names - {"dropout"}


def test_conversions_to_trainer_config(tmp_path: Path) -> None:
    tokenizer = write(tmp_path / "tokenizer.json", "{}")
    settings = load_settings(
        train={"micro_batch_size": 2, "grad_accum_steps": 4, "device": "cpu"},
        model={"preset": "small", "tokenizer": str(tokenizer), "dropout": 0.1},
        paths={"checkpoints": str(tmp_path / "ck"), "state": str(tmp_path / "st")},
    )
    train = settings.train_config()
    assert isinstance(train, TrainConfig)
    assert (train.micro_batch_size, train.grad_accum_steps, train.device) == (2, 4, "cpu")
    assert settings.lineage_spec() == LineageSpec(
        preset="small",
        tokenizer=str(tokenizer.resolve()),
        tokenizer_set=True,
        dropout=0.1,
        overrides={},
    )
    # Left at its default, the tokenizer is not a choice (--init-from keeps the source's).
    assert not load_settings().lineage_spec().tokenizer_set
    paths = settings.run_paths()
    assert isinstance(paths, RunPaths)
    assert paths.checkpoints == (tmp_path / "ck").resolve()
    assert isinstance(paths.state, Path) and paths.state.is_absolute()
    assert paths.events == (tmp_path / "st").resolve() / "events.jsonl"


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.train = TrainSection()  # type: ignore[misc]
    with pytest.raises(ValueError, match="frozen"):
        settings.train.seed = 5  # type: ignore[misc]


def test_settings_without_load_settings_read_only_env_and_defaults(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(clean_env / "traind.toml", "[train]\nseed = 11\n")
    monkeypatch.setenv("TRAIND_TRAIN__WARMUP_STEPS", "3")
    settings = Settings()
    assert settings.config_file is None
    assert settings.train.seed == 1337
    assert settings.train.warmup_steps == 3
