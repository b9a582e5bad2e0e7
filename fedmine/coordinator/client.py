"""The coordinator's client for an organisation's party server.

:class:`RemoteParty` has the party's calls and answers them through the
party's Flight server, on call streams it keeps open (:class:`_Stream`);
:func:`connect` makes one for an organisation with an ``endpoint``,
authenticated with the federation's certificates.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from fedmine import protocol
from fedmine.config import FederationConfig
from fedmine.errors import ConfigError, PartyError
from fedmine.transport import wire
from fedmine.transport.certs import ClientTLS
from fedmine.transport.flight import (
    _ENDPOINT,
    ANSWER,
    CALL_STREAM,
    DEFAULT_BACKOFF,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    ERROR,
    ERRORS,
    MAX_ANSWER_BYTES,
    MAX_BACKOFF,
    MAX_ERROR_BYTES,
    STREAM_IDLE_SECONDS,
    _one_line,
    request_frame,
)
from fedmine.transport.wire import WireError

log = logging.getLogger(__name__)


class _Stream:
    """One open call stream to a party: one call at a time, each answered in order on the same gRPC call."""

    __slots__ = ("deadline", "idle_since", "reader", "timed_out", "used", "writer")

    def __init__(self, writer: flight.FlightStreamWriter, reader: flight.FlightStreamReader) -> None:
        self.writer, self.reader = writer, reader
        self.deadline = math.inf  # when the call in progress is cancelled (inf: none, or no limit)
        self.idle_since = time.monotonic()
        self.used = False  # it has answered a call (a failure before an answer may be a stale stream)
        self.timed_out = False

    def ask(self, frame: bytes) -> pa.Buffer:
        """Send one request frame; the answer frame (the reader raises what went wrong)."""
        self.writer.write_metadata(pa.py_buffer(frame))
        chunk = self.reader.read_chunk()  # StopIteration: the server ended the stream unanswered
        if chunk.app_metadata is None:
            raise WireError("an answer frame without metadata")
        return chunk.app_metadata

    def end(self) -> None:
        """End the stream cleanly (the server's handler returns); errors of a dead stream are ignored."""
        try:
            self.writer.done_writing()
            while True:  # to the end of the stream
                self.reader.read_chunk()
        except StopIteration:
            pass
        except (flight.FlightError, pa.ArrowException, OSError):
            return
        try:
            self.writer.close()
        except (flight.FlightError, pa.ArrowException, OSError):
            pass

    def cancel(self) -> None:
        try:
            self.reader.cancel()
        except (flight.FlightError, pa.ArrowException, OSError):
            pass


class _StreamEnded(Exception):
    """The server ended a call stream before answering (it is stopping): the call was not applied."""


class RemoteParty:
    """An organisation's party reached over Flight: the protocol table's calls, sent as Flight actions.

    ``call(name, ...)`` sends any call of the table; every call is also a
    method of the same name (``remote.histograms(node_ids)``), made from the
    table, so a call added to the table needs nothing here.

    Parameters
    ----------
    name : the organisation's name; the server's certificate must name it.
    endpoint : ``host:port`` or ``grpc+tls://host:port`` (``grpc://`` only with ``allow_insecure``).
    tls : the coordinator's certificate, key and the federation CA; None only with ``allow_insecure``.
    timeout : seconds per call (None: no limit).
    retries : further attempts after a transport failure (UNAVAILABLE), with doubling backoff.
    backoff : seconds before the first retry.
    calls : the calls this client may send (default: every call of the table).
    max_answer_bytes : larger answers are rejected.
    """

    def __init__(
        self,
        name: str,
        endpoint: str,
        *,
        tls: ClientTLS | None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        allow_insecure: bool = False,
        calls: Iterable[str] | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self.tls = tls
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.allow_insecure = allow_insecure
        self.calls = None if calls is None else tuple(calls)
        self.max_answer_bytes = max_answer_bytes
        if not isinstance(endpoint, str) or not (m := _ENDPOINT.match(endpoint)) or not 0 < int(m["port"]) <= 65535:
            raise ConfigError(
                f"organisation {name}: endpoint must be host:port or grpc+tls://host:port, got {endpoint!r}"
            )
        scheme = m["scheme"]
        if tls is None and not allow_insecure:
            raise ConfigError(
                f"organisation {name}: endpoint {endpoint} needs TLS (certificates); "
                "plain connections need allow_insecure=True"
            )
        if tls is not None and scheme in ("grpc", "grpc+tcp"):
            raise ConfigError(
                f"organisation {name}: endpoint {endpoint} is plain gRPC but TLS is configured; use grpc+tls://"
            )
        if tls is None and scheme == "grpc+tls":
            raise ConfigError(f"organisation {name}: endpoint {endpoint} asks for TLS but no certificates are given")
        if not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"organisation {name}: retries must be an integer >= 0, got {retries!r}")
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"organisation {name}: timeout must be > 0 seconds or None, got {timeout!r}")
        self.location = f"{'grpc+tls' if tls is not None else 'grpc'}://{m['host']}:{m['port']}"
        self._client: flight.FlightClient | None = None
        self._client_lock = threading.Lock()
        # call streams: idle ones wait here; a watchdog thread cancels calls past their timeout
        # and ends streams idle for STREAM_IDLE_SECONDS (it ends itself when no stream is left)
        self._idle: list[_Stream] = []
        self._busy: set[_Stream] = set()
        self._streams = threading.Condition()
        self._watchdog: threading.Thread | None = None
        self._wake_at = math.inf

    def __repr__(self) -> str:
        return f"RemoteParty({self.name!r}, {self.location!r})"

    # -- transport -----------------------------------------------------------
    def _connect(self) -> flight.FlightClient:
        with self._client_lock:
            if self._client is None:
                if self.tls is None:
                    self._client = flight.FlightClient(self.location)
                else:  # the server's certificate must be signed by the CA and name this organisation
                    self._client = flight.FlightClient(
                        self.location,
                        tls_root_certs=self.tls.ca,
                        cert_chain=self.tls.cert,
                        private_key=self.tls.key,
                        override_hostname=self.name,
                    )
            return self._client

    def close(self) -> None:
        """End the call streams (calls in progress are cancelled) and the connection."""
        with self._streams:
            idle, busy = self._idle, list(self._busy)
            self._idle = []
            self._streams.notify()
        for stream in busy:
            stream.cancel()
        for stream in idle:
            stream.end()
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- call streams ----------------------------------------------------------
    def _take_stream(self) -> _Stream:
        """An idle call stream, or a new one (the watchdog started if it is not running)."""
        with self._streams:
            stream = self._idle.pop() if self._idle else None
        if stream is None:
            options = flight.FlightCallOptions()  # no deadline: each call's own is the watchdog's
            writer, reader = self._connect().do_exchange(flight.FlightDescriptor.for_command(CALL_STREAM), options)
            stream = _Stream(writer, reader)
        with self._streams:
            stream.deadline = math.inf if self.timeout is None else time.monotonic() + self.timeout
            stream.timed_out = False
            self._busy.add(stream)
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, name=f"fedmine-streams-{self.name}", daemon=True)
                self._watchdog.start()
            elif stream.deadline < self._wake_at:
                self._streams.notify()
        return stream

    def _give_stream(self, stream: _Stream, *, healthy: bool) -> None:
        """Back to the idle streams after a call (healthy), or ended."""
        with self._streams:
            self._busy.discard(stream)
            stream.deadline = math.inf
            if healthy and not stream.timed_out:
                stream.used = True
                stream.idle_since = time.monotonic()
                self._idle.append(stream)
                if stream.idle_since + STREAM_IDLE_SECONDS < self._wake_at:
                    self._streams.notify()
                return
        stream.cancel()

    def _watch(self) -> None:
        """Cancel calls past their deadline, end streams idle too long; return when no stream is left."""
        with self._streams:
            while self._idle or self._busy:
                now = time.monotonic()
                wake, ending = math.inf, []
                for stream in self._busy:
                    if stream.deadline <= now:
                        stream.timed_out = True
                        stream.deadline = math.inf
                        stream.cancel()
                    wake = min(wake, stream.deadline)
                for stream in list(self._idle):
                    if now - stream.idle_since >= STREAM_IDLE_SECONDS:
                        self._idle.remove(stream)
                        ending.append(stream)
                    else:
                        wake = min(wake, stream.idle_since + STREAM_IDLE_SECONDS)
                if ending:
                    self._streams.release()
                    try:
                        for stream in ending:
                            stream.end()
                    finally:
                        self._streams.acquire()
                    continue
                self._wake_at = wake
                self._streams.wait(None if wake == math.inf else wake - now)
            self._wake_at = math.inf
            self._watchdog = None

    def _fail(self, action: str, reason: str) -> PartyError:
        return PartyError(f"party {self.name} at {self.location}: {action}: {_one_line(reason)}")

    def _call(self, action: str, args: tuple, kwargs: dict) -> Any:
        """Send one call on a call stream and decode its answer (the client's conversion point)."""
        frame = request_frame(action, args, kwargs)
        attempt, fresh_retry = 0, True
        while True:
            stream = None
            try:
                stream = self._take_stream()
                answer = stream.ask(frame)
                self._give_stream(stream, healthy=True)
                break
            except (flight.FlightUnavailableError, StopIteration) as exc:  # transport: retry with backoff
                stale = stream is not None and stream.used
                if stream is not None:
                    self._give_stream(stream, healthy=False)
                if stale and fresh_retry:  # a stream opened before the party restarted or stopped: a new one
                    fresh_retry = False
                    continue
                reason = "the party ended the call stream" if isinstance(exc, StopIteration) else str(exc)
                if attempt >= self.retries:
                    raise self._fail(action, f"unreachable after {attempt + 1} attempts: {reason}") from None
                delay = min(self.backoff * 2**attempt, MAX_BACKOFF)
                log.info(
                    "party %s at %s: %s unavailable (attempt %d of %d), retrying in %.2f s",
                    self.name,
                    self.location,
                    action,
                    attempt + 1,
                    self.retries + 1,
                    delay,
                )
                time.sleep(delay)
                attempt += 1
            except (flight.FlightTimedOutError, flight.FlightCancelledError) as exc:
                timed_out = stream is not None and stream.timed_out
                if stream is not None:
                    self._give_stream(stream, healthy=False)
                if timed_out or isinstance(exc, flight.FlightTimedOutError):
                    raise self._fail(action, f"no answer within {self.timeout} s") from None
                raise self._fail(action, f"cancelled: {exc}") from None
            except flight.FlightError as exc:
                if stream is not None:
                    self._give_stream(stream, healthy=False)
                raise self._remote_error(action, exc) from None
            except (pa.ArrowException, WireError) as exc:
                if stream is not None:
                    self._give_stream(stream, healthy=False)
                raise self._fail(action, f"{type(exc).__name__}: {exc}") from None
        view = memoryview(answer).cast("B")
        tag, body = view[:1].tobytes(), view[1:]
        if tag == ERROR:
            raise self._described_error(action, body, None)
        if tag != ANSWER:
            raise self._fail(action, f"bad answer: frame starts with {tag!r}, expected {ANSWER!r} or {ERROR!r}")
        try:
            return wire.decode(body, max_bytes=self.max_answer_bytes)
        except WireError as exc:
            raise self._fail(action, f"bad answer: {exc}") from None

    def _remote_error(self, action: str, exc: flight.FlightError) -> Exception:
        """The party's error, rebuilt by class name when allow-listed."""
        return self._described_error(action, getattr(exc, "extra_info", None), exc)

    def _described_error(self, action: str, info: Any, exc: flight.FlightError | None) -> Exception:
        """The error a description ``{"type", "message"}`` names (``exc``: the Flight error that carried it)."""
        try:
            desc = wire.decode(info or b"", max_bytes=MAX_ERROR_BYTES)
        except WireError:
            desc = None
        if not (isinstance(desc, dict) and isinstance(desc.get("type"), str) and isinstance(desc.get("message"), str)):
            if exc is None:
                return self._fail(action, "bad answer: an error frame without a description")
            return self._fail(action, f"{type(exc).__name__}: {str(exc).split('. Detail:')[0]}")
        cls = ERRORS.get(desc["type"], None)
        message = _one_line(desc["message"])
        if isinstance(exc, (flight.FlightUnauthenticatedError, flight.FlightUnauthorizedError)):
            return self._fail(action, f"refused: {message}")
        if cls is None:
            return self._fail(action, f"{desc['type']}: {message}")
        return cls(message)

    # -- the protocol ------------------------------------------------------------
    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Send one call of the protocol table; its decoded answer."""
        protocol.call(name)  # in the table, or a ProtocolError naming the allowed calls
        if self.calls is not None and name not in self.calls:
            raise PartyError(
                f"party {self.name}: call {name!r} is not allowed by this client; allowed: {', '.join(self.calls)}"
            )
        return self._call(name, args, kwargs)

    def list_actions(self) -> list[str]:
        """The actions the server says it serves."""
        try:
            return [a.type for a in self._connect().list_actions(flight.FlightCallOptions(timeout=self.timeout))]
        except flight.FlightError as exc:
            raise self._remote_error("list_actions", exc) from None

    def __getattr__(self, name: str):
        """Every call of the protocol table is a method (made from the table when asked for)."""
        if name.startswith("_") or name not in protocol.CALLS:
            raise AttributeError(f"{type(self).__name__} {self.__dict__.get('name', '?')!r} has no call {name!r}")
        return lambda *args, **kwargs: self.call(name, *args, **kwargs)


def _insecure(cfg: FederationConfig, endpoint: str) -> bool:
    plain = endpoint.startswith(("grpc://", "grpc+tcp://"))
    if plain and not cfg.transport.allow_insecure:
        raise ConfigError(
            f"endpoint {endpoint}: a plain connection; use grpc+tls:// "
            f"(or set transport.allow_insecure: true for local tests)"
        )
    return plain


def connect(cfg: FederationConfig, org: str):
    """A remote party for ``org``, checked with ``describe`` (transport failures are retried by the caller)."""
    from fedmine.transport.certs import client_tls

    endpoint = cfg.organisations[org].endpoint
    if endpoint is None:
        raise ConfigError(f"organisations.{org}.endpoint: not set")
    t = cfg.transport
    insecure = _insecure(cfg, endpoint)
    tls = None if insecure else client_tls(t.certs_dir(cfg.base_dir), t.coordinator)
    party = RemoteParty(org, endpoint, tls=tls, timeout=t.timeout_seconds, retries=t.retries, allow_insecure=insecure)
    party.describe()
    return party
