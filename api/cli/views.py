"""How the ``traind`` client commands show the API's answers (rich renderables).

Kept apart from the commands in ``api.cli.main`` so each stays small; nothing here talks to
the server.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer
from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from trainer.records.lifecycle import FileState

if TYPE_CHECKING:
    from api.cli.client import ApiError

STATE_STYLES = {
    "training": "bold green",
    "paused": "bold yellow",
    "idle": "bold",
    "stopping": "bold yellow",
    "error": "bold red",
    "queued": "cyan",
    "done": "green",
    "failed": "red",
    "rejected": "red",
    "duplicate": "dim",
    "cancelled": "yellow",
    "rolled_back": "magenta",
}


def status_panel(current: dict[str, Any]) -> Panel:
    """One short panel of /v1/status; fields the server leaves out are simply not shown."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    state = str(current.get("state") or "unknown")
    line = Text(state, style=STATE_STYLES.get(state, "bold"))
    if current.get("error"):
        line.append(f"  {current['error']}", style="red")
    grid.add_row("state", line)
    grid.add_row("step", count(current.get("global_step")))
    grid.add_row("file", current_file(current.get("current_file"), current.get("global_step")))
    grid.add_row("training", training_line(current))
    eta = eta_line(current)
    if eta:
        grid.add_row("ETA", eta)
    grid.add_row("gold", gold_line(current.get("gold")))
    if "export" in current:
        grid.add_row("export", export_line(current.get("export")))
    forgetting = forgetting_line(current.get("forgetting"))
    if forgetting:
        grid.add_row("forgetting", forgetting)
    grid.add_row("queue", counts_line(current.get("queue")))
    worker = current.get("worker")
    if isinstance(worker, dict) and worker.get("heartbeat_age_s") is not None:
        grid.add_row("worker", f"heartbeat {float(worker['heartbeat_age_s']):.1f} s ago")
    return Panel(grid, title="traind", title_align="left", expand=False)


def current_file(file: Any, step: Any) -> RenderableType:
    if not isinstance(file, dict):
        return Text("none", style="dim")
    label = f"#{file.get('id')} {file.get('name') or ''}".rstrip()
    start, target = file.get("start_step"), file.get("target_step")
    fraction = file.get("progress")
    if isinstance(start, int) and isinstance(target, int) and target > start:
        done = min(max((step if isinstance(step, int) else start) - start, 0), target - start)
        total = target - start
        fraction = done / total if fraction is None else fraction
    else:
        done, total = (float(fraction), 1.0) if fraction is not None else (0.0, None)
    row = Table.grid(padding=(0, 1))
    row.add_row(
        ProgressBar(total=total, completed=done, width=24),
        f"{float(fraction) * 100:.0f}%" if fraction is not None else "",
        f"steps {count(start)} → {count(target)}",
    )
    return Group(Text(label), row)


def training_line(current: dict[str, Any]) -> str:
    parts = []
    if current.get("train_loss") is not None:
        parts.append(f"loss {float(current['train_loss']):.4f}")
    last_eval = current.get("last_eval")
    if isinstance(last_eval, dict) and last_eval.get("val_loss") is not None:
        parts.append(f"val loss {float(last_eval['val_loss']):.4f}")
    if current.get("lr") is not None:
        parts.append(f"lr {float(current['lr']):.2e}")
    if current.get("tokens_per_s") is not None:
        parts.append(f"{float(current['tokens_per_s']):,.0f} tokens/s")
    return " · ".join(parts) or "—"


def eta_line(current: dict[str, Any]) -> str:
    parts = []
    if current.get("eta_s") is not None:
        parts.append(f"file {duration(current['eta_s'])}")
    if current.get("eta_queue_s") is not None:
        parts.append(f"queue {duration(current['eta_queue_s'])}")
    return " · ".join(parts)


def gold_line(gold: Any) -> str:
    if not isinstance(gold, dict) or gold.get("step") is None:
        return "none yet"
    text = f"step {count(gold['step'])}"
    if gold.get("val_loss") is not None:
        text += f", val loss {float(gold['val_loss']):.4f}"
    return text


def export_line(export: Any) -> str:
    if not isinstance(export, dict) or export.get("step") is None:
        return "none yet"
    text = f"step {count(export['step'])}"
    if export.get("source_checkpoint"):
        text += f" ({export['source_checkpoint']})"
    if export.get("from"):
        text += f", follows {export['from']}"
    return text


def forgetting_line(report: Any) -> str:
    """The newest forgetting report's worst drop; empty without one."""
    worst = report.get("worst") if isinstance(report, dict) else None
    if not isinstance(worst, dict):
        return ""
    text = f"worst {worst.get('file') or '?'}"
    if worst.get("increase") is not None:
        text += f" +{float(worst['increase']) * 100:.1f}%"
    numbers = []
    if worst.get("loss") is not None:
        numbers.append(f"loss {float(worst['loss']):.4f}")
    if worst.get("best") is not None:
        best = f"best {float(worst['best']):.4f}"
        if worst.get("best_step") is not None:
            best += f" @ step {count(worst['best_step'])}"
        numbers.append(best)
    if numbers:
        text += f" ({', '.join(numbers)})"
    measured, total = report.get("measured"), report.get("drops_total")
    if measured is not None:
        text += f", {count(measured)} of {count(total)} drops measured"
    if report.get("threshold") is not None:
        text += f"; gold blocks above {float(report['threshold']) * 100:g}%"
    return text


def counts_line(counts: Any) -> str:
    if not isinstance(counts, dict) or not any(counts.values()):
        return "empty"
    order = [s.value for s in FileState] + sorted(set(counts) - set(FileState))
    return " · ".join(f"{counts[s]} {s}" for s in order if counts.get(s))


