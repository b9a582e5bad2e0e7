"""The Flight transport: how one protocol call crosses the network.

This module owns what both ends of the wire share (see docs/transport.md):
limits, defaults, the endpoint syntax, the request shape, the call stream's
frames and the error conversion. The party's end is
:class:`~fedmine.party.server.PartyServer`, the coordinator's
:class:`~fedmine.coordinator.client.RemoteParty`::

    coordinator                                  organisation
    Link(RemoteParty).call("evaluate")
      RemoteParty.call("evaluate")
        call stream (one open do_exchange):
          request_frame("evaluate", args, kwargs)  --mTLS-->  PartyServer.do_exchange
                                                                check peer = coordinator (once per stream)
                                                                check action in the protocol table
                                                                decode, lock, party.call("evaluate")
          ANSWER + encode(answer) | ERROR + error  <--------  (the next call on the same stream)

One call of the protocol table (:mod:`fedmine.protocol`) per frame, named as
the call (``describe``, ``start``, ``histograms``, ...). The client keeps a
stream open per caller (:data:`CALL_STREAM`), so a call costs no new gRPC
call, headers or peer check; a stream idle for :data:`STREAM_IDLE_SECONDS`
is ended by the client (a server stops once its streams have ended). Each
call is also a Flight action of the same name (``do_action``), answered the
same way: bodies are :mod:`fedmine.transport.wire` messages, the request is
``(args, kwargs)``, the answer is the call's return value.

Errors cross as Flight errors (actions) or ``ERROR`` frames (the stream)
carrying the wire message ``{"type": class name, "message": one line}``. The
client re-raises the allow-listed classes (:data:`ERRORS`) by name with the
same message, and :class:`PartyError` for anything else.
``PartyServer._answer`` and ``RemoteParty._call`` are the two conversion
points.
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

#: The command of the Flight descriptor that opens a call stream (``do_exchange``).
CALL_STREAM = b"fedmine.calls"
#: Seconds a client keeps an idle call stream open (during a training calls follow each other within
#: milliseconds; a server's shutdown waits for its open streams to end).
STREAM_IDLE_SECONDS = 0.1
#: First byte of an answer frame on the call stream: the answer's wire message, or an error description.
ANSWER, ERROR = b"A", b"E"
#: Longest call name in a request frame (bytes of UTF-8).
MAX_NAME_BYTES = 255

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


def request_frame(name: str, args: tuple, kwargs: dict) -> bytes:
    """One call on the stream: u8 n, the call's name (n bytes of UTF-8), the wire message ``(args, kwargs)``."""
    raw = name.encode("utf-8")
    if len(raw) > MAX_NAME_BYTES:
        raise WireError(f"call name of {len(raw)} bytes exceeds {MAX_NAME_BYTES}")
    return wire.encode((tuple(args), dict(kwargs)), prefix=bytes([len(raw)]) + raw)


def split_request(frame: Any) -> tuple[str, memoryview]:
    """(call name, request message) of a request frame; the message is a view of the frame (no copy)."""
    view = memoryview(frame).cast("B")
    if not len(view):
        raise WireError("empty request frame")
    n = view[0]
    if 1 + n > len(view):
        raise WireError(f"request frame of {len(view)} bytes cannot hold a call name of {n} bytes")
    try:
        name = str(view[1 : 1 + n], "utf-8")
    except UnicodeDecodeError:
        raise WireError("call name is not valid utf-8") from None
    return name, view[1 + n :]
