"""Organisations reached over the network: the coordinator's and the party's side of the setup.

:func:`connect` gives the coordinator a :class:`~fedmine.federation.flight.RemoteParty`
for an organisation with an ``endpoint``, authenticated with the federation's
certificates; :func:`serve` runs an organisation's prepared party behind a
:class:`~fedmine.federation.flight.PartyServer` until it is stopped. Both
read the ``transport`` section of the config.
"""

from __future__ import annotations

from urllib.parse import urlparse

from fedmine.config import FederationConfig
from fedmine.errors import ConfigError


def _insecure(cfg: FederationConfig, endpoint: str) -> bool:
    plain = endpoint.startswith(("grpc://", "grpc+tcp://"))
    if plain and not cfg.transport.allow_insecure:
        raise ConfigError(f"endpoint {endpoint}: a plain connection; use grpc+tls:// "
                          f"(or set transport.allow_insecure: true for local tests)")
    return plain


def connect(cfg: FederationConfig, org: str):
    """A remote party for ``org``, checked with ``describe`` (transport failures are retried by the caller)."""
    from fedmine.federation.certs import client_tls
    from fedmine.federation.flight import RemoteParty

    endpoint = cfg.organisations[org].endpoint
    if endpoint is None:
        raise ConfigError(f"organisations.{org}.endpoint: not set")
    t = cfg.transport
    insecure = _insecure(cfg, endpoint)
    tls = None if insecure else client_tls(t.certs_dir(cfg.base_dir), t.coordinator)
    party = RemoteParty(org, endpoint, tls=tls, timeout=t.timeout_seconds, retries=t.retries,
                        allow_insecure=insecure)
    party.describe()
    return party


def listen_address(cfg: FederationConfig, org: str, host: str | None, port: int | None) -> tuple[str, int]:
    """Where the party listens: the arguments, else the port of its configured endpoint, on 127.0.0.1."""
    endpoint = cfg.organisations[org].endpoint
    if port is None:
        if endpoint is None:
            raise ConfigError(f"organisations.{org}.endpoint: not set; give --port")
        port = urlparse(endpoint).port
    return host or "127.0.0.1", int(port)


def serve(cfg: FederationConfig, org: str, party, *, host: str, port: int, allow_insecure: bool = False, ready=None,
          stop=None):
    """Serve ``party`` (prepared from ``org``'s source) until SIGINT/SIGTERM or ``stop`` is set."""
    from fedmine.federation.certs import server_tls
    from fedmine.federation.flight import run_party_server, serve_party

    t = cfg.transport
    if allow_insecure and not t.allow_insecure:
        raise ConfigError("--allow-insecure: also needs transport.allow_insecure: true in the config (local tests only)")
    tls = None if allow_insecure else server_tls(t.certs_dir(cfg.base_dir), org, coordinator=t.coordinator)
    server = serve_party(party, host=host, port=port, tls=tls, allow_insecure=allow_insecure)
    run_party_server(server, stop=stop, ready=(lambda: ready(server)) if ready else None)
