"""The federated profile: totals from (masked) sums, own views, PSI flags, drift, the HTML report."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from fedmine.config import config_from_dict
from fedmine.schema.drift import drift
from fedmine.schema.profiler import profile_federation, write_report
from fedmine.schema.summary import grid_quantiles, psi

ORGS = ("bank", "insurer", "retailer")


def income_federation(
    tmp_path, *, mistake: str | None = "retailer", shift_age: float = 0.0, seed: int = 0, strategy: str = "bagging"
):
    """Three organisations with income and age; ``mistake`` reports income x1000."""
    rng = np.random.default_rng(seed)
    orgs = {}
    for i, org in enumerate(ORGS):
        n = 1500 + 250 * i
        income = np.round(np.exp(rng.normal(10.4, 0.45, n)), 2)
        if org == mistake:
            income = income * 1000
        age = np.clip(np.round(rng.normal(45 + shift_age, 12, n)), 18, 95)
        segment = rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2])
        frame = pd.DataFrame({"income": income, "age": age, "segment": segment, "y": rng.integers(0, 2, n)})
        frame.loc[rng.random(n) < 0.05, "income"] = np.nan
        path = tmp_path / f"{org}.csv"
        frame.to_csv(path, index=False)
        orgs[org] = {"source": str(path)}
    return config_from_dict(
        {
            "name": "income",
            "label": "y",
            "features": {
                "income": {"type": "float", "unit": "units"},
                "age": {"type": "int"},
                "segment": {"type": "category", "categories": ["a", "b", "c"]},
            },
            "organisations": orgs,
            "training": {"strategy": strategy},
            "tracking": {"uri": "sqlite:///" + str(tmp_path / "mlflow.db")},
        }
    )


def test_unit_mistake_is_flagged(tmp_path):
    profile = profile_federation(income_federation(tmp_path))
    top = profile.flags[0]
    assert (top["organisation"], top["feature"], top["most"]) == ("retailer", "income", True)
    assert "1e+03 times the others' (thousands -> units?)" in top["hint"]
    others = [f for f in profile.flags if f["organisation"] != "retailer"]
    assert all(f["feature"] == "income" and not f["most"] and f["psi"] < top["psi"] / 2 for f in others)
    assert not any(f["feature"] in ("age", "segment") for f in profile.flags)
    assert "income: retailer departs most" in profile.to_text()


def test_no_flag_without_the_mistake(tmp_path):
    profile = profile_federation(income_federation(tmp_path, mistake=None))
    assert profile.flags == []
    assert max(v["features"]["income"]["psi"] for v in profile.organisations.values()) < 0.05


def test_totals_are_the_sum_of_own_views_and_match_the_rows(tmp_path):
    cfg = income_federation(tmp_path, mistake=None)
    profile = profile_federation(cfg, secure=False)
    fed = profile.federation["features"]
    assert profile.federation["rows"] == 1500 + 1750 + 2000
    for name in ("income", "age", "segment"):
        assert fed[name]["count"] == sum(v["features"][name]["count"] for v in profile.organisations.values())
    pooled = pd.concat([pd.read_csv(cfg.organisations[o].source) for o in ORGS])
    assert fed["income"]["missing_rate"] == pytest.approx(pooled.income.isna().mean())
    assert fed["segment"]["categories"] == pooled.segment.value_counts().to_dict()
    q = np.quantile(pooled.income.dropna(), [0.25, 0.5, 0.75])
    got = [fed["income"]["quantiles"][k] for k in ("p25", "p50", "p75")]
    np.testing.assert_allclose(got, q, rtol=0.01)


def test_secure_aggregation_gives_the_same_totals(tmp_path):
    cfg = income_federation(tmp_path, strategy="histogram")
    assert cfg.secure_aggregation
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masked = profile_federation(cfg)
    plain = profile_federation(cfg, secure=False)
    assert masked.secure_aggregation and not plain.secure_aggregation
    assert json.dumps(masked.federation) == json.dumps(plain.federation)
    assert [f["organisation"] for f in masked.flags] == [f["organisation"] for f in plain.flags]


def test_under_dp_the_profile_runs_only_when_every_organisation_allows_it(tmp_path):
    from fedmine.errors import ConfigError

    cfg = income_federation(tmp_path, strategy="histogram")
    want = profile_federation(cfg).federation
    cfg.privacy.epsilon = 1.0
    with pytest.raises(ConfigError, match=r"^privacy.epsilon=1 covers the training only: fedmine profile releases"):
        profile_federation(cfg)
    cfg.privacy.outside_budget = ["profile"]
    assert json.dumps(profile_federation(cfg).federation) == json.dumps(want)


def test_drift_between_profiles(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    before = profile_federation(income_federation(tmp_path / "a", mistake=None, seed=1))
    after = profile_federation(income_federation(tmp_path / "b", mistake=None, seed=2, shift_age=12))
    d = drift(before.as_dict(), after.as_dict())
    assert set(d) == set(ORGS)
    for org in ORGS:
        assert d[org]["age"] > 0.25  # everyone is a decade older
        assert d[org]["income"] < 0.05
        assert d[org]["segment"] < 0.05


def test_report_html_png_json(tmp_path):
    profile = profile_federation(income_federation(tmp_path))
    html = write_report(profile, tmp_path / "report")
    text = html.read_text()
    assert "retailer (its own view)" in text and "federation (summed counts)" in text
    assert sorted(p.name for p in (tmp_path / "report").glob("*.png")) == ["age.png", "income.png", "segment.png"]
    assert json.loads((tmp_path / "report" / "profile.json").read_text())["flags"][0]["organisation"] == "retailer"


def test_psi_and_grid_quantiles():
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    assert psi([50, 50], [90, 10]) == pytest.approx(0.4 * np.log(5 / 9) * -1 + 0.4 * np.log(5), rel=1e-9)
    assert np.isnan(psi([0, 0], [1, 1]))
    grid = np.arange(1, 11, dtype=float)  # cells (0,1], (1,2], ..., lo = 0
    assert grid_quantiles(np.ones(10), grid, 0.0, [0.5, 0.05]) == pytest.approx([5.0, 0.5])
