"""What a re-read of ``traind.toml`` changes in the settings in force of ``traind serve``,
and what it may change while the service runs (SIGHUP; ARCHITECTURE.md section 2).

Training hyper-parameters, the ``[train]``, ``[eval]``, ``[gold]`` and ``[export]``
sections, are taken: the worker applies them from the next file by opening the lineage
again with them, as a restart would. Every other section is fixed while the service runs
(the folders, the API's address and token, the ledger, the model, the watcher, the
worker's supervision): a change there is refused with the reason and its old value stays
in force, while the accepted changes still apply. A file that does not load is refused
whole (:class:`SettingsError`), and nothing changes.

Also how settings are shown to people: secrets (``server.token``, a password in
``ledger.url``) redacted for ``GET /v1/settings``, the log and the event log. Torch-free:
the main process runs it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from service.config.in_force import settings_from, values_of
from service.config.settings import Settings, SettingsError, load_settings

RELOADABLE = ("train", "eval", "gold", "export")
"""The sections a reload applies (from the next file)."""
FIXED = {
    "paths": "needs a restart: the folders are opened when traind serve starts",
    "server": "needs a restart: the API binds its address and takes its token at start",
    "ledger": "needs a restart: the ledger is opened at start",
    "model": "needs a restart: the model is built when the worker opens the lineage",
    "watcher": "needs a restart: the inbox watcher takes its settings at start",
    "worker": "needs a restart: the worker (or its torchrun group, on every machine) is "
    "started and supervised with these",
}
"""The sections fixed while the service runs, and why."""
REDACTED = "<redacted>"
SECRETS = ("server.token", "ledger.url")


@dataclass(frozen=True, kw_only=True)
class Change:
    """One key whose value a re-read found changed; the values as people may see them."""

    key: str
    """``section.key``, e.g. ``train.learning_rate``."""
    old: Any
    new: Any

    def words(self) -> str:
        if self.key in SECRETS:
            return f"{self.key} changed"
        return f"{self.key} {_word(self.old)} -> {_word(self.new)}"


@dataclass(frozen=True, kw_only=True)
class Reload:
    """What a re-read gives: the settings to put in force, what changed, what was refused."""

    settings: Settings
    """The settings in force before, with the accepted changes."""
    changed: tuple[Change, ...]
    refused: tuple[tuple[Change, str], ...]
    """Each refused change with its reason (``needs a restart: ...``)."""

    def event_fields(self) -> dict[str, Any]:
        """``changed`` ({key: [old, new]}) and ``refused`` ({key: reason}) of the
        ``settings_reloaded`` event."""
        return {
            "changed": {c.key: [c.old, c.new] for c in self.changed},
            "refused": {c.key: reason for c, reason in self.refused},
        }

    def log_lines(self) -> tuple[list[str], list[str]]:
        """The lines to log: one per accepted change, one per refused change."""
        accepted = [
            f"settings reloaded: {c.words()} (applies from the next file)" for c in self.changed
        ]
        refused = [
            f"settings reload refused {c.words()} ({reason}); the old value stays in force"
            for c, reason in self.refused
        ]
        return accepted, refused


def reread(current: Settings) -> Reload:
    """Read the settings file ``current`` came from again, with the same environment, and
    compare. :class:`SettingsError` (the file refused whole) if it does not load, or if
    its accepted changes do not go with the settings kept."""
    if current.config_file is None:
        raise SettingsError(
            ["traind serve was started without a settings file (traind.toml): nothing to re-read"]
        )
    return compare(current, load_settings(current.config_file))


def compare(current: Settings, fresh: Settings) -> Reload:
    """``current`` with the reloadable sections of ``fresh``, and the differences."""
    values = values_of(current)
    taken = values_of(fresh)
    for section in RELOADABLE:
        if section in taken:
            values[section] = taken[section]
        else:
            values.pop(section, None)  # all defaults in the file now
    try:
        merged = settings_from(values, config_file=current.config_file)
    except SettingsError as exc:
        # Only a check across sections can fail here (export.adapter_only with the model).
        raise SettingsError(
            [f"with the settings that need a restart kept: {p}" for p in exc.problems]
        ) from exc
    before, after, asked = _flat(current), _flat(merged), _flat(fresh)
    changed = tuple(
        _change(key, before, after)
        for key in _keys(before, after)
        if before.get(key) != after.get(key)
    )
    refused = tuple(
        (_change(key, before, asked), FIXED[key.split(".")[0]])
        for key in _keys(before, asked)
        if key.split(".")[0] in FIXED and before.get(key) != asked.get(key)
    )
    return Reload(settings=merged, changed=changed, refused=refused)


def redacted(settings: Settings) -> dict[str, dict[str, Any]]:
    """Every section and key, as JSON values, with the secrets redacted."""
    return {
        section: {key: shown(f"{section}.{key}", value) for key, value in keys.items()}
        for section, keys in settings.model_dump(mode="json", by_alias=True).items()
    }


def shown(key: str, value: Any) -> Any:
    """``value`` of ``key`` (``section.key``) as people may see it."""
    if value is None or key not in SECRETS:
        return value
    if key == "ledger.url":
        return _without_password(value)
    return REDACTED


def _without_password(url: str) -> str:
    from sqlalchemy.engine import make_url  # only where a URL is shown

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: show nothing of it
        return REDACTED


def _flat(settings: Settings) -> dict[str, Any]:
    """``section.key`` -> its JSON value (secrets too: compared, never shown), in order."""
    return {
        f"{section}.{key}": value
        for section, keys in settings.model_dump(mode="json", by_alias=True).items()
        for key, value in keys.items()
    }


def _change(key: str, before: dict[str, Any], after: dict[str, Any]) -> Change:
    return Change(key=key, old=shown(key, before.get(key)), new=shown(key, after.get(key)))


def _keys(first: dict[str, Any], second: dict[str, Any]) -> list[str]:
    return [*first, *(key for key in second if key not in first)]


def _word(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
