"""One organisation's party server as a Prefect flow, for that organisation's own work pool.

Recipe: prepare the organisation's data (the same subflow as in simulation:
its rows stay in this process), then answer the coordinator over Arrow Flight
with mutual TLS until the training is done (``stop_after_seconds``) or the
process is stopped.
"""

from __future__ import annotations

import threading

from prefect import flow, get_run_logger

from fedmine.config import load_config
from fedmine.flows.prepare import prepare_organisation
from fedmine.party.server import listen_address, serve


@flow(name="party-server", flow_run_name="party-{org}", validate_parameters=False)
def party_server(
    config: str, org: str, host: str = "127.0.0.1", port: int | None = None, stop_after_seconds: float | None = 6 * 3600
) -> None:
    """Serve ``org``'s party for one training window."""
    cfg = load_config(config)
    address = listen_address(cfg, org, host, port)
    party = prepare_organisation(cfg, org)
    logger = get_run_logger()
    stop = threading.Event()
    # a daemon timer, cancelled when serving ends: a run cancelled from Prefect exits at once, not at the window's end
    timer = threading.Timer(stop_after_seconds, stop.set) if stop_after_seconds else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        serve(
            cfg,
            org,
            party,
            host=address[0],
            port=address[1],
            stop=stop,
            ready=lambda server: logger.info("party %s serving on %s", org, server.endpoint),
        )
    finally:
        if timer is not None:
            timer.cancel()
