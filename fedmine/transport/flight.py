"""The Flight transport: how one protocol call crosses the network.

This module owns what both ends of the wire share (see docs/transport.md):
limits, defaults, the endpoint syntax, the request shape and the error
conversion. The party's end is :class:`~fedmine.party.server.PartyServer`,
the coordinator's :class:`~fedmine.coordinator.client.RemoteParty`::

    coordinator                                  organisation
    Link(RemoteParty).call("evaluate")
      RemoteParty.call("evaluate")
        do_action("evaluate", encode((args, kwargs)))  --mTLS-->  PartyServer.do_action
                                                                    check peer = coordinator
                                                                    check action in the protocol table
                                                                    decode, lock, party.call("evaluate")
        decode(answer)                            <--------------  encode(answer) | error

One Flight action per call of the protocol table (:mod:`fedmine.protocol`),
named as the call (``describe``, ``start``, ``histograms``, ...). Bodies are
:mod:`fedmine.transport.wire` messages: the request is ``(args, kwargs)``, the
answer is the call's return value.

Errors cross as Flight errors whose ``extra_info`` is a wire message
``{"type": class name, "message": one line}``. The client re-raises the
allow-listed classes (:data:`ERRORS`) by name with the same message, and
:class:`PartyError` for anything else. ``PartyServer._answer`` and
``RemoteParty._call`` are the two conversion points.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pyarrow.flight as flight

from fedmine import errors
from fedmine.privacy.secure_agg import SecureAggregationError
from fedmine.protocol import ProtocolError
from fedmine.transport import wire
from fedmine.transport.certs import CertificateError
from fedmine.transport.wire import WireError

log = logging.getLogger(__name__)

#: Calls known to be independent of the party's state: answered without its lock.
LOCK_FREE = frozenset({"describe"})

#: Port a party serves on unless told otherwise (0 asks the OS for a free one).
DEFAULT_PORT = 8815
DEFAULT_HOST = "127.0.0.1"

#: Largest request a server accepts and largest answer a client accepts (bytes).
MAX_REQUEST_BYTES = wire.MAX_MESSAGE_BYTES
MAX_ANSWER_BYTES = wire.MAX_MESSAGE_BYTES
#: Largest error description a client decodes.
MAX_ERROR_BYTES = 64 * 1024
#: Longest error message sent (characters).
MAX_REASON_CHARS = 1000

#: Client defaults: seconds per call, retries of transport failures, first backoff.
DEFAULT_TIMEOUT = 600.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 0.5
MAX_BACKOFF = 10.0

#: Errors that keep their class across the wire (by name); any other becomes PartyError.
ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        errors.FedmineError,
        errors.ConfigError,
        errors.ConnectorError,
        errors.DataError,
        errors.PartyError,
        WireError,
        CertificateError,
        SecureAggregationError,
        ProtocolError,
    )
}

_ENDPOINT = re.compile(
    r"^(?:(?P<scheme>grpc|grpc\+tcp|grpc\+tls)://)?(?P<host>\[[0-9a-fA-F:.]+\]|[^:/\s]+):(?P<port>\d{1,5})$"
)


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 3] + "..."


def _error(kind: type[flight.FlightError], type_name: str, message: str) -> flight.FlightError:
    """A Flight error carrying ``{"type", "message"}`` in ``extra_info``."""
    message = _one_line(message)
    return kind(message, extra_info=wire.encode({"type": type_name, "message": message}))


def check_request(value: Any) -> tuple[tuple, dict]:
    """Check a decoded request is ``(args, kwargs)`` with identifier keyword names."""
    if type(value) not in (tuple, list) or len(value) != 2:
        raise WireError("request must be a pair (args, kwargs)")
    args, kwargs = value
    if type(args) not in (tuple, list):
        raise WireError(f"request args must be a list, got {type(args).__name__}")
    if type(kwargs) is not dict or not all(
        type(k) is str and k.isidentifier() and not k.startswith("_") for k in kwargs
    ):
        raise WireError("request kwargs must be a dict with keyword names")
    return tuple(args), kwargs
