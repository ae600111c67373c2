"""``traind generate`` and ``traind export``: use a trained model without the daemon.

``api.cli.main`` registers these commands with :func:`register_generation_commands`. Like the
rest of ``api/`` this module never imports torch or ``trainer``: the work happens in
``service.checkpoints.inference``, imported inside each command so ``traind --help`` stays fast.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from api.cli.options import ConfigOption, configure_logging, settings_or_exit

EXIT_USAGE = 2
"""A folder, device or setting that cannot be used (the message says which)."""


class ExportDtype(enum.StrEnum):
    FP16 = "fp16"
    BF16 = "bf16"


GENERATE_HELP = (
    "Continue PROMPT with a trained model and print the prompt followed by the completion"
    " (--completion-only prints the new text alone).\n\n"
    "--checkpoint takes an export folder (see traind export; a copy of it alone is enough,"
    " no training checkpoint needed), a training checkpoint folder (step-*, gold), or a"
    " checkpoints folder (its newest step-*, else its export). Without it, the"
    " paths.checkpoints folder of the settings is used.\n\n"
    "Temperature 0 (the default) is greedy and deterministic; above 0, tokens are sampled,"
    " reproducibly with --seed. Generation stops at the end-of-text token or after"
    " --max-new-tokens. Exit status 2 when the folder holds no usable model."
)

EXPORT_HELP = (
    "Write an export folder for deployment: half-precision (fp16 or bf16) weights, the"
    " architecture config, the tokenizer, export.json (step, lineage, source) and a"
    " manifest, written atomically like a checkpoint.\n\n"
    "It goes to <paths.checkpoints>/export, or to DIR/export with --out, and replaces the"
    " export there. The folder alone serves traind generate --checkpoint."
)


def register_generation_commands(app: typer.Typer) -> None:
    """Add ``generate`` and ``export`` to the ``traind`` app."""
    app.command(name="generate", help=GENERATE_HELP)(generate)
    app.command(name="export", help=EXPORT_HELP)(export)


# The options of `traind generate`, one alias each (as in api.cli.options).
PromptArgument = Annotated[
    str,
    typer.Argument(
        help="Text to continue; quote it. An empty string starts from the end-of-text token.",
        metavar="PROMPT",
        show_default=False,
    ),
]
CheckpointOption = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        help="Export folder, checkpoint folder or checkpoints folder. "
        "Default: paths.checkpoints from the settings.",
        metavar="DIR",
        show_default=False,
    ),
]
MaxNewTokensOption = Annotated[
    int, typer.Option("--max-new-tokens", min=0, metavar="N", help="Most tokens generated.")
]
TemperatureOption = Annotated[
    float,
    typer.Option(
        "--temperature",
        min=0.0,
        metavar="T",
        help="Sampling temperature; 0 is greedy (always the most likely token).",
    ),
]
TopKOption = Annotated[
    int | None,
    typer.Option(
        "--top-k",
        min=1,
        metavar="K",
        help="Sample only from the K most likely tokens (with --temperature above 0).",
        show_default=False,
    ),
]
SeedOption = Annotated[
    int | None,
    typer.Option(
        "--seed",
        min=0,
        metavar="S",
        help="Seed of the sampling (with --temperature above 0): same seed, same text.",
        show_default=False,
    ),
]
DeviceOption = Annotated[
    str,
    typer.Option(
        "--device",
        metavar="auto|cpu|cuda",
        help="Where to run: auto (CUDA if present), cpu, cuda or cuda:N. "
        "On cpu the weights run in float32; on cuda an export keeps its half precision.",
    ),
]
CompletionOnlyOption = Annotated[
    bool,
    typer.Option("--completion-only", help="Print only the generated text, not the prompt."),
]


def generate(
    prompt: PromptArgument,
    checkpoint: CheckpointOption = None,
    max_new_tokens: MaxNewTokensOption = 64,
    temperature: TemperatureOption = 0.0,
    top_k: TopKOption = None,
    seed: SeedOption = None,
    device: DeviceOption = "auto",
    completion_only: CompletionOnlyOption = False,
    config: ConfigOption = None,
) -> None:
    """Print a completion of PROMPT (the help text is GENERATE_HELP)."""
    # Imported here: api.cli.main imports this module at its top, and the service pulls in torch.
    from service.checkpoints.inference import GenerationError, generate_text

    configure_logging("WARNING")
    folder = checkpoint if checkpoint is not None else settings_or_exit(config).paths.checkpoints
    try:
        result = generate_text(
            folder,
            prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            seed=seed,
            device=device,
        )
    except GenerationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    typer.echo(result.text if completion_only else result.prompt + result.text)


def export(
    config: ConfigOption = None,
    source: Annotated[
        str,
        typer.Option(
            "--from",
            metavar="latest|gold|DIR",
            help="latest: the newest complete step-* checkpoint; gold: the gold checkpoint; "
            "else a checkpoint folder, or a checkpoints folder (its newest step-*). "
            "A folder literally named latest or gold: write ./latest.",
        ),
    ] = "latest",
    dtype: Annotated[
        ExportDtype | None,
        typer.Option(
            "--dtype",
            help="Precision of the exported weights. Default: export.dtype from the "
            "settings, else bf16.",
            case_sensitive=False,
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="DIR",
            file_okay=False,
            help="Write DIR/export instead of <paths.checkpoints>/export.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write an export folder (the help text is EXPORT_HELP)."""
    from service.checkpoints.inference import GenerationError, export_model

    settings = settings_or_exit(config)
    configure_logging("WARNING")
    try:
        result = export_model(
            settings,
            source=source,
            dtype=dtype.value if dtype is not None else None,
            out=out,
        )
    except GenerationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    step = f", step {result.step}" if result.step is not None else ""
    typer.echo(
        f"wrote {result.path} ({result.dtype}, {result.parameters:,} parameters)"
        f" from {result.source}{step}"
    )
