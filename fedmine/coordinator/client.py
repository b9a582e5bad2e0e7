"""The coordinator's client for an organisation's party server.

:class:`RemoteParty` has the party's calls and answers them through the
party's Flight server; :func:`connect` makes one for an organisation with an
``endpoint``, authenticated with the federation's certificates.
"""

from __future__ import annotations

import logging
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
    DEFAULT_BACKOFF,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    ERRORS,
    MAX_ANSWER_BYTES,
    MAX_BACKOFF,
    MAX_ERROR_BYTES,
    _one_line,
)
from fedmine.transport.wire import WireError

log = logging.getLogger(__name__)


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
