"""Privacy accounting: the epsilon spent by noisy histogram releases.

This module owns the arithmetic from "these releases, with this much noise" to
"(epsilon, delta)". It composes releases with Rényi differential privacy
(Mironov 2017) and converts to (epsilon, delta) with Google's ``dp_accounting``
package, so the numbers are the ones that package gives.

Mechanisms
----------
``"skellam"`` (default, the noise :mod:`fedmine.privacy.dp` adds)
    The exact RDP bound of the Skellam mechanism (Agarwal, Kairouz, Liu 2021,
    Theorem 3.5 / Corollary 3.6). For an integer shift ``d`` of one coordinate
    whose noise is symmetric Skellam with variance ``mu``, and integer order
    ``alpha > 1``::

        eps(alpha) <= alpha d**2 / (2 mu)
                      + min( ((2 alpha - 1) d**2 + 6 |d|) / (4 mu**2),  3 |d| / (2 mu) )

    The first term is the Gaussian mechanism's; the ``min`` is the price of
    integer noise, negligible once ``mu`` is large. Summed over the coordinates
    a row can change (independent noise: Rényi divergences add), with the
    ``min`` taken of the sums as in the paper. ``dp_accounting`` has no Skellam
    event, so this curve is computed here on integer orders
    (:data:`SKELLAM_ORDERS`) and converted by
    ``dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon``, the function
    its ``RdpAccountant`` uses.
``"gaussian"``
    ``dp_accounting``'s ``GaussianDpEvent`` (RDP or PLD accounting): the
    continuous Gaussian with the same noise multiplier. For Skellam noise it is
    an approximation from below that ignores the integer surcharge; use it only
    to compare, or when the surcharge is known to be negligible.

Noise multiplier
----------------
One number, ``z``, sets the noise of every field of a release: coordinate
``j`` of field ``f`` gets variance ``z**2 * bound_f**2 * m`` where ``m`` is the
number of coordinates one row can change (:meth:`Sensitivity.variances`). Then
``sum_j d_j**2 / var_j <= 1 / z**2``: the release is at least as private as one
Gaussian mechanism with noise multiplier ``z``, whatever the fields' units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import dp_accounting
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant

from fedmine.errors import ConfigError

SKELLAM, GAUSSIAN = "skellam", "gaussian"
MECHANISMS = (SKELLAM, GAUSSIAN)
RDP, PLD = "rdp", "pld"
ACCOUNTINGS = (RDP, PLD)

#: Integer Rényi orders for the Skellam bound (it is stated for integer alpha > 1).
SKELLAM_ORDERS = tuple(range(2, 64)) + (64, 80, 96, 112, 128, 160, 192, 224, 256, 384, 512, 768, 1024)


def check_delta(delta) -> float:
    """``privacy.delta`` as a float in (0, 1)."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0.0 < float(delta) < 1.0:
        raise ConfigError(f"privacy.delta must be a number in (0, 1), got {delta!r}")
    return float(delta)


