"""Which revision of the settings in force the worker of ``traind serve`` holds, and whether
the main process has written a newer one (``settings-in-force.json``,
:mod:`service.config.in_force`; a SIGHUP reload it accepted).

The worker asks between files only (``Worker.follow_settings``); taking a revision up
means opening the lineage again with it, which the worker does. A revision that cannot be
read or applied is said once and not tried again: the worker goes on with the one it has.
"""

from __future__ import annotations

import logging
from pathlib import Path

from service.config.in_force import InForce, read_in_force, read_revision
from service.config.settings import SettingsError

log = logging.getLogger(__name__)


class SettingsRevisions:
    """The settings-in-force file, the revision held, and the one found unusable."""

    def __init__(self, path: Path, *, held: int) -> None:
        self.path = path
        self.held = held
        self._unusable: int | None = None

    def newer(self) -> InForce | None:
        """The settings in force if the file holds another revision than the one held
        (cheap when it does not: the settings are only read then)."""
        revision = read_revision(self.path)
        if revision is None or revision in (self.held, self._unusable):
            return None
        try:
            return read_in_force(self.path)
        except SettingsError as exc:
            self.unusable(revision, reason=str(exc))
            return None

    def applied(self, found: InForce, *, step: int) -> None:
        self.held = found.revision
        log.info(
            "settings revision %d applied at global step %d: they hold from the next file",
            found.revision,
            step,
        )

    def unusable(self, revision: int, *, reason: str) -> None:
        self._unusable = revision
        log.error(
            "settings revision %d cannot be applied (%s); training goes on with revision %d",
            revision,
            reason,
            self.held,
        )
