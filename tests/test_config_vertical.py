"""partition: vertical: the config's keys and its one-line errors."""

from __future__ import annotations

import pytest
import yaml

from fedmine.config import load_config
from fedmine.demo import vertical_demo_config
from fedmine.errors import ConfigError


@pytest.fixture
def write(tmp_path):
    def go(change=None):
        raw = vertical_demo_config("sqlite:///x.db")
        if change:
            change(raw)
        path = tmp_path / "federation.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return go


def test_the_vertical_demo_config_loads(write):
    cfg = load_config(write())
    assert cfg.partition == "vertical" and cfg.training.strategy == "histogram"
    assert cfg.label_holder == "bank" and cfg.vertical.min_shared_rows == 100 and cfg.vertical.key_bits == 2048
    assert cfg.feature_holder()["plan"] == "telecom"
    assert cfg.organisations["telecom"].id.column == "msisdn_owner" and cfg.organisations["telecom"].id.case == "lower"
    assert not cfg.secure_aggregation
    assert list(cfg.organisation_view("retailer").features) == [
        "monthly_spend",
        "online_share",
        "basket",
        "return_rate",
    ]


def _org(name, key, value):
    def change(raw):
        if value is None:
            raw["organisations"][name].pop(key)
        else:
            raw["organisations"][name][key] = value

    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (_org("retailer", "id", None), r"organisations.retailer.id: required with partition: vertical"),
        (_org("telecom", "features", None), r"organisations.telecom.features: required with partition: vertical"),
        (
            _org("bank", "holds_label", None),
            r"no organisation holds the label 'default'; set holds_label: true on exactly one",
        ),
        (
            _org("telecom", "holds_label", True),
            r"organisations bank and telecom both set holds_label: true; exactly one organisation holds the label",
        ),
        (
            _org("telecom", "features", ["data_gb", "late_bills", "plan", "tenure_months", "balance"]),
            r"features.balance: claimed by organisations bank and telecom; every feature belongs to exactly one",
        ),
        (
            _org("telecom", "features", ["data_gb", "late_bills", "plan"]),
            r"features.tenure_months: held by no organisation",
        ),
        (
            _org("telecom", "features", ["data_gb", "minutes"]),
            r"organisations.telecom.features: 'minutes' is not a canonical",
        ),
        (
            _org("bank", "id", {"column": "customer_id", "case": "title"}),
            r"organisations.bank.id.case: 'title' is not allowed",
        ),
        (
            lambda raw: raw["training"].update(strategy="bagging"),
            r"training.strategy: 'bagging' is not allowed with partition: vertical",
        ),
        (
            lambda raw: raw["vertical"].update(min_shared_rows=0),
            r"vertical.min_shared_rows: input should be greater than or equal to 1",
        ),
        (
            lambda raw: raw["vertical"].update(key_bits=1024),
            r"vertical.key_bits: input should be greater than or equal to 2048",
        ),
        (
            lambda raw: raw.update(partition="diagonal"),
            r"partition: 'diagonal' is not allowed; allowed: horizontal, vertical",
        ),
        (lambda raw: raw.update(partition="horizontal"), r"organisations.bank.id: only with partition: vertical"),
    ],
)
def test_bad_vertical_config_is_one_line_naming_the_key(write, change, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(write(change))
    assert "\n" not in str(info.value)


def test_every_vertical_key_is_documented():
    from pathlib import Path

    from fedmine.config import IdSpec, VerticalSpec

    text = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    section = text[text.index("## vertical") :]
    for name in VerticalSpec.model_fields:
        assert f"`{name}`" in section, name
    organisations = text[text.index("## organisations.NAME") : text.index("## profile")]
    for name in ("id", "features", "holds_label", *IdSpec.model_fields):
        assert f"`{name}`" in organisations, name
    assert "`partition`" in text[: text.index("## features.NAME")]
