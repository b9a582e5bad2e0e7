"""The schema check on two releases of one bank's data mapped onto one canonical schema."""

from __future__ import annotations

import json

from fedmine.config import config_from_dict
from fedmine.schema.check import CHECK_JSON, CHECK_MARKDOWN, CheckReport, check_federation, log_check
from tests.schema.conftest import bank_raw

EDUCATION_2014 = {
    "basic.4y": "primary",
    "basic.6y": "primary",
    "basic.9y": "secondary",
    "high.school": "secondary",
    "professional.course": "secondary",
    "university.degree": "tertiary",
}


def test_check_reports_columns_of_one_release_and_education_codes():
    report = check_federation(config_from_dict(bank_raw()))
    bank, additional = report.organisations["bank"], report.organisations["bank_additional"]
    assert bank["rows"] == 4521 and additional["rows"] == 4119
    # present in only one release
    assert bank["unmapped_columns"] == ["day"]
    assert additional["unmapped_columns"] == [
        "day_of_week",
        "emp.var.rate",
        "cons.price.idx",
        "cons.conf.idx",
        "euribor3m",
        "nr.employed",
    ]
    assert additional["absent_features"] == ["balance"] and bank["absent_features"] == []
    # the 8-level education codes are unknown to the 3-level vocabulary
    unknown = additional["unknown_categories"]["education"]
    assert unknown["count"] == 3952 and unknown["policy"] == "error"
    assert set(unknown["examples"]) <= set(EDUCATION_2014) and "university.degree" in unknown["examples"]
    assert "education" not in bank["unknown_categories"]
    assert report.violations("bank") == []
    assert report.violations("bank_additional") == [
        "organisation bank_additional: column 'education' has unknown category 'basic.9y' (3952 rows); "
        "allowed: primary, secondary, tertiary"
    ]
    assert not report.ok
    assert bank["missing_rate"]["days_since_previous"] == 3705 / 4521  # -1: never contacted
    text = report.to_text()
    assert "unmapped source columns: day_of_week, emp.var.rate" in text
    assert "3952 (university.degree, high.school, basic.9y, professional.course, basic.4y) -> error" in text
    assert text.endswith("schema check: violations found")


def test_value_map_and_policy_fix_the_violation():
    raw = bank_raw()
    raw["organisations"]["bank_additional"]["values"] = {"education": EDUCATION_2014}
    raw["organisations"]["bank_additional"]["unknown_categories"] = {"education": "missing"}
    report = check_federation(config_from_dict(raw))
    assert report.ok
    assert report.organisations["bank_additional"]["unknown_categories"]["education"] == {
        "count": 1,
        "examples": ["illiterate"],
        "policy": "missing",
    }


def test_out_of_range_is_a_violation():
    raw = bank_raw()
    raw["features"]["age"]["max"] = 80
    report = check_federation(config_from_dict(raw), ["bank"])
    assert report.organisations["bank"]["out_of_range"]["age"] == 8
    assert report.violations("bank") == ["organisation bank: column 'age' has 8 values outside [18.0, 80.0]"]


def test_unreadable_source_is_reported():
    raw = bank_raw()
    raw["organisations"]["bank"]["source"] = "nowhere.csv"
    report = check_federation(config_from_dict(raw))
    assert report.violations("bank")[0].startswith("organisation 'bank': source 'nowhere.csv'")
    assert "cannot prepare" in report.to_text()


class _Recorder:
    def __init__(self):
        self.texts = {}

    def log_text(self, text, path):
        self.texts[path] = text


def test_report_as_artifacts_of_a_training_run():
    cfg = config_from_dict(bank_raw())
    reports = {org: r for org, r in check_federation(cfg).organisations.items()}
    tracker = _Recorder()
    check = log_check(tracker, cfg, reports)
    assert isinstance(check, CheckReport)
    data = json.loads(tracker.texts[CHECK_JSON])
    assert data["ok"] is False
    assert data["organisations"]["bank"]["unmapped_columns"] == ["day"]
    md = tracker.texts[CHECK_MARKDOWN]
    assert "## bank_additional" in md and "| education | 100.0% |" in md
    assert "Unmapped source columns: day_of_week" in md
