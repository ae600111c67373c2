"""The settings in force in a running ``traind serve``, as the file its worker reads:
``<paths.state>/settings-in-force.json``.

The main process is their one owner (ARCHITECTURE.md section 2). It writes this file at
start and after each reload it accepts (SIGHUP, :mod:`service.config.reload`), each time
under a new ``revision``; the worker loads its settings from it, never from
``traind.toml``, so a worker restarted after a crash gets the settings in force, not a
file edited (and perhaps refused) since. A running worker takes up a new revision
between files.

The file holds the values as the main process loaded them (paths absolute, ``TRAIND_*``
variables folded in) and only the keys that were set, so the settings read back are equal
to the written ones, down to which keys were given (``model.tokenizer``'s default depends
on it); reading ignores the environment and every file but this one. It holds secrets
(``server.token``, a password in ``ledger.url``), so its mode is 0600, like ``api-token``.
A write is durable and atomic: a temporary file beside it, fsynced, renamed over it, the
folder fsynced; a crash at any point leaves the old file or the new one, whole.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from service.config.settings import Settings, SettingsError
from trainer.faults import fault_point
from trainer.records.storage import fsync_folder_quietly

log = logging.getLogger(__name__)

IN_FORCE_NAME = "settings-in-force.json"
FORMAT_VERSION = 1
_LEFTOVER = f".{IN_FORCE_NAME}.*.tmp"


@dataclass(frozen=True, kw_only=True)
class InForce:
    """One revision of the settings in force."""

    settings: Settings
    revision: int
    """1, 2, ...: one more at each start and each accepted reload."""
    loaded_at: str
    """When the main process loaded them (ISO 8601, UTC)."""


class _Exact(Settings):
    """Settings from given values alone: no environment variable, no TOML file."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def in_force_path(settings: Settings) -> Path:
    return settings.paths.state / IN_FORCE_NAME


def values_of(settings: Settings) -> dict[str, Any]:
    """The keys that were set, as JSON values; ``[paths]`` whole, since its defaults
    resolve against the working folder."""
    values = settings.model_dump(mode="json", exclude_unset=True, by_alias=True)
    values["paths"] = settings.paths.model_dump(mode="json")
    return values


def settings_from(values: dict[str, Any], *, config_file: Path | str | None) -> Settings:
    """Settings built from ``values`` (:func:`values_of`) alone, validated again; the
    environment does not count. :class:`SettingsError` if they are not valid."""
    try:
        built = _Exact(**values)
    except ValidationError as exc:
        raise SettingsError(
            [
                f"{'.'.join(str(p) for p in error['loc']) or 'settings'}: "
                + str(error["msg"]).removeprefix("Value error, ")
                for error in exc.errors()
            ]
        ) from exc
    built._config_file = Path(config_file) if config_file else None
    return built


def write_in_force(path: Path, in_force: InForce) -> None:
    """Replace the file at ``path`` with ``in_force``, atomically and durably (mode 0600).

    Raises ValueError if the settings would not read back equal (a bug, never written),
    OSError if the disk refuses."""
    settings = in_force.settings
    values = values_of(settings)
    _check_round_trip(settings, values)
    document = {
        "format_version": FORMAT_VERSION,
        "revision": in_force.revision,
        "loaded_at": in_force.loaded_at,
        "config_file": str(settings.config_file) if settings.config_file else None,
        "settings": values,
    }
    content = json.dumps(document, indent=2, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    for leftover in path.parent.glob(_LEFTOVER):  # of a write a crash cut off
        leftover.unlink(missing_ok=True)
    temporary = path.with_name(f".{IN_FORCE_NAME}.{secrets.token_hex(4)}.tmp")
    # Created 0600: the secrets are never readable by others, not even for a moment.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        fault_point("in_force:written")
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fault_point("in_force:renamed")
    fsync_folder_quietly(path.parent)


def read_in_force(path: Path) -> InForce:
    """The settings in force written at ``path``; :class:`SettingsError` if the file is
    missing, unreadable or its settings are no longer valid."""
    document = _read(path)
    if document.get("format_version") != FORMAT_VERSION or not isinstance(
        document.get("settings"), dict
    ):
        raise SettingsError([f"{path}: not a settings-in-force file of this traind version"])
    try:
        settings = settings_from(document["settings"], config_file=document.get("config_file"))
    except SettingsError as exc:
        raise SettingsError([f"{path}: {problem}" for problem in exc.problems]) from exc
    return InForce(
        settings=settings, revision=int(document["revision"]), loaded_at=document["loaded_at"]
    )


def read_revision(path: Path) -> int | None:
    """The revision written at ``path`` (cheap: the settings are not validated), or None."""
    try:
        revision = _read(path).get("revision")
    except SettingsError:
        return None
    return revision if isinstance(revision, int) else None


def next_revision(path: Path) -> int:
    """The revision a new start writes: one more than the file's, so they never repeat."""
    return (read_revision(path) or 0) + 1


def _read(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SettingsError([f"{path}: cannot read the settings in force: {exc}"]) from exc
    if not isinstance(document, dict):
        raise SettingsError([f"{path}: not a settings-in-force file"])
    return document


def _check_round_trip(settings: Settings, values: dict[str, Any]) -> None:
    again = settings_from(values, config_file=settings.config_file)
    if again.model_dump(mode="json") != settings.model_dump(mode="json") or _set_keys(
        again
    ) != _set_keys(settings):
        raise ValueError("the settings in force would not read back as they are")


def _set_keys(settings: Settings) -> dict[str, frozenset[str]]:
    """Which keys of each section were given (all of ``[paths]`` are written)."""
    return {
        name: frozenset(getattr(settings, name).model_fields_set)
        for name in Settings.model_fields
        if name != "paths"
    }
