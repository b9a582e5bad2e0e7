"""Mapping suggestions on real schema pairs (tests/data/suggest): the goals of ``fedmine schema suggest``.

At least 90 % of the expected renames found over all pairs, no wrong rename
(every proposed one is above the acceptance threshold), the label of every
pair, and each expected ``values``/``units``/``scale``/``missing`` entry. A
proposal applied as it stands harmonises the new organisation's rows with no
problem but the values it lists for a person to map.
"""

from __future__ import annotations

from functools import cache

import pytest
import yaml

from fedmine import connectors
from fedmine.config import config_from_dict
from fedmine.schema.harmonise import harmonise
from fedmine.schema.suggest import suggest_mapping
from tests.schema.suggest_pairs import PAIRS, PairResult, evaluate, load_pair, pair_names

NAMES = pair_names()


@cache
def result(name: str):
    return evaluate(name)


def test_there_are_enough_pairs():
    renames = sum(len(result(n)[0].expected) for n in NAMES)
    assert len(NAMES) >= 6 and renames >= 19


def test_most_renames_are_found_and_none_is_wrong():
    results: list[PairResult] = [result(n)[0] for n in NAMES]
    found = sum(len(r.found) for r in results)
    expected = sum(len(r.expected) for r in results)
    assert found / expected >= 0.9, {r.name: r.missed for r in results if r.missed}
    assert {r.name: r.wrong for r in results if r.wrong} == {}


@pytest.mark.parametrize("name", NAMES)
def test_the_label_is_proposed(name):
    r, s = result(name)
    label_columns = [src for src, dst in r.expected.items() if dst == r.label]
    assert label_columns, f"{name}: the expected mapping names no label column"
    assert [src for src, dst in s.rename.items() if dst == r.label] == label_columns


@pytest.mark.parametrize("name", NAMES)
def test_values_units_scale_and_missing_are_proposed(name):
    r, _ = result(name)
    assert r.missed_entries == []
    assert r.entries_found == r.entries_expected


@pytest.mark.parametrize("name", NAMES)
def test_the_proposal_harmonises_but_for_the_values_left_to_a_person(name):
    _, s = result(name)
    folder = PAIRS / name
    raw = yaml.safe_load((folder / "federation.yaml").read_text())
    org = s.org
    raw["organisations"][org] = yaml.safe_load(s.to_yaml())["organisations"][org]
    cfg = config_from_dict(raw, path=(folder / "federation.yaml").resolve())
    spec = cfg.organisations[org]
    frame = connectors.load(spec.source, spec.read, base_dir=cfg.base_dir, org=org)
    report = harmonise(frame, cfg, org, collect=True).report
    unresolved = {str(v) for vals in s.unresolved.values() for v in vals}
    marks = [f"category {v!r} (" for v in unresolved] + [f"category {v} (" for v in unresolved]
    left = [p for p in report["problems"] if not any(m in p for m in marks)]
    assert left == []
    for feature, entry in report["unknown_categories"].items():
        assert set(map(str, entry["examples"])) <= set(map(str, s.unresolved.get(feature, []))), feature


def test_codes_are_read_as_another_organisation_maps_them():
    _, s = result("credit_original")
    assert s.values["sex"] == {1: "male", 2: "female"} or s.values["sex"] == {2: "female", 1: "male"}
    assert s.missing["education"] == [0]  # taipei marks 0 missing
    assert "education" not in s.unresolved
    assert "#   SEX -> sex  1.00 (1.00, 1.00, 0.99); values by taipei's map" in s.to_yaml()


def test_codes_nobody_maps_get_a_frequency_hint_not_a_mapping():
    # the federation is kaohsiung alone, mapped as its proposal says (names, M/F): nobody maps the codes 1/2
    kaohsiung = yaml.safe_load(result("credit_taiwan")[1].to_yaml())["organisations"]["kaohsiung"]
    raw = yaml.safe_load((PAIRS / "credit_original" / "federation.yaml").read_text())
    raw["organisations"] = {
        "kaohsiung": {**kaohsiung, "source": "../credit_taiwan/kaohsiung.csv"},
        "original": raw["organisations"]["original"],
    }
    s = suggest_mapping(
        config_from_dict(raw, path=(PAIRS / "credit_original" / "federation.yaml").resolve()), "original"
    )
    assert s.rename["SEX"] == "sex" and "sex" not in s.values and set(s.unresolved["sex"]) == {"1", "2"}
    assert {code: hint[0] for code, hint in s.hints["sex"].items()} == {"1": "male", "2": "female"}
    assert "education" not in s.hints  # six codes against four categories: no guess
    assert "#   by frequency against the federation's (a guess to check): 2 -> female" in s.to_yaml()


def test_the_proposal_is_the_same_each_time():
    cfg, expected = load_pair("wholesale")
    assert suggest_mapping(cfg, expected["new"]).to_yaml() == result("wholesale")[1].to_yaml()
