"""What an organisation's party answers, decided by its own config, never by the coordinator.

This module owns :class:`PartyPolicy`: the limits a party enforces on every
call of the protocol table, built from the organisation's copy of the
federation config (:meth:`PartyPolicy.from_config`). The coordinator is
trusted for nothing the party can check:

- secure aggregation, when the config asks for it, comes first: no summed
  answer (histograms, grid counts, label or validation sums) leaves before the
  key exchange, and the peers must be exactly the config's organisations;
- differential-privacy noise comes from the party's own randomness (a seed
  sent by the coordinator is refused) and cannot be switched off when the
  config sets ``privacy.epsilon``; under it nothing leaves un-noised: label
  totals and statistics, grid counts, histograms and leaf sums carry the
  party's noise share, gradients are clipped to the config's bounds, and
  feature ranges, validation sums, metrics and row counts are refused;
- local LightGBM training uses the parameters of the config's ``training``
  section (an allow-list without sockets or files), with the config's rounds
  as a cap and a time limit;
- with ``privacy.organisation_metrics: own`` (the default under ``privacy.epsilon``) its own
  metrics, local-only baseline and row counts stay with it (row counts go to tree strategies,
  which need them for their weights);
- bins are set once per training; ranges are answered only for features
  whose range the schema does not declare; requests and answers are bounded.

``Party(policy=None)`` (engine tests, benchmarks) enforces the protocol's
stages only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Node ids one histograms request may name: a round's trees open at most
#: ``2 * num_leaves * (1 + lookahead)`` slots each; this leaves room for many classes.
MAX_NODES_PER_REQUEST = 4096

#: Largest answer a party builds (bytes): the wire's message limit, which the coordinator's client also applies.
MAX_ANSWER_BYTES = 256 * 1024 * 1024

#: Seconds a local LightGBM training may take before the party stops it.
TRAIN_SECONDS = 3600.0


@dataclass(frozen=True)
class PartyPolicy:
    """One organisation's limits (see the module docstring).

    Parameters
    ----------
    organisation : the party's own name.
    peers : every organisation of the federation, as the party's config lists them.
    secure_aggregation : summed answers only after the key exchange.
    epsilon : the config's DP budget (None: no DP).
    lightgbm_params : the ``lightgbm.train`` parameters of local training.
    local_rounds, rounds : caps on ``train_local`` and ``local_baseline`` rounds.
    min_parties : the fewest organisations secure aggregation may continue with (``privacy.min_parties``).
    declared : bool mask of features whose range the schema declares.
    shares_metrics : answers ``own_metrics`` and ``local_baseline`` (``privacy.organisation_metrics: shared``).
    shares_rows : answers ``row_counts`` (shared metrics, or a tree strategy).
    outside_budget : under epsilon, the commands it answers exactly anyway (``privacy.outside_budget``).
    label_range : ``(privacy.label_min, privacy.label_max)`` (DP: real labels are clipped to it), or None.
    clip_bounds : under epsilon, the largest gradient and hessian clips it accepts (``privacy.gradient_bound``,
        ``privacy.hessian_bound`` or the objective's own bounds), else None.
    """

    organisation: str
    peers: frozenset[str]
    secure_aggregation: bool
    epsilon: float | None
    lightgbm_params: dict[str, Any] = field(hash=False)
    local_rounds: int
    rounds: int
    min_parties: int
    declared: np.ndarray = field(hash=False, compare=False)
    shares_metrics: bool = True
    shares_rows: bool = True
    outside_budget: frozenset[str] = frozenset()
    label_range: tuple[float, float] | None = None
    clip_bounds: tuple[float, float] | None = None
    max_nodes_per_request: int = MAX_NODES_PER_REQUEST
    max_answer_bytes: int = MAX_ANSWER_BYTES
    train_seconds: float = TRAIN_SECONDS

    @classmethod
    def from_config(cls, cfg: Any, org: str) -> PartyPolicy:
        """The policy of organisation ``org`` from its copy of the federation config."""
        declared = np.array(
            [
                spec.type in ("category", "bool") or (spec.min is not None and spec.max is not None)
                for spec in cfg.features.values()
            ],
            dtype=bool,
        )
        t = cfg.training
        clips = None
        if cfg.privacy.epsilon is not None:
            from fedmine.gbdt.objectives import make_objective
            from fedmine.privacy.noise import DPConfig, dp_bounds

            obj = make_objective(cfg.objective, num_class=cfg.num_class)
            clips = dp_bounds(
                DPConfig(grad_bound=cfg.privacy.gradient_bound, hess_bound=cfg.privacy.hessian_bound), obj
            )
        return cls(
            organisation=org,
            peers=frozenset(cfg.organisations),
            secure_aggregation=bool(cfg.secure_aggregation),
            epsilon=cfg.privacy.epsilon,
            lightgbm_params=t.lightgbm_params(cfg.objective, cfg.num_class),
            local_rounds=int(t.local_rounds),
            rounds=int(t.rounds),
            min_parties=int(cfg.privacy.min_parties),
            declared=declared,
            shares_metrics=cfg.privacy.shares_organisation_metrics,
            shares_rows=cfg.privacy.shares_organisation_metrics or t.strategy != "histogram",
            outside_budget=frozenset(cfg.privacy.outside_budget),
            label_range=cfg.privacy.label_range,
            clip_bounds=clips,
        )
