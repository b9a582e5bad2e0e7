"""Per-organisation preparation: a subflow that runs inside the organisation.

The raw frame is loaded, harmonised and split here; only the party (holding
canonical rows it never sends) leaves the subflow.
"""

from __future__ import annotations

from prefect import flow

from fedmine.config import FederationConfig
from fedmine.party.organisation import Party
from fedmine.tasks.data import harmonise_frame, load_source, make_cluster_party, make_party


@flow(name="prepare-organisation", flow_run_name="prepare-{org}", validate_parameters=False)
def prepare_organisation(cfg: FederationConfig, org: str) -> Party:
    """Load the organisation's source, map it onto the canonical schema, split it.

    An organisation with ``compute:`` reads, maps and splits its source in
    partitions on its Dask cluster's workers instead.
    """
    if cfg.organisations[org].compute is not None:
        return make_cluster_party(cfg, org)
    raw = load_source(cfg, org)
    canonical = harmonise_frame(raw, cfg, org)
    return make_party(canonical, cfg, org)
