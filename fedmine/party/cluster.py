"""An organisation's party whose rows live on its own Dask cluster.

This module owns :class:`ClusterParty`, the :class:`~fedmine.party.organisation.Party`
of an organisation with a ``compute:`` key, and :func:`connect`, which reaches
(or starts) the organisation's cluster. The party answers the protocol table
as every party does, with the same stage checks, policy and masks; its engine
state is a :class:`~fedmine.party.partitions.PartitionedState`, so every
engine call fans out to the partitions on the workers and their integer
answers are summed here before anything leaves the organisation. The
coordinator cannot tell it from a single-process party, and the model is
the same.

What crosses between the party and its workers is the organisation's own
business, inside its own network: the partitions' rows never leave the
workers; the workers send the party their per-partition aggregates (the
histograms before the masks, bounds, counts) and their validation labels and
scores (for the organisation's own metrics). What crosses to the coordinator
is unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fedmine import connectors
from fedmine.errors import ConfigError, PartyError
from fedmine.party.organisation import Party, TrainValidRows, validation_mask
from fedmine.party.partitions import PartitionedState, PartitionPlan
from fedmine.party.policy import PartyPolicy
from fedmine.protocol import CREATED
from fedmine.schema import merge_reports

log = logging.getLogger(__name__)


def connect(compute: Any, *, org: str) -> tuple[Any, Any]:
    """The organisation's Dask client and, for ``dask: local``, the LocalCluster it started (else None).

    A local cluster has ``compute.workers`` worker processes (default 2) on
    this machine; an address (``tcp://host:port``) is an existing scheduler
    whose workers have fedmine installed.
    """
    from distributed import Client, LocalCluster

    if compute.dask == "local":
        cluster = LocalCluster(
            n_workers=compute.workers or 2,
            threads_per_worker=compute.threads_per_worker,
            processes=True,
            memory_limit=compute.memory_limit or "auto",
            dashboard_address="127.0.0.1:0",
            host="127.0.0.1",
        )
        return Client(cluster), cluster
    try:
        return Client(compute.dask, timeout=30), None
    except (OSError, TimeoutError) as exc:
        raise ConfigError(
            f"organisations.{org}.compute.dask: cannot reach the Dask scheduler at {compute.dask}: "
            f"{' '.join(str(exc).split())}"
        ) from None


class ClusterParty(Party):
    """An organisation's party whose rows are partitions on a Dask cluster.

    Parameters
    ----------
    name : the organisation's name.
    state : its partitions (loaded: :meth:`PartitionedState.load` has run).
    infos : what each partition answered to its load (row counts, labels, report, digest).
    client, cluster : the Dask client, and the LocalCluster this party started (None for an address).
    The rest are :class:`Party`'s.
    """

    in_process = False  # its engine calls wait on the cluster's workers

    def __init__(
        self,
        name: str,
        state: PartitionedState,
        infos: list[dict[str, Any]],
        *,
        client: Any,
        cluster: Any = None,
        objective: str,
        num_class: int,
        feature_names: list[str],
        categorical: list[int],
        policy: PartyPolicy | None = None,
    ) -> None:
        n_features = len(feature_names)
        y_valid = np.concatenate([info["y_valid"] for info in infos])
        # the party holds the validation labels (its own metrics), never the rows
        held = TrainValidRows(np.empty((0, n_features)), np.empty(0), np.empty((0, n_features)), y_valid)
        super().__init__(
            name,
            held,
            objective=objective,
            num_class=num_class,
            feature_names=feature_names,
            categorical=categorical,
            report=merge_reports([info["report"] for info in infos]),
            policy=policy,
        )
        self.client = client
        self.cluster = cluster
        self.partitions_ = state
        self._engine = state
        self.fingerprint_ = state.digest()
        self._n_train = sum(info["n_train"] for info in infos)
        self._label_sums_ = np.sum([info["label_sums"] for info in infos], axis=0)
        self._sum_vector = np.sum([info["label_sum_vector"] for info in infos], axis=0)  # exact: int64 parts add
        parts = [info.get("dp_label_part") for info in infos]
        self._dp_label_part_ = None if any(p is None for p in parts) else np.sum(parts, axis=0)  # under epsilon

    @classmethod
    def for_organisation(  # type: ignore[override]
        cls, cfg: Any, org: str, *, enforce_policy: bool = True, client: Any = None
    ) -> ClusterParty:
        """``org``'s party over its source read in partitions on its cluster (``organisations.<org>.compute``).

        ``client``: a Dask client to use instead of the config's cluster (the
        caller keeps it). :meth:`plan`, the partitions' load, then
        :meth:`from_partitions`; the Prefect flow runs the same steps with each
        partition's load a task on the cluster.
        """
        state, cluster = cls.plan(cfg, org, client=client)
        try:
            infos = state.load()
        except BaseException:
            cls.stop(state, cluster)
            raise
        return cls.from_partitions(cfg, org, state, infos, cluster=cluster, enforce_policy=enforce_policy)

    @staticmethod
    def plan(cfg: Any, org: str, *, client: Any = None) -> tuple[PartitionedState, Any]:
        """The organisation's partitions, planned (nothing read), and its cluster reached (or started).

        Returns
        -------
        state : PartitionedState
            Not loaded yet: ``state.load()``, or :meth:`PartitionedState.place`
            and each actor's ``load()``, then :meth:`PartitionedState.loaded`.
        cluster : the LocalCluster started here, or None.
        """
        spec = cfg.organisations[org]
        compute = spec.compute
        if compute is None:
            raise ConfigError(f"organisations.{org}.compute: not set; a cluster party needs its Dask cluster")
        if spec.source is None:
            raise ConfigError(f"organisations.{org}.source: not set; a cluster party reads its source in partitions")
        parts = connectors.plan(
            spec.source,
            spec.read,
            base_dir=cfg.base_dir,
            org=org,
            partition_rows=compute.partition_rows,
            partitions=compute.partitions,
        )
        parts = [p for p in parts if p.rows > 0]
        n = sum(p.rows for p in parts)
        t = cfg.training
        valid = validation_mask(n, fraction=t.validation_fraction, seed=t.seed, org=org)
        plans, at, first_row = [], 0, 0
        for p in parts:
            v = valid[at : at + p.rows]
            plans.append(PartitionPlan(org=org, source=spec.source, part=p, cfg=cfg, valid=v, first_row=first_row))
            at += p.rows
            first_row += p.rows - int(v.sum())
        cluster = None
        if client is None:
            client, cluster = connect(compute, org=org)
        log.info(
            "organisation %s: %d partitions on %s; Dask dashboard %s",
            org,
            len(plans),
            compute.dask,
            client.dashboard_link,
        )
        try:
            return PartitionedState(client, plans, org=org), cluster
        except BaseException:
            if cluster is not None:
                client.close()
                cluster.close()
            raise

    @staticmethod
    def stop(state: PartitionedState, cluster: Any) -> None:
        """Let a planned organisation's partitions go and stop the LocalCluster started for it (if any)."""
        state.close()
        if cluster is not None:
            state.client.close()
            cluster.close()

    @classmethod
    def from_partitions(
        cls,
        cfg: Any,
        org: str,
        state: PartitionedState,
        infos: list[dict[str, Any]],
        *,
        cluster: Any = None,
        enforce_policy: bool = True,
    ) -> ClusterParty:
        """The party over loaded partitions (``infos``: what each partition's load answered, in order)."""
        state.loaded(infos)
        return cls(
            org,
            state,
            infos,
            client=state.client,
            cluster=cluster,
            objective=cfg.objective,
            num_class=cfg.num_class,
            feature_names=list(cfg.features),
            categorical=[i for i, f in enumerate(cfg.features.values()) if f.type == "category"],
            policy=PartyPolicy.from_config(cfg, org) if enforce_policy else None,
        )

    @property
    def dashboard_link(self) -> str:
        """The Dask dashboard of the organisation's cluster."""
        return str(self.client.dashboard_link)

    def where(self) -> str:
        """The partitions, the scheduler and its dashboard."""
        where = f"{len(self.partitions_.plans)} partitions on Dask {self.client.scheduler.address}"
        return f"{where}, dashboard {self.dashboard_link}"

    def close(self) -> None:
        """Let the partitions go; stop the LocalCluster if this party started it."""
        self.stop(self.partitions_, self.cluster)
        self.cluster = None

    def begin_training(self, training_id: str) -> None:
        """A new training: the partitions back to their first stage (their rows kept), no keys, no noise."""
        super().begin_training(training_id)
        state = self.partitions_
        if state.stage_ != CREATED:
            state.reset()
        state._noise = None
        self._engine = state

    def engine_state(self) -> PartitionedState:  # type: ignore[override]
        return self.partitions_

    def _train_count(self) -> int:
        return self._n_train

    def _label_sums(self) -> np.ndarray:
        return self._label_sums_

    def _label_sum_vector(self) -> np.ndarray:
        return self._sum_vector  # the partitions' exact label sums, added: the single process's to the bit

    def _dp_label_part(self, label_range: Any) -> np.ndarray:
        """The partitions' parts of the DP label totals, added (made with the config's label range at load)."""
        if self._dp_label_part_ is None:
            raise self._refuse("label_totals", "its partitions were loaded without privacy.epsilon")
        return np.asarray(self._dp_label_part_, dtype=np.int64)

    def _cluster_only(self, name: str) -> PartyError:
        return self._refuse(
            name,
            "this organisation's rows are partitions on a Dask cluster; it trains with the histogram strategy only",
        )

    def train_local(self, params: dict[str, Any], num_boost_round: int) -> list:
        raise self._cluster_only("train_local")

    def add_trees(self, step: int, trees: list | None) -> None:
        if trees:
            raise self._cluster_only("add_trees")

    def local_baseline(self, params: dict[str, Any], num_boost_round: int) -> dict[str, Any]:
        """No local-only model: LightGBM would gather the rows in one process; the notice says so."""
        return {
            "metrics": {},
            "curve": {},
            "rows_train": self._n_train,
            "notice": (
                f"local-only baseline skipped: organisation {self.name} holds its rows on a Dask cluster "
                f"({len(self.partitions_.plans)} partitions) and trains with the histogram strategy only"
            ),
        }

    def _profile_rows(self) -> list[np.ndarray]:
        raise self._refuse("profile", "this organisation's rows are partitions on a Dask cluster; profile them there")
