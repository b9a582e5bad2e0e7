"""An organisation's party on the network: a Flight server with mutual TLS.

:class:`PartyServer` serves one party's allow-listed calls over Arrow Flight;
:func:`serve` runs an organisation's prepared party behind it until it is
stopped, reading the ``transport`` section of the config. The wire format and
the error conversion are :mod:`fedmine.transport`'s.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.flight as flight

from fedmine import protocol
from fedmine.config import FederationConfig
from fedmine.errors import ConfigError, FedmineError, PartyError
from fedmine.transport import wire
from fedmine.transport.certs import ServerTLS
from fedmine.transport.flight import (
    _ENDPOINT,
    ANSWER,
    CALL_STREAM,
    DEFAULT_HOST,
    DEFAULT_PORT,
    ERROR,
    ERRORS,
    LOCK_FREE,
    MAX_REQUEST_BYTES,
    _error,
    _one_line,
    check_request,
    split_request,
)
from fedmine.transport.wire import WireError

log = logging.getLogger(__name__)


class PartyServer(flight.FlightServerBase):
    """Serves one party's allow-listed calls over Arrow Flight.

    Parameters
    ----------
    party : the party object (a Party); its ``name`` names the server in logs and errors.
    location : ``grpc+tls://host:port`` (or ``grpc://host:port`` with ``allow_insecure``).
    tls : the organisation's certificate, key, the federation CA and the coordinator's name.
        None only with ``allow_insecure=True``.
    allowed_calls : the protocol calls served (default: every call of the table); each must be in the table.
    allow_insecure : serve without TLS (local tests only).
    max_request_bytes : larger request bodies are rejected before decoding.

    The server is listening once constructed; :meth:`serve` blocks until
    :meth:`shutdown`. Calls to the party are serialised by a lock (the party
    is a state machine), except those in :data:`LOCK_FREE`. Calls arrive on
    call streams (``do_exchange``, one frame per call) or as actions
    (``do_action``), answered alike.
    """

    def __init__(
        self,
        party: Any,
        location: str,
        *,
        tls: ServerTLS | None,
        allowed_calls: Iterable[str] | None = None,
        allow_insecure: bool = False,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        self.party = party
        self.name = str(getattr(party, "name", "party"))
        self.allowed_calls = protocol.names() if allowed_calls is None else tuple(allowed_calls)
        self.max_request_bytes = int(max_request_bytes)
        self.tls = tls
        for name in self.allowed_calls:
            if name not in protocol.CALLS:
                raise ConfigError(
                    f"party {self.name}: allowed call {name!r} is not in the protocol table; "
                    f"allowed: {', '.join(protocol.CALLS)}"
                )
        self._actions = self.allowed_calls
        self._lock = threading.Lock()
        self._stopping = False  # set by shutdown: open streams end after their current call
        if tls is None:
            if not allow_insecure:
                raise ConfigError(f"party {self.name}: serving without TLS needs allow_insecure=True")
            super().__init__(location)
        else:
            super().__init__(
                location,
                tls_certificates=[flight.CertKeyPair(tls.cert, tls.key)],
                verify_client=True,
                root_certificates=tls.ca,
            )
        self.location = location

    @property
    def endpoint(self) -> str:
        """``scheme://host:port`` clients connect to (with the port actually bound)."""
        m = _ENDPOINT.match(self.location)
        scheme = "grpc+tls" if self.tls is not None else "grpc"
        return f"{scheme}://{m['host']}:{self.port}" if m else self.location

    # -- checks ------------------------------------------------------------
    def _authorise(self, context: flight.ServerCallContext, what: str) -> None:
        """Only the coordinator's certificate may call (mutual TLS verified it was signed by the CA)."""
        if self.tls is None:
            return
        identity = context.peer_identity()
        peer = identity.decode("utf-8", "replace") if isinstance(identity, bytes) else str(identity)
        if peer != self.tls.coordinator:
            log.warning(
                "party %s: refused %s from %s (certificate %r, expected %r)",
                self.name,
                what,
                context.peer(),
                peer,
                self.tls.coordinator,
            )
            raise _error(
                flight.FlightUnauthenticatedError,
                "PartyError",
                f"party {self.name}: certificate {peer!r} is not the coordinator's ({self.tls.coordinator!r})",
            )

    # -- Flight methods ------------------------------------------------------
    def list_actions(self, context):
        self._authorise(context, "list_actions")
        return [(name, protocol.CALLS[name].doc) for name in self._actions]

    def do_action(self, context, action):
        self._authorise(context, "do_action")
        return [flight.Result(pa.py_buffer(self._answer(action.type, action.body)))]

    def do_exchange(self, context, descriptor, reader, writer):
        """A call stream: request frames one after another, each answered with one frame, in order."""
        self._authorise(context, "do_exchange")
        if descriptor.descriptor_type != flight.DescriptorType.CMD or descriptor.command != CALL_STREAM:
            raise _error(
                flight.FlightServerError,
                "PartyError",
                f"party {self.name}: do_exchange serves only the call stream {CALL_STREAM.decode()!r}",
            )
        while not self._stopping:
            try:
                chunk = reader.read_chunk()
            except StopIteration:  # the client ended the stream
                return
            except (flight.FlightError, pa.ArrowException) as exc:  # cancelled, or the connection went
                log.debug("party %s: call stream ended: %s", self.name, _one_line(str(exc)))
                return
            if self._stopping:  # neither applied nor answered: the client asks again
                return
            frame = self._frame_answer(chunk.app_metadata)
            try:
                writer.write_metadata(pa.py_buffer(frame))
            except (flight.FlightError, pa.ArrowException) as exc:
                log.debug("party %s: call stream ended: %s", self.name, _one_line(str(exc)))
                return

    def _frame_answer(self, frame: pa.Buffer | None) -> bytes:
        """The answer frame to one request frame: ``ANSWER`` + the answer, or ``ERROR`` + why not."""
        try:
            try:
                if frame is None:
                    raise WireError("no request in the message's metadata")
                name, body = split_request(frame)
            except WireError as exc:
                raise _error(
                    flight.FlightServerError, "WireError", f"party {self.name}: bad request frame: {exc}"
                ) from None
            return self._answer(name, body, prefix=ANSWER)
        except flight.FlightError as exc:
            return ERROR + (exc.extra_info or b"")

    def shutdown(self) -> None:
        """Stop serving: open call streams end after their current call; blocks until every call has ended."""
        self._stopping = True
        super().shutdown()

    def _answer(self, name: str, body: Any, *, prefix: bytes = b"") -> bytes:
        """The encoded answer to one call (after ``prefix``), or the Flight error saying why not (conversion point)."""
        t0 = time.perf_counter()
        size = 0 if body is None else len(body)
        if name not in self._actions:
            raise _error(
                flight.FlightServerError,
                "PartyError",
                f"party {self.name}: action {name[:80]!r} is not served; served: {', '.join(self._actions)}",
            )
        if size > self.max_request_bytes:
            raise _error(
                flight.FlightServerError,
                "WireError",
                f"party {self.name}: {name} request of {size} bytes exceeds the limit of "
                f"{self.max_request_bytes} bytes",
            )
        try:
            args, kwargs = check_request(
                wire.decode(body if body is not None else b"", max_bytes=self.max_request_bytes)
            )
        except WireError as exc:
            log.warning("party %s: %s: bad request: %s", self.name, name, exc)
            raise _error(
                flight.FlightServerError, "WireError", f"party {self.name}: {name}: bad request: {exc}"
            ) from None
        if name == "batch":  # every part must be served too
            refused = [
                str(part[0])[:80]
                for part in (args[0] if args else kwargs.get("parts", [])) or []
                if isinstance(part, (list, tuple))
                and part
                and (not isinstance(part[0], str) or part[0] not in self._actions)
            ]
            if refused:
                raise _error(
                    flight.FlightServerError,
                    "PartyError",
                    f"party {self.name}: batch part {refused[0]!r} is not served; served: {', '.join(self._actions)}",
                )
        try:
            if name in LOCK_FREE:
                answer = self.party.call(name, *args, **kwargs)
            else:
                with self._lock:
                    answer = self.party.call(name, *args, **kwargs)
            try:
                out = wire.encode(answer, prefix=prefix)
            except WireError as exc:  # the party's bug, not the coordinator's input
                raise PartyError(f"party {self.name}: {name}: answer cannot travel: {exc}") from None
        except Exception as exc:  # the server's one conversion point: the reason travels, the traceback stays
            kind = type(exc).__name__
            if isinstance(exc, tuple(ERRORS.values())):
                message = str(exc)
            else:
                message = f"party {self.name}: {name} failed: {kind}: {exc}"
                kind = "PartyError"
            log.warning(
                "party %s: %s failed: %s: %s",
                self.name,
                name,
                type(exc).__name__,
                _one_line(str(exc)),
                exc_info=not isinstance(exc, tuple(ERRORS.values())),
            )
            raise _error(flight.FlightServerError, kind, message) from None
        log.debug(
            "party %s: %s in %d bytes, out %d bytes, %.4f s", self.name, name, size, len(out), time.perf_counter() - t0
        )
        return out

    def _unsupported(self, context, what: str):
        self._authorise(context, what)
        raise _error(flight.FlightServerError, "PartyError", f"party {self.name}: {what} is not served; use actions")

    def list_flights(self, context, criteria):
        self._unsupported(context, "list_flights")

    def get_flight_info(self, context, descriptor):
        self._unsupported(context, "get_flight_info")

    def get_schema(self, context, descriptor):
        """An empty schema whose metadata says why: pyarrow turns any error raised here into a traceback."""
        try:
            self._unsupported(context, "get_schema")
        except flight.FlightError as exc:
            reason = str(exc).split(". Detail:")[0]
        return flight.SchemaResult(pa.schema([], metadata={"error": reason}))

    def do_get(self, context, ticket):
        self._unsupported(context, "do_get")

    def do_put(self, context, descriptor, reader, writer):
        self._unsupported(context, "do_put")