def check_epsilon(epsilon) -> float:
    """``privacy.epsilon`` as a positive finite float."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0.0 < float(epsilon) < math.inf:
        raise ConfigError(f"privacy.epsilon must be a positive finite number, got {epsilon!r}")
    return float(epsilon)


def check_noise_multiplier(noise_multiplier) -> float:
    if (
        isinstance(noise_multiplier, bool)
        or not isinstance(noise_multiplier, (int, float, np.floating))
        or not 0.0 < float(noise_multiplier) < math.inf
    ):
        raise ValueError(f"noise multiplier must be a positive finite number, got {noise_multiplier!r}")
    return float(noise_multiplier)


def check_count(count) -> int:
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"release count must be an integer >= 0, got {count!r}")
    return int(count)


@dataclass(frozen=True)
class Sensitivity:
    """What adding or removing one row can change in one release, field by field.

    Attributes
    ----------
    fields : tuple of str
        Field names, in the order of the release's last axis (e.g. grad, hess, count).
    coords : tuple of int
        Per field, how many coordinates one row can change (one bin per feature,
        times the node histograms of the release that can hold the row).
    bounds : tuple of int
        Per field, the largest change of one such coordinate, in the integer
        (fixed-point) units that are released.
    """

    fields: tuple
    coords: tuple
    bounds: tuple
    shares: tuple | None = None

    def __post_init__(self):
        n = len(self.fields)
        if n == 0 or len(self.coords) != n or len(self.bounds) != n:
            raise ValueError(
                f"sensitivity needs one coords and one bound per field, got fields={self.fields!r} "
                f"coords={self.coords!r} bounds={self.bounds!r}"
            )
        for what, values in (("coords", self.coords), ("bounds", self.bounds)):
            for v in values:
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                    raise ValueError(f"sensitivity {what} must be integers >= 1, got {values!r}")
        if self.shares is not None:
            shares = tuple(float(x) for x in self.shares)
            if len(shares) != n or not all(x > 0 for x in shares) or abs(sum(shares) - 1.0) > 1e-9:
                raise ValueError(
                    f"sensitivity shares must be one positive number per field summing to 1, got {self.shares!r}"
                )
            object.__setattr__(self, "shares", shares)
        object.__setattr__(self, "fields", tuple(str(f) for f in self.fields))
        object.__setattr__(self, "coords", tuple(int(c) for c in self.coords))
        object.__setattr__(self, "bounds", tuple(int(b) for b in self.bounds))

    @property
    def n_coords(self) -> int:
        """``m``: coordinates one row can change, over all fields."""
        return sum(self.coords)

    @property
    def l1(self) -> int:
        """L1 sensitivity, integer units."""
        return sum(c * b for c, b in zip(self.coords, self.bounds))

    @property
    def l2(self) -> float:
        """L2 sensitivity, integer units."""
        return math.sqrt(sum(c * b * b for c, b in zip(self.coords, self.bounds)))

    def variances(self, noise_multiplier: float) -> np.ndarray:
        """Noise variance of one coordinate of each field: ``z**2 * bound**2 * c / share``.

        A field's ``share`` is its part of the release's privacy loss
        (``shares``; default ``c / m``, every coordinate alike, which gives
        ``z**2 * bound**2 * m``). Either way ``sum_f c_f b_f**2 / var_f = 1 / z**2``.

        Returns
        -------
        variances : ndarray of shape (n_fields,), float64
            Of the noise in the *sum* over parties.
        """
        z = check_noise_multiplier(noise_multiplier)
        b = np.asarray(self.bounds, dtype=np.float64)
        if self.shares is None:
            return z * z * b * b * float(self.n_coords)
        c = np.asarray(self.coords, dtype=np.float64)
        return z * z * b * b * c / np.asarray(self.shares, dtype=np.float64)

    def as_dict(self) -> dict:
        out = {"fields": list(self.fields), "coords": list(self.coords), "bounds": list(self.bounds)}
        if self.shares is not None:
            out["shares"] = list(self.shares)
        return out


def skellam_rdp(
    noise_multiplier: float, sensitivity: Sensitivity, orders: Sequence[int] = SKELLAM_ORDERS
) -> np.ndarray:
    """RDP curve of one Skellam release (Agarwal, Kairouz, Liu 2021, Corollary 3.6).

    Parameters
    ----------
    noise_multiplier : float
        ``z``; field ``f`` has variance ``mu_f`` from :meth:`Sensitivity.variances`.
    sensitivity : Sensitivity
    orders : sequence of int > 1

    Returns
    -------
    rdp : ndarray of shape (len(orders),), float64
        ``sum_f c_f alpha b_f**2 / (2 mu_f)
        + min(sum_f c_f ((2 alpha - 1) b_f**2 + 6 b_f) / (4 mu_f**2), sum_f 3 c_f b_f / (2 mu_f))``.
    """
    a = np.asarray(orders, dtype=np.float64)
    if a.ndim != 1 or np.any(a <= 1) or np.any(a != np.round(a)):
        raise ValueError(f"Skellam RDP orders must be integers > 1, got {list(orders)!r}")
    mu = sensitivity.variances(noise_multiplier)
    c = np.asarray(sensitivity.coords, dtype=np.float64)
    b = np.asarray(sensitivity.bounds, dtype=np.float64)
    gauss = a * np.sum(c * b * b / (2.0 * mu))
    surcharge_1 = np.sum(c[None, :] * ((2.0 * a[:, None] - 1.0) * b * b + 6.0 * b) / (4.0 * mu * mu), axis=1)
    surcharge_2 = np.sum(3.0 * c * b / (2.0 * mu))
    return gauss + np.minimum(surcharge_1, surcharge_2)


class PrivacyAccountant:
    """Epsilon spent so far by a training's noisy releases, at a fixed delta.

    Parameters
    ----------
    delta : float in (0, 1)
    mechanism : {"skellam", "gaussian"}
        How one release is accounted (see the module docstring).
    sensitivity : Sensitivity, optional
        Required for ``"skellam"`` (its integer surcharge depends on it);
        ignored by ``"gaussian"``.
    accounting : {"rdp", "pld"}
        ``"pld"`` (privacy loss distributions, tighter) only for ``"gaussian"``.

    Attributes
    ----------
    releases_ : int
        Releases spent so far.
    ledger_ : list of (float, int, Sensitivity or None)
        ``(noise_multiplier, count, sensitivity)`` in order (None: the accountant's
        own sensitivity), runs of the same multiplier and sensitivity merged.
    """

    def __init__(
        self, delta: float, *, mechanism: str = SKELLAM, sensitivity: Sensitivity | None = None, accounting: str = RDP
    ):
        self.delta = delta
        self.mechanism = mechanism
        self.sensitivity = sensitivity
        self.accounting = accounting
        check_delta(delta)
        if mechanism not in MECHANISMS:
            raise ConfigError(f"privacy.mechanism must be one of {list(MECHANISMS)}, got {mechanism!r}")
        if accounting not in ACCOUNTINGS:
            raise ConfigError(f"privacy.accounting must be one of {list(ACCOUNTINGS)}, got {accounting!r}")
        if mechanism == SKELLAM:
            if accounting != RDP:
                raise ConfigError(
                    f"privacy.accounting {accounting!r} is not available for the skellam mechanism, use 'rdp'"
                )
            if not isinstance(sensitivity, Sensitivity):
                raise ValueError(f"the skellam mechanism needs a Sensitivity, got {sensitivity!r}")
        self.releases_ = 0
        self.ledger_: list = []

    def __repr__(self) -> str:
        return (
            f"PrivacyAccountant(delta={self.delta!r}, mechanism={self.mechanism!r}, "
            f"accounting={self.accounting!r}, releases_={self.releases_})"
        )

    # -- the one place that calls dp_accounting ---------------------------
    def _epsilon_of_ledger(self, ledger: Sequence[tuple]) -> float:
        ledger = [entry for entry in ledger if entry[1] > 0]
        if not ledger:
            return 0.0
        delta = float(self.delta)
        if self.mechanism == SKELLAM:
            rdp = np.zeros(len(SKELLAM_ORDERS))
            for z, count, sens in ledger:
                sensitivity = sens if sens is not None else self.sensitivity
                if sensitivity is None:
                    raise ValueError("the skellam mechanism needs a Sensitivity, got None")
                rdp += count * skellam_rdp(z, sensitivity, SKELLAM_ORDERS)
            return float(rdp_privacy_accountant.compute_epsilon(SKELLAM_ORDERS, rdp, delta)[0])
        event = dp_accounting.ComposedDpEvent(
            [dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), c) for z, c, _ in ledger]
        )
        acc = dp_accounting.rdp.RdpAccountant() if self.accounting == RDP else dp_accounting.pld.PLDAccountant()
        acc.compose(event)
        return float(acc.get_epsilon(delta))

    @staticmethod
    def _extend(ledger: Sequence[tuple], noise_multiplier: float, count: int, sensitivity=None) -> list:
        out = list(ledger)
        if count == 0:
            return out
        if out and out[-1][0] == noise_multiplier and out[-1][2] == sensitivity:
            out[-1] = (noise_multiplier, out[-1][1] + count, sensitivity)
        else:
            out.append((noise_multiplier, count, sensitivity))
        return out

    # -- public -------------------------------------------------------------
    def spend(self, noise_multiplier: float, count: int = 1, *, sensitivity: Sensitivity | None = None) -> None:
        """Record ``count`` releases, each with noise multiplier ``noise_multiplier``.

        ``sensitivity``: of these releases, when it is not the accountant's own
        (e.g. the noisy bin counts and label totals of a training beside its
        leaf sums).
        """
        z, count = check_noise_multiplier(noise_multiplier), check_count(count)
        self.ledger_ = self._extend(self.ledger_, z, count, sensitivity)
        self.releases_ += count

    def epsilon(self) -> float:
        """Epsilon at :attr:`delta` of every release spent so far (0.0 before any)."""
        return self._epsilon_of_ledger(self.ledger_)

    def epsilon_of(self, noise_multiplier: float, count: int = 1, *, sensitivity: Sensitivity | None = None) -> float:
        """Epsilon of ``count`` such releases alone (e.g. one round's), at :attr:`delta`."""
        z, count = check_noise_multiplier(noise_multiplier), check_count(count)
        return self._epsilon_of_ledger([(z, count, sensitivity)])

    def epsilon_of_ledger(self, ledger: Sequence[tuple]) -> float:
        """Epsilon of a ledger of ``(noise_multiplier, count, sensitivity or None)`` alone (calibration)."""
        return self._epsilon_of_ledger([(check_noise_multiplier(z), check_count(c), s) for z, c, s in ledger])

    def would_exceed(self, budget: float, noise_multiplier: float, count: int = 1) -> bool:
        """Whether spending ``count`` more releases would take epsilon above ``budget``.

        Training calls it before each round and stops cleanly when it is True;
        spending exactly up to the budget is allowed.
        """
        budget = check_epsilon(budget)
        z, count = check_noise_multiplier(noise_multiplier), check_count(count)
        return self._epsilon_of_ledger(self._extend(self.ledger_, z, count)) > budget

    def state(self) -> dict:
        """The ledger as JSON-able data (a checkpoint: a resumed training continues the same accountant)."""
        return {
            "releases": self.releases_,
            "ledger": [[z, c, None if s is None else s.as_dict()] for z, c, s in self.ledger_],
        }

    def restore(self, state: dict) -> None:
        """Continue from :meth:`state`: the releases spent before a resume stay spent."""
        self.ledger_ = [
            (float(z), int(c), None if s is None else Sensitivity(**{k: tuple(v) for k, v in s.items()}))
            for z, c, s in state["ledger"]
        ]
        self.releases_ = int(state["releases"])
