"""The Flight transport: a party served on the network, and the coordinator's client for it.

This module owns the network boundary of the Party protocol (see
docs/transport.md). :class:`PartyServer` serves one party object (a
:class:`~fedmine.federation.party.LocalParty`) over Arrow Flight with mutual
TLS; :class:`RemoteParty` has the party's methods and answers them through the
server, so :class:`~fedmine.federation.party.Link` wraps it unchanged::

    coordinator                                  organisation
    Link(RemoteParty).call("evaluate")
      RemoteParty.evaluate()
        do_action("evaluate", encode((args, kwargs)))  --mTLS-->  PartyServer.do_action
                                                                    check peer = coordinator
                                                                    check action allow-listed
                                                                    decode, lock, party.evaluate()
        decode(answer)                            <--------------  encode(answer) | error

One action per protocol call, named as the call (``describe``, ``start``,
``begin_round``, ...); engine calls of the ``histogram`` strategy are actions
``engine.<call>`` (``engine.histograms``, ...). Bodies are
:mod:`fedmine.federation.wire` messages: the request is ``(args, kwargs)``, the
answer is the call's return value.

Errors cross as Flight errors whose ``extra_info`` is a wire message
``{"type": class name, "message": one line}``. The client re-raises the
allow-listed classes (:data:`ERRORS`) by name with the same message, and
:class:`PartyError` for anything else. :meth:`PartyServer._answer` and
:meth:`RemoteParty._call` are the two conversion points.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.flight as flight

from fedmine import errors
from fedmine.errors import ConfigError, FedmineError, PartyError
from fedmine.federation import wire
from fedmine.federation.certs import CertificateError, ClientTLS, ServerTLS
from fedmine.federation.party import ENGINE_PROTOCOL, Party
from fedmine.federation.wire import WireError
from fedmine.gbdt.party import ProtocolError
from fedmine.privacy.secure_agg import SecureAggregationError

log = logging.getLogger(__name__)

__all__ = [
    "ClientTLS", "ServerTLS", "PartyServer", "RemoteParty", "serve_party", "run_party_server",
    "action_names", "PARTY_CALLS", "SECURE_CALLS", "ENGINE_ACTION_PREFIX", "LOCK_FREE", "DEFAULT_HOST", "DEFAULT_PORT",
    "MAX_REQUEST_BYTES", "MAX_ANSWER_BYTES", "ERRORS",
]

#: Secure aggregation's key exchange (:class:`~fedmine.federation.party.LocalParty`).
SECURE_CALLS = ("secure_setup", "secure_peers", "secure_restart")

#: The Party protocol's calls: the methods of :class:`~fedmine.federation.party.Party` and the key exchange.
PARTY_CALLS: tuple[str, ...] = tuple(dict.fromkeys(
    [name for name, value in vars(Party).items() if callable(value) and not name.startswith("_")] + list(SECURE_CALLS)
))

#: Engine calls travel as actions ``engine.<call>``.
ENGINE_ACTION_PREFIX = "engine."

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
        errors.FedmineError, errors.ConfigError, errors.ConnectorError, errors.DataError, errors.PartyError,
        WireError, CertificateError, SecureAggregationError, ProtocolError,
    )
}

_ENDPOINT = re.compile(r"^(?:(?P<scheme>grpc|grpc\+tcp|grpc\+tls)://)?(?P<host>\[[0-9a-fA-F:.]+\]|[^:/\s]+):(?P<port>\d{1,5})$")


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 3] + "..."


def action_names(allowed_calls: Iterable[str]) -> tuple[str, ...]:
    """Flight action names for ``allowed_calls`` (``engine`` expands to ``engine.<call>`` for each engine call)."""
    out = []
    for call in allowed_calls:
        if call == "engine":
            out += [ENGINE_ACTION_PREFIX + c for c in sorted(ENGINE_PROTOCOL)]
        else:
            out.append(call)
    return tuple(out)


def _error(kind: type[flight.FlightError], type_name: str, message: str) -> flight.FlightError:
    """A Flight error carrying ``{"type", "message"}`` in ``extra_info``."""
    message = _one_line(message)
    return kind(message, extra_info=wire.encode({"type": type_name, "message": message}))


# ---------------------------------------------------------------------------
# server
# ---------------------------------------------------------------------------


class PartyServer(flight.FlightServerBase):
    """Serves one party's allow-listed calls over Arrow Flight.

    Parameters
    ----------
    party : the party object (a LocalParty); its ``name`` names the server in logs and errors.
    location : ``grpc+tls://host:port`` (or ``grpc://host:port`` with ``allow_insecure``).
    tls : the organisation's certificate, key, the federation CA and the coordinator's name.
        None only with ``allow_insecure=True``.
    allowed_calls : the party methods served; each must exist on ``party``.
    allow_insecure : serve without TLS (local tests only).
    max_request_bytes : larger request bodies are rejected before decoding.

    The server is listening once constructed; :meth:`serve` blocks until
    :meth:`shutdown`. Calls to the party are serialised by a lock (the party
    is a state machine), except those in :data:`LOCK_FREE`.
    """

    def __init__(self, party: Any, location: str, *, tls: ServerTLS | None, allowed_calls: Iterable[str] = PARTY_CALLS,
                 allow_insecure: bool = False, max_request_bytes: int = MAX_REQUEST_BYTES) -> None:
        self.party = party
        self.name = str(getattr(party, "name", "party"))
        self.allowed_calls = tuple(allowed_calls)
        self.max_request_bytes = int(max_request_bytes)
        self.tls = tls
        for call in self.allowed_calls:
            if call.startswith("_") or not callable(getattr(party, call, None)):
                raise ConfigError(f"party {self.name}: allowed call {call!r} is not a method of "
                                  f"{type(party).__name__}")
        self._actions = action_names(self.allowed_calls)
        self._lock = threading.Lock()
        if tls is None:
            if not allow_insecure:
                raise ConfigError(f"party {self.name}: serving without TLS needs allow_insecure=True")
            super().__init__(location)
        else:
            super().__init__(location, tls_certificates=[flight.CertKeyPair(tls.cert, tls.key)], verify_client=True,
                             root_certificates=tls.ca)
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
            log.warning("party %s: refused %s from %s (certificate %r, expected %r)", self.name, what, context.peer(),
                        peer, self.tls.coordinator)
            raise _error(flight.FlightUnauthenticatedError, "PartyError",
                         f"party {self.name}: certificate {peer!r} is not the coordinator's ({self.tls.coordinator!r})")

    # -- Flight methods ------------------------------------------------------
    def list_actions(self, context):
        self._authorise(context, "list_actions")
        out = []
        for action in self._actions:
            if action.startswith(ENGINE_ACTION_PREFIX):
                out.append((action, f"engine call {action[len(ENGINE_ACTION_PREFIX):]} (histogram strategy)"))
            else:
                doc = (getattr(self.party, action).__doc__ or "").strip().splitlines()
                out.append((action, doc[0] if doc else action))
        return out

    def do_action(self, context, action):
        self._authorise(context, "do_action")
        return [flight.Result(pa.py_buffer(self._answer(action.type, action.body)))]

    def _answer(self, name: str, body: pa.Buffer | None) -> bytes:
        """The encoded answer to one action, or the Flight error that says why not (the conversion point)."""
        t0 = time.perf_counter()
        size = 0 if body is None else body.size
        if name not in self._actions:
            raise _error(flight.FlightServerError, "PartyError",
                         f"party {self.name}: action {name[:80]!r} is not served; served: {', '.join(self._actions)}")
        if size > self.max_request_bytes:
            raise _error(flight.FlightServerError, "WireError",
                         f"party {self.name}: {name} request of {size} bytes exceeds the limit of "
                         f"{self.max_request_bytes} bytes")
        try:
            args, kwargs = _request(wire.decode(body if body is not None else b"", max_bytes=self.max_request_bytes))
        except WireError as exc:
            log.warning("party %s: %s: bad request: %s", self.name, name, exc)
            raise _error(flight.FlightServerError, "WireError", f"party {self.name}: {name}: bad request: {exc}") from None
        if name.startswith(ENGINE_ACTION_PREFIX):
            method, args = "engine", (name[len(ENGINE_ACTION_PREFIX):], *args)
        else:
            method = name
        try:
            if method in LOCK_FREE:
                answer = getattr(self.party, method)(*args, **kwargs)
            else:
                with self._lock:
                    answer = getattr(self.party, method)(*args, **kwargs)
            try:
                out = wire.encode(answer)
            except WireError as exc:  # the party's bug, not the coordinator's input
                raise PartyError(f"party {self.name}: {name}: answer cannot travel: {exc}") from None
        except Exception as exc:  # the server's one conversion point: the reason travels, the traceback stays
            kind = type(exc).__name__
            if isinstance(exc, tuple(ERRORS.values())):
                message = str(exc)
            else:
                message = f"party {self.name}: {name} failed: {kind}: {exc}"
                kind = "PartyError"
            log.warning("party %s: %s failed: %s: %s", self.name, name, type(exc).__name__, _one_line(str(exc)),
                        exc_info=not isinstance(exc, tuple(ERRORS.values())))
            raise _error(flight.FlightServerError, kind, message) from None
        log.debug("party %s: %s in %d bytes, out %d bytes, %.4f s", self.name, name, size, len(out),
                  time.perf_counter() - t0)
        return out

    def _unsupported(self, context, what: str):
        self._authorise(context, what)
        raise _error(flight.FlightServerError, "PartyError", f"party {self.name}: {what} is not served; use actions")

    def list_flights(self, context, criteria):
        self._unsupported(context, "list_flights")

    def get_flight_info(self, context, descriptor):
        self._unsupported(context, "get_flight_info")

    def get_schema(self, context, descriptor):
        self._unsupported(context, "get_schema")

    def do_get(self, context, ticket):
        self._unsupported(context, "do_get")

    def do_put(self, context, descriptor, reader, writer):
        self._unsupported(context, "do_put")

    def do_exchange(self, context, descriptor, reader, writer):
        self._unsupported(context, "do_exchange")


def _request(value: Any) -> tuple[tuple, dict]:
    """Check a decoded request is ``(args, kwargs)`` with identifier keyword names."""
    if type(value) not in (tuple, list) or len(value) != 2:
        raise WireError("request must be a pair (args, kwargs)")
    args, kwargs = value
    if type(args) not in (tuple, list):
        raise WireError(f"request args must be a list, got {type(args).__name__}")
    if type(kwargs) is not dict or not all(type(k) is str and k.isidentifier() and not k.startswith("_")
                                           for k in kwargs):
        raise WireError("request kwargs must be a dict with keyword names")
    return tuple(args), kwargs


def serve_party(party: Any, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, tls: ServerTLS | None,
                allowed_calls: Iterable[str] = PARTY_CALLS, allow_insecure: bool = False,
                max_request_bytes: int = MAX_REQUEST_BYTES) -> PartyServer:
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
        server = PartyServer(party, location, tls=tls, allowed_calls=allowed_calls, allow_insecure=allow_insecure,
                             max_request_bytes=max_request_bytes)
    except FedmineError:
        raise
    except (flight.FlightError, pa.ArrowException, OSError) as exc:
        raise PartyError(f"party {getattr(party, 'name', '?')}: cannot serve on {location}: {_one_line(str(exc))}") from None
    log.info("party %s: serving %s on %s", server.name, ", ".join(server.allowed_calls), server.endpoint)
    return server


def run_party_server(server: PartyServer, *, stop: threading.Event | None = None,
                     signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM),
                     ready: Callable[[], None] | None = None) -> None:
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


# ---------------------------------------------------------------------------
# client
# ---------------------------------------------------------------------------


class RemoteParty:
    """An organisation's party reached over Flight: the same calls as a LocalParty.

    Parameters
    ----------
    name : the organisation's name; the server's certificate must name it.
    endpoint : ``host:port`` or ``grpc+tls://host:port`` (``grpc://`` only with ``allow_insecure``).
    tls : the coordinator's certificate, key and the federation CA; None only with ``allow_insecure``.
    timeout : seconds per call (None: no limit).
    retries : further attempts after a transport failure (UNAVAILABLE), with doubling backoff.
    backoff : seconds before the first retry.
    calls : the party calls this client may send (others are no attribute of it).
    max_answer_bytes : larger answers are rejected.
    """

    def __init__(self, name: str, endpoint: str, *, tls: ClientTLS | None, timeout: float | None = DEFAULT_TIMEOUT,
                 retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_BACKOFF, allow_insecure: bool = False,
                 calls: Iterable[str] = PARTY_CALLS, max_answer_bytes: int = MAX_ANSWER_BYTES) -> None:
        self.name = name
        self.endpoint = endpoint
        self.tls = tls
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.allow_insecure = allow_insecure
        self.calls = tuple(calls)
        self.max_answer_bytes = max_answer_bytes
        if not isinstance(endpoint, str) or not (m := _ENDPOINT.match(endpoint)) or not 0 < int(m["port"]) <= 65535:
            raise ConfigError(f"organisation {name}: endpoint must be host:port or grpc+tls://host:port, got {endpoint!r}")
        scheme = m["scheme"]
        if tls is None and not allow_insecure:
            raise ConfigError(f"organisation {name}: endpoint {endpoint} needs TLS (certificates); "
                              "plain connections need allow_insecure=True")
        if tls is not None and scheme in ("grpc", "grpc+tcp"):
            raise ConfigError(f"organisation {name}: endpoint {endpoint} is plain gRPC but TLS is configured; "
                              "use grpc+tls://")
        if tls is None and scheme == "grpc+tls":
            raise ConfigError(f"organisation {name}: endpoint {endpoint} asks for TLS but no certificates are given")
        if not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"organisation {name}: retries must be an integer >= 0, got {retries!r}")
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"organisation {name}: timeout must be > 0 seconds or None, got {timeout!r}")
        self.location = f"{'grpc+tls' if tls is not None else 'grpc'}://{m['host']}:{m['port']}"
        self._client: flight.FlightClient | None = None
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RemoteParty({self.name!r}, {self.location!r})"

    # -- transport -----------------------------------------------------------
    def _connect(self) -> flight.FlightClient:
        with self._client_lock:
            if self._client is None:
                if self.tls is None:
                    self._client = flight.FlightClient(self.location)
                else:  # the server's certificate must be signed by the CA and name this organisation
                    self._client = flight.FlightClient(self.location, tls_root_certs=self.tls.ca,
                                                       cert_chain=self.tls.cert, private_key=self.tls.key,
                                                       override_hostname=self.name)
            return self._client

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _fail(self, action: str, reason: str) -> PartyError:
        return PartyError(f"party {self.name} at {self.location}: {action}: {_one_line(reason)}")

    def _call(self, action: str, args: tuple, kwargs: dict) -> Any:
        """Send one action and decode its answer (the client's conversion point)."""
        body = wire.encode((tuple(args), dict(kwargs)))
        options = flight.FlightCallOptions(timeout=self.timeout)
        attempt = 0
        while True:
            try:
                results = list(self._connect().do_action(flight.Action(action, body), options))
                break
            except flight.FlightUnavailableError as exc:  # transport: retry with backoff
                if attempt >= self.retries:
                    raise self._fail(action, f"unreachable after {attempt + 1} attempts: {exc}") from None
                delay = min(self.backoff * 2**attempt, MAX_BACKOFF)
                log.info("party %s at %s: %s unavailable (attempt %d of %d), retrying in %.2f s", self.name,
                         self.location, action, attempt + 1, self.retries + 1, delay)
                time.sleep(delay)
                attempt += 1
            except flight.FlightTimedOutError:
                raise self._fail(action, f"no answer within {self.timeout} s") from None
            except flight.FlightError as exc:
                raise self._remote_error(action, exc) from None
            except pa.ArrowException as exc:
                raise self._fail(action, f"{type(exc).__name__}: {exc}") from None
        if len(results) != 1:
            raise self._fail(action, f"expected one answer, got {len(results)}")
        try:
            return wire.decode(results[0].body, max_bytes=self.max_answer_bytes)
        except WireError as exc:
            raise self._fail(action, f"bad answer: {exc}") from None

    def _remote_error(self, action: str, exc: flight.FlightError) -> Exception:
        """The party's error, rebuilt by class name when allow-listed."""
        info = getattr(exc, "extra_info", None)
        try:
            desc = wire.decode(info or b"", max_bytes=MAX_ERROR_BYTES)
        except WireError:
            desc = None
        if not (isinstance(desc, dict) and isinstance(desc.get("type"), str) and isinstance(desc.get("message"), str)):
            return self._fail(action, f"{type(exc).__name__}: {str(exc).split('. Detail:')[0]}")
        cls = ERRORS.get(desc["type"], None)
        message = _one_line(desc["message"])
        if isinstance(exc, (flight.FlightUnauthenticatedError, flight.FlightUnauthorizedError)):
            return self._fail(action, f"refused: {message}")
        if cls is None:
            return self._fail(action, f"{desc['type']}: {message}")
        return cls(message)

    # -- the Party protocol ------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return self._call("describe", (), {})

    def start(self, base_score) -> None:
        return self._call("start", (base_score,), {})

    def begin_round(self, step: int, model_delta: str | None) -> None:
        return self._call("begin_round", (step, model_delta), {})

    def train_local(self, params: dict[str, Any], num_boost_round: int) -> list[str]:
        return self._call("train_local", (params, num_boost_round), {})

    def evaluate(self) -> dict[str, Any]:
        return self._call("evaluate", (), {})

    def local_baseline(self, params: dict[str, Any], num_boost_round: int) -> dict[str, Any]:
        return self._call("local_baseline", (params, num_boost_round), {})

    def engine(self, call: str, *args: Any, **kwargs: Any) -> Any:
        """One engine call (``histogram`` strategy), sent as action ``engine.<call>``."""
        if call not in ENGINE_PROTOCOL:
            raise PartyError(f"party {self.name}: unknown engine call {call!r}; allowed: {', '.join(sorted(ENGINE_PROTOCOL))}")
        return self._call(ENGINE_ACTION_PREFIX + call, args, kwargs)

    def list_actions(self) -> list[str]:
        """The actions the server says it serves."""
        try:
            return [a.type for a in self._connect().list_actions(flight.FlightCallOptions(timeout=self.timeout))]
        except flight.FlightError as exc:
            raise self._remote_error("list_actions", exc) from None

    def __getattr__(self, method: str):
        """Calls added to the protocol later (e.g. ``secure_setup``), if allow-listed in ``calls``."""
        if method.startswith("_") or method not in self.__dict__.get("calls", ()):
            raise AttributeError(f"{type(self).__name__} {self.__dict__.get('name', '?')!r} has no call {method!r}")
        return lambda *args, **kwargs: self._call(method, args, kwargs)
