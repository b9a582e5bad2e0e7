"""Privacy receipt: what protected a training, in numbers that can be logged.

This module owns the record of a training's privacy settings and spend. It is
plain data; tracking code logs :meth:`PrivacyReceipt.as_dict` (flat keys,
JSON-able values) and never needs to know how the numbers were computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

#: What the epsilon covers; anything else a training sends is not accounted.
COVERS_HISTOGRAMS = "histogram releases"
NO_DP = "none"

#: What a DP training's receipt says besides its releases: what the coordinator learns outside them.
OUTSIDE_EPSILON = (
    "validation sums: not released (each organisation logs its own metrics); disclosed, no statistic "
    "of the rows: feature names, public keys, the clip bounds and a digest of the rows (describe.fingerprint)"
)


def disclosed_calls() -> list[str]:
    """The calls whose answers each organisation discloses to the coordinator, by the protocol table."""
    from fedmine import protocol

    return sorted(protocol.disclosed())


def disclosed_fields(calls=None) -> list[str]:
    """``call.field`` for every field a disclosed answer reveals (the table's ``discloses``).

    Parameters
    ----------
    calls : iterable of str, optional
        The calls a training made (its links record them); default: every call of the table.
    """
    from fedmine import protocol

    names = protocol.disclosed() if calls is None else protocol.disclosed() & set(calls)
    return sorted(f"{name}.{f}" for name in names for f in protocol.call(name).discloses or ("answer",))


@dataclass(frozen=True)
class PrivacyReceipt:
    """Privacy of one training.

    Attributes
    ----------
    secure_aggregation : bool
        Whether parties' arrays were masked (the coordinator saw sums only).
    n_parties : int
    mechanism : str
        ``"skellam"``, ``"gaussian"`` or ``"none"`` (no differential privacy).
    parameters : dict
        The mechanism's parameters, e.g. ``noise_multiplier``, per-field
        ``variance_*``, ``sensitivity_l2``; flattened into ``as_dict`` as
        ``param.<name>``.
    epsilon_per_round : float or None
        Epsilon of one round's releases alone, at ``delta``.
    epsilon_total : float or None
        Epsilon of every release of the training, at ``delta`` (composition,
        not ``rounds * epsilon_per_round``).
    delta : float or None
    releases : int
        Noisy releases accounted.
    covers : str
        What the epsilon covers.
    disclosed : tuple of str or None
        ``call.field`` of every disclosed answer the training received
        (:func:`disclosed_fields`); None: every one the table has.
    """

    secure_aggregation: bool
    n_parties: int
    mechanism: str = NO_DP
    parameters: dict = field(default_factory=dict)
    epsilon_per_round: float | None = None
    epsilon_total: float | None = None
    delta: float | None = None
    releases: int = 0
    covers: str = COVERS_HISTOGRAMS
    disclosed: tuple | None = None

    def as_dict(self) -> dict:
        """Flat dict of str keys to bool, int, float, str or None, for MLflow params and metrics."""
        out = {
            "secure_aggregation": bool(self.secure_aggregation),
            "n_parties": int(self.n_parties),
            "mechanism": str(self.mechanism),
            "epsilon_per_round": _number(self.epsilon_per_round),
            "epsilon_total": _number(self.epsilon_total),
            "delta": _number(self.delta),
            "releases": int(self.releases),
            "covers": self.covers if self.mechanism != NO_DP else NO_DP,
            "disclosed": ", ".join(disclosed_fields() if self.disclosed is None else self.disclosed),
        }
        for key in sorted(self.parameters):
            value = self.parameters[key]
            if isinstance(value, (bool, int, str)) or value is None:
                out[f"param.{key}"] = value
            elif isinstance(value, (list, tuple, np.ndarray)):
                out[f"param.{key}"] = [_number(v) for v in value]
            else:
                out[f"param.{key}"] = _number(value)
        return out

    @classmethod
    def from_accountant(
        cls, accountant, *, secure_aggregation: bool, n_parties: int, noise_multiplier: float, releases_per_round: int
    ) -> PrivacyReceipt:
        """Receipt of a training whose releases all used ``noise_multiplier``.

        Parameters
        ----------
        accountant : PrivacyAccountant
            After the training's releases were spent.
        secure_aggregation : bool
        n_parties : int
        noise_multiplier : float
        releases_per_round : int
            Releases of one round, for ``epsilon_per_round``.
        """
        params = {"noise_multiplier": float(noise_multiplier), "accounting": accountant.accounting}
        sens = accountant.sensitivity
        if sens is not None:
            params["sensitivity_l1"] = int(sens.l1)
            params["sensitivity_l2"] = float(sens.l2)
            for name, var in zip(sens.fields, sens.variances(noise_multiplier)):
                params[f"variance_{name}"] = float(var)
        return cls(
            secure_aggregation=secure_aggregation,
            n_parties=n_parties,
            mechanism=accountant.mechanism,
            parameters=params,
            epsilon_per_round=accountant.epsilon_of(noise_multiplier, releases_per_round),
            epsilon_total=accountant.epsilon(),
            delta=float(accountant.delta),
            releases=accountant.releases_,
        )

    @classmethod
    def from_budget(
        cls, budget, accountant, *, secure_aggregation: bool, n_parties: int, releases_per_round: int
    ) -> PrivacyReceipt:
        """Receipt of a DP training planned by a :class:`~fedmine.privacy.budget.Budget`: every kind of release.

        Per kind (read from the accountant's ledger, so they add up to its
        releases): ``release.<kind>.count``, ``noise_multiplier``,
        ``budget_share`` (its part of the privacy loss, Gaussian RDP: a release
        at ``z`` costs ``1 / z**2``) and ``epsilon_alone``; ``covers`` names
        every kind with its count and share, then what the coordinator learns
        outside them (:data:`OUTSIDE_EPSILON`).
        """
        receipt = cls.from_accountant(
            accountant,
            secure_aggregation=secure_aggregation,
            n_parties=n_parties,
            noise_multiplier=budget.noise_multiplier,
            releases_per_round=releases_per_round,
        )
        counts = budget.counts(accountant.ledger_)
        params = dict(receipt.parameters, dp_method=budget.method)
        params.update({f"default.{k}": v for k, v in budget.dp_defaults.items()})
        cost = {r.kind: counts[r.kind] / budget.noise(r.kind) ** 2 for r in budget.releases}
        total = sum(cost.values()) or 1.0
        for r in budget.releases:
            z, c = budget.noise(r.kind), counts[r.kind]
            params[f"release.{r.kind}.count"] = int(c)
            params[f"release.{r.kind}.noise_multiplier"] = float(z)
            params[f"release.{r.kind}.budget_share"] = cost[r.kind] / total
            params[f"release.{r.kind}.epsilon_alone"] = (
                accountant.epsilon_of(z, c, sensitivity=r.sensitivity) if c else 0.0
            )
        kinds = ", ".join(f"{r.kind} ({counts[r.kind]}, {cost[r.kind] / total:.1%})" for r in budget.releases)
        covers = f"every release of the rows to the coordinator, noised: {kinds}; {OUTSIDE_EPSILON}"
        return replace(receipt, parameters=params, covers=covers)


def _number(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
