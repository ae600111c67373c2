"""Why a drop was rejected, in words: the one-line reason the ledger records, the invalid
lines it keeps, and the ``.reason.txt`` written beside the rejected file."""

from __future__ import annotations

from service.ledger.records import FileRecord, LineProblem
from trainer.records.formats import LineError, ValidationReport

SHOWN_LINES = 10
"""Bad line numbers named in a strict rejection's one-line reason."""


def strict_reason(report: ValidationReport) -> str:
    """The one-line reason for rejecting a file that has some invalid lines."""
    numbers = [str(e.line) for e in report.errors[:SHOWN_LINES]]
    more = ", ..." if report.n_invalid > len(numbers) else ""
    s = "s" if report.n_invalid > 1 else ""
    total = report.n_invalid + report.n_examples
    first = report.errors[0].message
    return (
        f"{report.path.name} has {report.n_invalid} invalid line{s} of {total} "
        f"(line{s} {', '.join(numbers)}{more}), so none of it is trained on; fix or remove "
        f"them and drop the file again. First: {first}"
    )


def reason_text(record: FileRecord) -> str:
    """The ``.reason.txt`` written beside a rejected file, for a person to read."""
    lines = [
        f"traind rejected {record.name} (ledger id {record.id}); it is kept here and is never",
        "trained on. Fix the problem and drop the fixed file into the inbox again.",
        "",
        f"reason: {record.error}",
    ]
    if record.sha256:
        lines.append(f"sha256: {record.sha256}")
    lines.append(f"size:   {record.size} bytes")
    if record.invalid_lines:
        shown = len(record.invalid_lines)
        total = max(record.n_invalid, shown)
        lines += ["", f"invalid lines ({shown} shown of {total}):"]
        for problem in record.invalid_lines:
            where = f"line {problem.line}" if problem.line is not None else "file"
            lines.append(f"  {where}: {problem.reason}")
    return "\n".join(lines) + "\n"


def line_problems(errors: tuple[LineError, ...], *, name: str) -> tuple[LineProblem, ...]:
    """The invalid lines as the ledger keeps them."""
    # The message repeats "<name> line <n>: ", which the ledger keeps in its own columns.
    return tuple(
        LineProblem(line=e.line, reason=e.message.removeprefix(f"{name} line {e.line}: "))
        for e in errors
    )
