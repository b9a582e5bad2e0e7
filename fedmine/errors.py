"""Typed, user-facing errors.

Every error a user can cause (bad config, bad data, an unreachable source) is a
:class:`FedmineError` whose message is one line naming the organisation, file,
column or key and, where there is a closed set, the allowed values. The CLI is
the one place that turns them into a message on stderr and exit code 2.
"""

from __future__ import annotations


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


class PartyError(FedmineError):
    """A party failed to answer a protocol call (retryable at the task level)."""