def queue_table(
    page: dict[str, Any], *, states: list[str], offset: int, title: str | None = None
) -> RenderableType:
    items = page.get("items") or []
    total = page.get("total", len(items))
    if not items:
        where = f" in state {', '.join(states)}" if states else ""
        return Text(f"no files{where}" + (f" after offset {offset}" if offset else ""))
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("id", justify="right", no_wrap=True)
    table.add_column("name", overflow="fold")
    table.add_column("state", no_wrap=True)
    table.add_column("steps", no_wrap=True)
    table.add_column("error", overflow="fold")
    for item in items:
        state = str(item.get("state") or "")
        table.add_row(
            str(item.get("id", "")),
            str(item.get("name") or ""),
            Text(state, style=STATE_STYLES.get(state, "")),
            steps(item),
            truncated(item.get("error"), 60),
        )
    shown_to = offset + len(items)
    caption = f"{offset + 1}–{shown_to} of {total}"
    if isinstance(total, int) and shown_to < total:
        caption += f" (next: --offset {shown_to})"
    table.caption, table.caption_justify = caption, "left"
    return table


def steps(item: dict[str, Any]) -> str:
    start = item.get("start_step")
    end = item.get("end_step") if item.get("end_step") is not None else item.get("target_step")
    if start is None and end is None:
        return ""
    if item.get("state") == FileState.ROLLED_BACK:
        # Steps the lineage no longer holds: never shown as if they were trained.
        return f"(rolled back) {count(start)} → {count(end)}"
    return f"{count(start)} → {count(end)}"


def truncated(text: Any, limit: int) -> str:
    if not text:
        return ""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "—" if value is None else str(value)


def duration(seconds: Any) -> str:
    total = round(float(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def refusal(exc: ApiError) -> str:
    """A refused request in words: the server's detail, its status, and for a 401 where
    the token comes from."""
    text = f"{exc.detail} (HTTP {exc.status})"
    if exc.status == 401:
        text += (
            "; pass --token, set $TRAIND_TOKEN, or use --config with the server's settings"
            " so its server.token or <paths.state>/api-token is found"
        )
    return text


def print_json(answer: object) -> None:
    """An answer as compact JSON on one line."""
    # Compact, one document per line: `jq` and line-by-line readers take it as is.
    typer.echo(json.dumps(answer, ensure_ascii=False, separators=(",", ":")))


def adaptation_rows(adaptation: dict[str, Any]) -> list[tuple[str, str]]:
    """LoRA and vocabulary-extension rows (none for a plain lineage)."""
    rows = []
    lora = adaptation.get("lora")
    if isinstance(lora, dict):
        base = adaptation.get("base") or {}
        rows.append(
            (
                "LoRA",
                f"r {lora.get('r')} · alpha {lora.get('alpha')} · dropout {lora.get('dropout')}"
                f" · targets {', '.join(lora.get('target_modules') or []) or 'every linear layer'}"
                f" · saved in full {', '.join(lora.get('modules_to_save') or []) or 'none'}",
            )
        )
        rows.append(
            ("LoRA base", f"{base.get('source', '?')} · sha256 {str(base.get('sha256'))[:12]}")
        )
    if adaptation.get("base_rows") is not None:
        tokens = adaptation.get("tokens") or []
        steps = [str(e.get("at_step")) for e in adaptation.get("extensions") or []]
        shown = ", ".join(repr(t) for t in tokens[:8]) + (" …" if len(tokens) > 8 else "")
        rows.append(
            (
                "vocabulary",
                f"{adaptation.get('base_rows')} base rows (frozen) + {len(tokens)} added"
                f" = {adaptation.get('rows')} rows · extended at step {', '.join(steps)}"
                f" · {shown}",
            )
        )
    return rows


def hyperparameter_rows(config: dict[str, Any]) -> list[tuple[str, str]]:
    """The training settings a checkpoint recorded (its ``train_config``), grouped as a person
    asks about them; keys not named here follow as they are, so none is hidden."""
    rest = dict(config)

    def take(key: str) -> Any:
        return rest.pop(key, None)

    schedule, warmup = take("lr_schedule"), take("warmup_steps")
    lr = (
        f"{_number(take('learning_rate'))} · {_number(schedule)} after {count(warmup)} "
        "warm-up steps"
    )
    ratio, decay = take("min_lr_ratio"), take("lr_decay_steps")
    if schedule == "cosine":
        lr += f" · down to {_number(ratio)} of it over {count(decay)} steps"
    micro, accum = take("micro_batch_size"), take("grad_accum_steps")
    rows = [
        ("learning rate", lr),
        ("batch", f"micro {count(micro)} × accum {count(accum)}"),
        ("epochs per file", _number(take("epochs_per_file"))),
        (
            "optimizer",
            f"AdamW · weight decay {_number(take('weight_decay'))} · betas "
            f"{_number(take('beta1'))}, {_number(take('beta2'))} · grad clip "
            f"{_number(take('grad_clip'))}",
        ),
        (
            "checkpoints",
            f"every {count(take('checkpoint_interval'))} steps · keep "
            f"{count(take('keep_checkpoints'))}",
        ),
        (
            "non-finite steps",
            f"rewind after {count(take('nan_skip_limit'))} within "
            f"{count(take('nan_window'))} steps",
        ),
    ]
    if rest:
        rows.append(("other", " · ".join(f"{k} {_number(v)}" for k, v in sorted(rest.items()))))
    return rows


def _number(value: Any) -> str:
    """A setting as written in traind.toml: 0.0003, 1337, true; ``—`` when not recorded."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return "—" if value is None else str(value)
