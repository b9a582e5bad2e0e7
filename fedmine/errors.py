"""Typed, user-facing errors.

Every error a user can cause (bad config, bad data, an unreachable source) is a
:class:`FedmineError` whose message is one line naming the organisation, file,
column or key and, where there is a closed set, the allowed values. The CLI is
the one place that turns them into a message on stderr and exit code 2.
:func:`output_path` turns an output folder that cannot be created into one.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class FedmineError(Exception):
    """Base class of errors caused by input; the CLI prints them and exits 2."""

    exit_code = 2


class ConfigError(FedmineError):
    """The federation config is malformed or names something that does not exist."""


class ConnectorError(FedmineError):
    """A data source cannot be read: unknown scheme, missing file, bad table.

    ``transient`` is True when trying again may help (a database that could
    not be reached), False for bad input.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class DataError(FedmineError):
    """An organisation's data does not fit the canonical schema."""


class TrackingError(FedmineError):
    """The MLflow store could not be written (full, unreachable, read-only)."""


class PartyError(FedmineError):
    """A party failed to answer a protocol call (retryable at the task level)."""


def output_path(path: str | os.PathLike, option: str, *, folder: bool = False) -> Path:
    """``path``, an output file (or with ``folder``, an output folder), whose folder exists once this returns.

    Commands call it before they start working, so an output that cannot be
    written stops them at once with a :class:`ConfigError` naming ``option``,
    the path and the operating system's reason.
    """
    path = Path(path)
    target = path if folder else path.parent
    where = f"{option} {path}: cannot create folder {target}"
    for parent in (target, *target.parents):
        if parent.exists():
            if not parent.is_dir():
                what = "it" if parent == target else str(parent)
                raise ConfigError(f"{where}: {what} is a file ({os.strerror(errno.ENOTDIR)})")
            break
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror or exc}") from None
    if not folder and path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder ({os.strerror(errno.EISDIR)}); give a file name")
    if not os.access(target, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: cannot write into folder {target} ({os.strerror(errno.EACCES)})")
    return path
