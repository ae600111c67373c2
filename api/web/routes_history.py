"""``GET /v1/history``: the lineage's curves over the global step, for the dashboard.

The event log's ``progress`` and ``eval`` events as series (train loss, val loss, each
eval set, lr, tokens/s) with the files, gold checkpoints, blocked gold decisions and
rollbacks as markers, from :class:`api.web.series.SeriesStore` (read once in the
background at start, then incrementally). A read: open to loopback clients, the bearer
token from anywhere else.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field

from api.web.deps import READ
from api.web.schemas import errors
from api.web.series import SeriesStore, Window

DEFAULT_POINTS = 1000

DESCRIPTION = """\
The curves of the lineage's history over the global step, and its markers, from the event
log: `train_loss`, `lr` and `tokens_per_s` (of the `progress` events, every
`train.log_interval` steps), `val_loss` and each `eval_<name>` (of the `eval` events).
Only the lineage's history: what a rollback to gold undid, or a resumed run trained
again, is left out.

**Paging is by step range**: `from_step` and `to_step` (inclusive, each optional) are the
page; zoom by asking a narrower range. A series with more points in the range than
`points` is cut into `points` buckets of equal point counts, each given as the step
of its last point, its mean (`value`), `min` and `max`; `total` is the number of points in
the range either way, and `downsampled` says whether any series was bucketed. Markers
(`files`, `gold`, `gold_blocked`, `rollbacks`) are those in or overlapping the range.

`last_event_id` is the line of the event log the answer is read to: stream
`GET /v1/events?after=<last_event_id>` to follow on live, nothing missed, nothing twice.
"""


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class SeriesOut(_Out):
    step: list[int] = Field(description="Global steps (of each bucket's last point).")
    value: list[float] = Field(description="The values (each bucket's mean).")
    min: list[float] = Field(description="Each bucket's lowest value (the value itself).")
    max: list[float] = Field(description="Each bucket's highest value (the value itself).")
    total: int = Field(description="Points of the series in the step range.")


class FileSpanOut(_Out):
    file: str | None = Field(description="The file's name.")
    sha256: str | None
    start_step: int = Field(description="Where this span starts (file_start or file_resumed).")
    target_step: int | None = Field(description="Where the file is due to end.")
    end_step: int | None = Field(description="Where it ended; null while in progress.")
    outcome: str | None = Field(description="complete, parked, or null while in progress.")
    resumed: bool = Field(description="The span continues a parked file (file_resumed).")


class GoldOut(_Out):
    id: int = Field(description="The event's line in events.jsonl (its /v1/events id).")
    step: int
    val_loss: float | None


class GoldBlockedOut(GoldOut):
    guards: list[str] = Field(description="overfit, rising, regression, forgetting.")
    reason: str | None = Field(description="Each failed guard's numbers.")


class RollbackOut(_Out):
    id: int = Field(description="The event's line in events.jsonl (its /v1/events id).")
    gold_step: int = Field(description="The step the lineage continued from.")
    from_step: int = Field(description="The newest step before the rollback.")


class HistoryOut(_Out):
    last_event_id: int = Field(description="The event log's line this answer is read to.")
    from_step: int | None = Field(description="The range's first step as asked (null: open).")
    to_step: int | None = Field(description="The range's last step as asked (null: open).")
    series: dict[str, SeriesOut] = Field(
        description="train_loss, val_loss, eval_<name>, lr, tokens_per_s: each the lineage has had."
    )
    files: list[FileSpanOut]
    gold: list[GoldOut]
    gold_blocked: list[GoldBlockedOut]
    rollbacks: list[RollbackOut]
    downsampled: bool = Field(description="Some series had more points than `points`.")


def series_of(request: Request) -> SeriesStore:
    """The app's series store (``create_app`` sets ``app.state.series``)."""
    return request.app.state.series


history_router = APIRouter(prefix="/v1", tags=["history"])


@history_router.get(
    "/history",
    summary="The curves and markers of the lineage's history, by step range (for plots)",
    description=DESCRIPTION,
    response_model=HistoryOut,
    dependencies=READ,
    responses=errors(401, 422),
)
def get_history(
    store: Annotated[SeriesStore, Depends(series_of)],
    from_step: Annotated[
        int | None, Query(ge=0, description="First step of the range (default: the first).")
    ] = None,
    to_step: Annotated[
        int | None, Query(ge=0, description="Last step of the range (default: the last).")
    ] = None,
    points: Annotated[
        int, Query(ge=10, le=10_000, description="Most points per series before bucketing.")
    ] = DEFAULT_POINTS,
) -> dict[str, Any]:
    if from_step is not None and to_step is not None and from_step > to_step:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"from_step {from_step} is after to_step {to_step}; ask from_step <= to_step",
        )
    # The plain answer: FastAPI validates it against HistoryOut once, on its way out.
    return store.history(Window(first=from_step, last=to_step, points=points))