def serve_party(
    party: Any,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    tls: ServerTLS | None,
    allowed_calls: Iterable[str] | None = None,
    allow_insecure: bool = False,
    max_request_bytes: int = MAX_REQUEST_BYTES,
) -> PartyServer:
    """Start serving ``party`` on ``host:port`` (``port=0``: a free port); returns the running server.

    Raises
    ------
    ConfigError
        No TLS without ``allow_insecure``, a bad port, an allowed call the party lacks.
    PartyError
        The address cannot be bound.
    """
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigError(f"port must be an integer in [0, 65535], got {port!r}")
    scheme = "grpc" if tls is None else "grpc+tls"
    location = f"{scheme}://{host}:{port}"
    try:
        server = PartyServer(
            party,
            location,
            tls=tls,
            allowed_calls=allowed_calls,
            allow_insecure=allow_insecure,
            max_request_bytes=max_request_bytes,
        )
    except FedmineError:
        raise
    except (flight.FlightError, pa.ArrowException, OSError) as exc:
        raise PartyError(
            f"party {getattr(party, 'name', '?')}: cannot serve on {location}: {_one_line(str(exc))}"
        ) from None
    log.info("party %s: serving %s on %s", server.name, ", ".join(server.allowed_calls), server.endpoint)
    return server


def run_party_server(
    server: PartyServer,
    *,
    stop: threading.Event | None = None,
    signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM),
    ready: Callable[[], None] | None = None,
) -> None:
    """Block until ``stop`` is set or the process receives one of ``signals``; then shut the server down.

    The server answers from its own threads; this only waits. Signal handlers
    are installed only when called from the main thread, and restored after;
    ``ready`` is called once they are (e.g. to announce the endpoint).
    """
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            previous[sig] = signal.signal(sig, lambda signum, frame: stop.set())
    try:
        if ready is not None:
            ready()
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.shutdown()
        log.info("party %s: stopped serving on %s", server.name, server.endpoint)


