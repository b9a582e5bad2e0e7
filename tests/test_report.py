"""The gain table and the report say why an organisation's figures are undefined or its local model constant."""

from __future__ import annotations

import json

import numpy as np

from fedmine import report
from fedmine.config import config_from_dict
from fedmine.coordinator.training import Coordinator
from fedmine.party.organisation import Party, TrainValidRows


def rows(n_train, n_valid, seed, *, train_label=None, valid_label=None):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_train + n_valid, 3))
    y = (rng.random(n_train + n_valid) < 1 / (1 + np.exp(-2 * X[:, 0]))).astype(float)
    y[:2] = 0, 1  # both classes in both parts unless told otherwise
    if n_valid:
        y[n_train : n_train + 2] = 0, 1
    if train_label is not None:
        y[:n_train] = train_label
    if valid_label is not None:
        y[n_train:] = valid_label
    return TrainValidRows(X[:n_train], y[:n_train], X[n_train:], y[n_train:])


def trained(splits: dict[str, TrainValidRows], **training):
    cfg = config_from_dict(
        {
            "name": "t",
            "label": "y",
            "features": {"a": {}, "b": {}, "c": {}},
            "organisations": {o: {"source": f"{o}.csv"} for o in splits},
            "training": {
                "strategy": "bagging",
                "rounds": 2,
                "num_leaves": 4,
                "min_data_in_leaf": 20,
                "num_threads": 1,
                **training,
            },
        }
    )
    parties = [
        Party(o, s, objective="binary", num_class=1, feature_names=["a", "b", "c"], categorical=[])
        for o, s in splits.items()
    ]
    coord = Coordinator(cfg, parties)
    coord.start()
    for r in range(1, cfg.training.rounds + 1):
        coord.run_round(r)
    baselines = coord.local_baselines()
    summary = report.summarise(coord, baselines, run_id="r", model_file=None, train_seconds=0.0, total_seconds=0.0)
    return coord, baselines, summary


def test_each_reason_is_a_note_of_its_organisation():
    _, _, summary = trained(
        {
            "bank": rows(400, 100, 1),
            "shop": rows(12, 50, 2),
            "clinic": rows(200, 50, 3, train_label=0.0),
            "telco": rows(200, 50, 4, valid_label=1.0),
        }
    )
    notes = {org: o["notes"] for org, o in summary["organisations"].items()}
    assert notes == {
        "bank": [],
        "shop": [
            "fewer training rows (12) than a split needs (2 x min_data_in_leaf = 40): the local model is constant"
        ],
        "clinic": ["training rows hold one class (negative): the local model is constant"],
        "telco": ["validation rows hold one class: auc undefined"],
    }
    assert np.isnan(summary["organisations"]["telco"]["federated"]["auc"])
    table = report.gain_table(summary).splitlines()
    assert table[-3:] == [
        "note: shop: fewer training rows (12) than a split needs (2 x min_data_in_leaf = 40): the local model is constant",
        "note: clinic: training rows hold one class (negative): the local model is constant",
        "note: telco: validation rows hold one class: auc undefined",
    ]
    assert json.loads(json.dumps(summary, default=float))["organisations"]["telco"]["notes"] == notes["telco"]


def test_no_validation_rows_says_validation_fraction_0():
    _, _, summary = trained({"bank": rows(300, 0, 1), "shop": rows(300, 0, 2)}, validation_fraction=0)
    table = report.gain_table(summary)
    assert table.splitlines()[2].split() == ["bank", "300", "nan", "nan", "+nan"]
    assert table.splitlines()[-2:] == [
        "note: bank: no validation rows (validation_fraction: 0)",
        "note: shop: no validation rows (validation_fraction: 0)",
    ]


class _Tracker:
    """What report.publish logs, kept in memory."""

    run_id, experiment_id = "r", "1"

    def __init__(self, tmp_path):
        self.tmp_path, self.texts, self.folders = tmp_path, {}, {}

    def log_model(self, text):
        pass

    def artifact_path(self, path):
        return None

    def log_final(self, values, org_values):
        pass

    def log_artifacts(self, folder, path):
        from pathlib import Path

        self.folders[path] = {p.name: p.read_bytes() for p in Path(folder).iterdir()}

    def log_text(self, text, path):
        self.texts[path] = text


def test_notes_go_to_mlflow_with_the_report(tmp_path):
    coord, baselines, _ = trained({"bank": rows(400, 100, 1), "telco": rows(200, 50, 4, valid_label=1.0)})
    tracker = _Tracker(tmp_path)
    report.publish(tracker, coord, baselines, train_seconds=0.0, started=0.0)
    md = tracker.folders["report"]["report.md"].decode()
    assert "Note: telco: validation rows hold one class: auc undefined" in md
    assert "telco: validation rows hold one class: auc undefined" in tracker.folders["report"]["report.html"].decode()
    assert json.loads(tracker.texts["summary.json"])["organisations"]["telco"]["notes"] == [
        "validation rows hold one class: auc undefined"
    ]


def test_an_organisation_left_out_is_reported_with_its_reason_not_a_crash(tmp_path):
    """privacy.on_party_failure: continue, and a party that stays away: the report names it and goes on."""
    from tests.coordinator.test_histogram_strategy import ORGS, cfg_for, make_rows, partition
    from tests.coordinator.test_secure_training import FailingEngineParty, parties_for

    X, y = make_rows("binary")
    cfg = cfg_for("binary", ORGS[:3], rounds=6)
    cfg.privacy.on_party_failure = "continue"
    FailingEngineParty.exchanges = 0
    coord = Coordinator(cfg, parties_for(cfg, X, y, partition(y, 3, "iid"), cls=FailingEngineParty))
    coord.start()
    for r in range(1, 7):
        coord.run_round(r)
    assert [d["organisation"] for d in coord.dropped] == ["clinic"]
    summary = report.summarise(
        coord, coord.local_baselines(), run_id="r", model_file=None, train_seconds=1.0, total_seconds=2.0
    )
    clinic = summary["organisations"]["clinic"]
    assert clinic["local_only"] == {} and clinic["notes"][0].startswith("left out in round ")
    assert "clinic: left out in round" in report.gain_table(summary)
    report._plot_curves(coord, coord.local_baselines(), "auc", tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_under_dp_the_gain_table_says_the_validation_metrics_stay_with_the_organisations():
    summary = {"objective": "binary", "primary_metric": "auc", "global": {}, "organisations": {}, "rows": 10}
    summary["privacy"] = {"mechanism": "skellam"}
    assert report.gain_table(summary).splitlines()[-1] == report.DP_NOTE
    assert report.DP_NOTE not in report.gain_table({**summary, "privacy": {"mechanism": "none"}})
