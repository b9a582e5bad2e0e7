"""Privacy receipt: flat, loggable, and consistent with the accountant."""

from __future__ import annotations

import json

import pytest

from fedmine.privacy.accountant import PrivacyAccountant, Sensitivity
from fedmine.privacy.receipt import PrivacyReceipt


def test_receipt_without_dp():
    d = PrivacyReceipt(secure_aggregation=True, n_parties=3).as_dict()
    assert d == {
        "secure_aggregation": True,
        "n_parties": 3,
        "mechanism": "none",
        "epsilon_per_round": None,
        "epsilon_total": None,
        "delta": None,
        "releases": 0,
        "covers": "none",
        "disclosed": d["disclosed"],
    }


def test_receipt_lists_every_field_the_protocol_table_marks_disclosed():
    from fedmine import protocol

    listed = set(PrivacyReceipt(secure_aggregation=True, n_parties=3).as_dict()["disclosed"].split(", "))
    assert {name.split(".")[0] for name in listed} == protocol.disclosed()
    assert {"describe.features", "own_metrics.metrics", "row_counts.label_sums", "begin_round.max_hess"} <= listed
    assert not {name.split(".")[0] for name in listed} & protocol.summed()
    only = PrivacyReceipt(secure_aggregation=True, n_parties=3, disclosed=("describe.features",)).as_dict()
    assert only["disclosed"] == "describe.features"


def test_receipt_from_accountant_is_flat_json_and_matches_the_accountant():
    sens = Sensitivity(("grad", "hess", "count"), (5, 5, 5), (64, 16, 1))
    acc = PrivacyAccountant(1e-6, sensitivity=sens)
    for _ in range(4):
        acc.spend(3.0, 6)
    receipt = PrivacyReceipt.from_accountant(
        acc, secure_aggregation=True, n_parties=4, noise_multiplier=3.0, releases_per_round=6
    )
    d = receipt.as_dict()
    json.dumps(d)
    assert d["mechanism"] == "skellam" and d["releases"] == 24 and d["delta"] == 1e-6
    assert d["epsilon_total"] == acc.epsilon()
    assert d["epsilon_per_round"] == acc.epsilon_of(3.0, 6)
    assert d["epsilon_per_round"] < d["epsilon_total"] < 4 * d["epsilon_per_round"]  # composition beats adding
    assert d["param.noise_multiplier"] == 3.0 and d["param.accounting"] == "rdp"
    assert d["param.variance_count"] == pytest.approx(9.0 * 15)
    assert d["covers"] == "histogram releases"
    assert all("." not in k or k.startswith("param.") for k in d)
    assert all(v is None or isinstance(v, (bool, int, float, str)) for v in d.values())


def test_receipt_parameters_are_made_loggable():
    d = PrivacyReceipt(
        secure_aggregation=False,
        n_parties=2,
        mechanism="gaussian",
        parameters={"sigma": float("inf"), "bounds": (1, 2), "name": "x"},
    ).as_dict()
    assert d["param.sigma"] is None and d["param.bounds"] == [1.0, 2.0] and d["param.name"] == "x"