def listen_address(cfg: FederationConfig, org: str, host: str | None, port: int | None) -> tuple[str, int]:
    """Where the party listens: the arguments, else the port of its configured endpoint, on 127.0.0.1."""
    endpoint = cfg.organisations[org].endpoint
    if port is None:
        if endpoint is None:
            raise ConfigError(f"organisations.{org}.endpoint: not set; give --port")
        port = urlparse(endpoint).port
    return host or "127.0.0.1", int(port)


def serve(
    cfg: FederationConfig, org: str, party, *, host: str, port: int, allow_insecure: bool = False, ready=None, stop=None
):
    """Serve ``party`` (prepared from ``org``'s source) until SIGINT/SIGTERM or ``stop`` is set."""
    from fedmine.transport.certs import server_tls

    t = cfg.transport
    if allow_insecure and not t.allow_insecure:
        raise ConfigError(
            "--allow-insecure: also needs transport.allow_insecure: true in the config (local tests only)"
        )
    tls = None if allow_insecure else server_tls(t.certs_dir(cfg.base_dir), org, coordinator=t.coordinator)
    server = serve_party(party, host=host, port=port, tls=tls, allow_insecure=allow_insecure)
    watch_children()  # the Prefect server that prepared the data ends with this process, however it ends
    run_party_server(server, stop=stop, ready=(lambda: ready(server)) if ready else None)


#: The watchdog's program: wait for the party's process to end, then end the processes it started.
_WATCHDOG = """
import os, signal, sys, time
parent, children = int(sys.argv[1]), [int(c) for c in sys.argv[2:]]
while os.getppid() == parent:
    time.sleep(0.5)
for sig in (signal.SIGTERM, signal.SIGKILL):
    alive = []
    for pid in children:
        try:
            os.kill(pid, sig)
            alive.append(pid)
        except ProcessLookupError:
            pass
    if not alive:
        break
    time.sleep(5)
"""


def child_processes(pid: int | None = None) -> list[int]:
    """The processes whose parent is ``pid`` (this process by default), read from /proc."""
    pid = os.getpid() if pid is None else pid
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            out.append(int(entry))
    return out


def watch_children() -> subprocess.Popen | None:
    """Make the processes this party started (its Prefect server) end with it, however it ends.

    A SIGTERM or SIGINT stops them through Prefect's own shutdown; a SIGKILL or
    an abort does not, so a watchdog process waits for this process to end and
    then stops them. Returns the watchdog (None where there is no /proc or no child).
    """
    if not os.path.isdir("/proc"):
        return None
    children = child_processes()
    if not children:
        return None
    return subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), *map(str, children)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
