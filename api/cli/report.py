"""``traind inspect``: a checkpoint's architecture, state, hyper-parameters, lineage and gold.

The reading is ``service.checkpoints.catalog`` (JSON files and the safetensors header, no torch);
this module is the command and its rich rendering. ``service.checkpoints.catalog`` is imported
inside the command so that importing ``api.cli.main`` loads nothing of the trainer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console, Group, RenderableType
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from api.cli.views import adaptation_rows, count, duration, hyperparameter_rows

if TYPE_CHECKING:
    from service.checkpoints.catalog import CheckpointEntry, CheckpointView, Inspection
    from trainer.records.summary import EvalRecord, TrainingSummary

EXIT_UNREADABLE = 1
"""The path exists but could not be read (permissions, I/O error)."""
EXIT_NOT_A_CHECKPOINT = 2
"""The path is none of: a checkpoints root, a checkpoint folder, an export folder."""

# config.json keys in the order a person reads an architecture; others follow sorted.
_ARCH_ORDER = (
    "n_layer",
    "n_head",
    "n_embd",
    "block_size",
    "vocab_size",
    "pos_encoding",
    "rope_theta",
    "mlp_type",
    "norm_type",
    "bias",
    "dropout",
    "logit_softcap",
)


# Paragraphs on single lines: typer keeps a docstring's line breaks in --help.
HELP = (
    "Show a checkpoint's architecture, training state and hyper-parameters, lineage and"
    " gold history.\n\n"
    "The lineage is the files trained, in order, with the global steps each occupied. Only"
    " JSON files and the safetensors header are read: no torch, no weights loaded, so it is"
    " fast and works on any machine.\n\n"
    "Given a checkpoints root, it shows the newest valid step-* checkpoint (skipping broken"
    " ones, and saying so) and lists every checkpoint with gold/ and export/."
)


def register(app: typer.Typer) -> None:
    """Add ``inspect`` to the ``traind`` command line."""
    app.command(name="inspect", help=HELP)(inspect_command)


def inspect_command(
    path: Annotated[
        Path,
        typer.Argument(
            metavar="CHECKPOINT",
            help="A checkpoints root (holding step-*, gold/, export/), one checkpoint "
            "folder (step-* or gold), or an export folder.",
            show_default=False,
        ),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead, for scripts.")
    ] = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Also check every file's sha256 against its manifest (reads every byte). "
            "Without it only the sizes are checked.",
        ),
    ] = False,
) -> None:
    """``traind inspect`` (its help text is :data:`HELP`)."""
    from service.checkpoints.catalog import InspectionError, inspect_path

    try:
        found = inspect_path(path, deep=verify)
    except InspectionError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_NOT_A_CHECKPOINT) from None
    except OSError as exc:
        typer.echo(f"error: {path}: {exc.strerror or exc}", err=True)
        raise typer.Exit(EXIT_UNREADABLE) from None
    if as_json:
        typer.echo(json.dumps(found.to_dict(), ensure_ascii=False, separators=(",", ":")))
    else:
        console = Console(highlight=False)
        if not console.is_terminal and "COLUMNS" not in os.environ:
            # Piped into a file or a pager: there is no terminal to fit, and rich's default
            # of 80 columns would squeeze the lineage table.
            console.width = 120
        console.print(render(found))


def render(found: Inspection) -> RenderableType:
    """Every section of the human view, top to bottom."""
    parts: list[RenderableType] = [_title(found)]
    parts += [Text(f"warning: {w}", style="yellow") for w in found.warnings]
    view = found.checkpoint
    if view is not None:
        parts += _folder_sections(view)
    if found.kind == "root":
        parts += [_section("Checkpoints"), _checkpoints_table(found)]
    return Group(*parts)


def _title(found: Inspection) -> Text:
    view = found.checkpoint
    if found.kind == "root":
        text = Text(f"checkpoints root {found.path}", style="bold")
        shown = f"showing {view.name}, the newest valid checkpoint" if view else "nothing to show"
        return text.append(f"\n{shown}", style="")
    assert view is not None  # a single folder is always read
    text = Text(f"{view.kind} {view.path}", style="bold")
    if view.problem is None:
        return text.append(f"  valid, {_size(view.size_bytes)}", style="green")
    return text.append(f"\nnot a valid checkpoint: {view.problem}", style="bold red")


def _folder_sections(view: CheckpointView) -> list[RenderableType]:
    parts: list[RenderableType] = [_section("Architecture"), _architecture(view)]
    parts += [Text(f"note: {n}", style="yellow") for n in view.notes]
    if view.export_info is not None:
        parts += [_section("Export"), _grid(_flat(view.export_info))]
    training = view.training
    if training is None:
        return parts
    parts += [_section("Training state"), _training(training)]
    if training.train_config:
        parts += [_section("Hyper-parameters"), _grid(hyperparameter_rows(training.train_config))]
    parts += [_section("Lineage"), _lineage(training)]
    parts += [_section("Gold"), *_gold(training)]
    return parts


def _section(title: str) -> Rule:
    return Rule(Text(title, style="bold cyan"), align="left", style="cyan")


def _grid(rows: list[tuple[str, RenderableType]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in rows:
        grid.add_row(label, value)
    return grid


def _architecture(view: CheckpointView) -> Table:
    params = count(view.parameters) if view.parameters is not None else "unknown"
    if view.dtypes:
        params += f"  ({', '.join(sorted(view.dtypes))})"
    rows: list[tuple[str, RenderableType]] = [("parameters", params)]
    arch = view.architecture
    keys = [k for k in _ARCH_ORDER if k in arch] + sorted(set(arch) - set(_ARCH_ORDER))
    if arch.get("pos_encoding") != "rope" and "rope_theta" in keys:
        keys.remove("rope_theta")  # only rotary embeddings use it
    rows += [(k, _value(arch[k])) for k in keys]
    return _grid(rows)


def _training(state: TrainingSummary) -> Table:
    rows: list[tuple[str, RenderableType]] = [
        ("global step", count(state.global_step)),
        ("tokens", count(state.tokens_processed)),
        ("current file", _current(state)),
        *([("parked", _parked(state))] if state.parked else []),
        ("batch", _batch(state)),
        (
            "incidents",
            f"{state.nan_skips_total} non-finite steps skipped · {state.rollbacks} rollbacks"
            f" · {state.oom_recoveries} OOM recoveries",
        ),
        ("optimizer resets", _resets(state)),
    ]
    if state.eval_history:
        last = state.eval_history[-1]
        rows.append(("last eval", f"{_eval(last)} ({len(state.eval_history)} evals recorded)"))
    rows += [
        ("lineage id", state.lineage_id or "—"),
        ("created", state.created_at or "—"),
        ("seed", _value(state.seed) if state.seed is None else str(state.seed)),
    ]
    if state.model_spec:
        rows.append(("model spec", _value(state.model_spec)))
    if state.init_from:
        rows.append(("initialised from", _value(state.init_from)))
    rows += adaptation_rows(state.adaptation)
    rows.append(("format version", str(state.format_version)))
    return _grid(rows)


def _current(state: TrainingSummary) -> str:
    file = state.current_file
    if file is None:
        return "none (between files)"
    text = (
        f"{file.name} · steps {count(file.start_step)} → {count(file.target_step)}"
        f" · {file.progress * 100:.0f}%"
    )
    if file.epoch is not None:
        text += f" · epoch {file.epoch}"
    if file.cursor is not None and file.n_sequences:
        text += f" (sequence {count(file.cursor)} of {count(file.n_sequences)} per epoch)"
    if file.sequences_per_step:
        text += f" · {count(file.sequences_per_step)} sequences a step"
    return text


def _parked(state: TrainingSummary) -> str:
    """Files set aside unfinished, each with the steps a retry still trains."""
    return "; ".join(
        f"{f.name} ({count(f.target_step - f.parked_at)} steps left from step "
        f"{count(f.parked_at)}; retry it to continue)"
        if f.parked_at is not None
        else f.name
        for f in state.parked
    )


def _batch(state: TrainingSummary) -> str:
    micro, accum = state.micro_batch_size, state.grad_accum_steps
    text = f"micro {count(micro)} × accum {count(accum)}"
    configured = state.configured_batch
    if configured and tuple(configured) != (micro, accum):
        text += f" (configured {' × '.join(map(str, configured))}; changed by OOM recovery)"
    return text


def _resets(state: TrainingSummary) -> str:
    if not state.optimizer_resets:
        return "none"
    last = state.optimizer_resets[-1]
    where = f" at step {last['global_step']}" if "global_step" in last else ""
    return f"{len(state.optimizer_resets)}, the last{where}: {last.get('reason', '?')}"


def _lineage(state: TrainingSummary) -> RenderableType:
    files, current = state.lineage, state.current_file
    if not files and current is None:
        return Text("no files trained yet", style="dim")
    # A column of zeros says nothing: shown only once some file held examples out.
    holdout = any(f.n_holdout for f in files) or bool(current and current.n_holdout)
    replay = any(f.replayed_tokens for f in files) or bool(current and current.replayed_tokens)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for name, justify in [
        ("#", "right"),
        ("file", "left"),
        ("sha256", "left"),
        ("steps", "left"),
        ("count", "right"),
        ("tokens", "right"),
        ("mean loss", "right"),
        ("duration", "right"),
        *([("held out", "right")] if holdout else []),
        *([("replayed tokens", "right")] if replay else []),
    ]:
        if name == "file":
            table.add_column(name, min_width=12, overflow="fold")
        else:
            table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for index, f in enumerate(files, start=1):
        table.add_row(
            str(index),
            f.name,
            f.sha256[:12],
            f"{f.start_step} → {f.end_step}",
            count(f.steps),
            count(f.tokens),
            _loss(f.mean_loss),
            _seconds(f.duration_s),
            *([count(f.n_holdout)] if holdout else []),
            *([count(f.replayed_tokens)] if replay else []),
        )
    if current is not None:
        table.add_row(
            str(len(files) + 1),
            Text(f"{current.name} (in progress)", style="yellow"),
            current.sha256[:12],
            f"{current.start_step} → {current.target_step}",
            f"{state.global_step - current.start_step}/{current.target_step - current.start_step}",
            count(current.tokens),
            "",
            _seconds(current.elapsed_s),
            *([count(current.n_holdout)] if holdout else []),
            *([count(current.replayed_tokens)] if replay else []),
        )
    first = files[0].start_step if files else current.start_step  # type: ignore[union-attr]
    table.caption = (
        f"{len(files)} files finished, steps {first} → {files[-1].end_step if files else first}"
    )
    table.caption_justify = "left"
    return table


def _gold(state: TrainingSummary) -> list[RenderableType]:
    if state.gold is None:
        # Format 1 checkpoints predate gold records in the training state.
        why = " (format 1 records no gold)" if state.format_version < 2 else ""
        return [Text(f"none yet{why}", style="dim")]
    gold = state.gold
    line = Text(f"step {count(gold.step)}, val loss {_loss(gold.val_loss)}")
    if gold.train_loss is not None:
        line.append(f", train loss {_loss(gold.train_loss)}")
    if gold.promoted_at:
        line.append(f", promoted {gold.promoted_at}")
    parts: list[RenderableType] = [line]
    if gold.sets:
        parts.append(
            Text("eval sets: " + ", ".join(f"{k} {_loss(v)}" for k, v in gold.sets.items()))
        )
    if state.gold_history:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title="history", title_justify="left")
        for name in ("step", "val loss", "prev best", "when"):
            table.add_column(name, no_wrap=True, justify="left" if name == "when" else "right")
        for record in state.gold_history:
            table.add_row(
                count(record.step),
                _loss(record.val_loss),
                _loss(record.prev_best),
                record.promoted_at or "—",
            )
        parts.append(table)
    return parts


def _checkpoints_table(found: Inspection) -> RenderableType:
    entries: list[CheckpointEntry] = [*found.checkpoints]
    entries += [e for e in (found.gold, found.export) if e is not None]
    if not entries:
        return Text("none", style="dim")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("folder", no_wrap=True)
    table.add_column("step", justify="right", no_wrap=True)
    table.add_column("status", overflow="fold")
    table.add_column("size", justify="right", no_wrap=True)
    shown = found.checkpoint.name if found.checkpoint else None
    for entry in entries:
        status = (
            Text("valid", style="green") if entry.problem is None else Text(entry.problem, "red")
        )
        if entry.kind == "step" and entry.name == shown:
            status.append(" (shown above)", style="dim")
        if entry.val_loss is not None:
            status.append(f", val loss {_loss(entry.val_loss)}")
        info = entry.export_info or {}
        status.append("".join(f", {info[k]}" for k in ("dtype",) if info.get(k)))
        if info.get("source_checkpoint"):
            status.append(f", from {info['source_checkpoint']}")
        table.add_row(entry.name, count(entry.step), status, _size(entry.size_bytes))
    return table


def _eval(record: EvalRecord) -> str:
    text = f"step {count(record.step)}, val loss {_loss(record.val_loss)}"
    return text + (f", train loss {_loss(record.train_loss)}" if record.train_loss else "")


def _flat(data: dict[str, Any]) -> list[tuple[str, str]]:
    return [(str(k), _value(v)) for k, v in data.items()]


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return "—" if value is None else count(value)


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    # Tiny files train in well under a second; whole seconds would show them all as 0s.
    return f"{value:.1f}s" if value < 60 else duration(value)


def _loss(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
