"""A party that defends itself: its own config's policy, masks bound to the request, fresh trainings, its rows' identity."""

from __future__ import annotations

import numpy as np
import pytest

from fedmine.config import config_from_dict
from fedmine.coordinator.link import Link
from fedmine.coordinator.strategies import FederationGroup
from fedmine.coordinator.training import Coordinator
from fedmine.errors import DataError, PartyError
from fedmine.gbdt.booster import Trainer
from fedmine.party.organisation import Party, TrainValidRows, shared_report
from fedmine.party.policy import PartyPolicy
from fedmine.protocol import ProtocolError
from tests.coordinator.test_histogram_strategy import ORGS, cfg_for, make_rows, partition

pytestmark = pytest.mark.filterwarnings("ignore::fedmine.privacy.secure_agg.SecureAggregationWarning")


def policy_parties(cfg, X, y, parts, report=None):
    return [
        Party(
            o,
            TrainValidRows(X[i], y[i], X[i][:40], y[i][:40]),
            objective=cfg.objective,
            num_class=cfg.num_class,
            feature_names=list(cfg.features),
            categorical=[3],
            report=report,
            policy=PartyPolicy.from_config(cfg, o),
        )
        for o, i in zip(cfg.organisations, parts)
    ]


@pytest.fixture(scope="module")
def rows():
    X, y = make_rows("binary")
    return X, y, partition(y, 3, "skewed")


def keyed(parties, session="s1"):
    keys = {p.name: p.call("secure_setup", session) for p in parties}
    for p in parties:
        p.call("secure_peers", keys)


def engine_group(parties, links=None):
    """The parties as the coordinator's engine group: its totals are their summed label_totals."""
    links = links or [Link(p) for p in parties]
    return FederationGroup.of(links, objective="binary", n_threads=1), links


def started_trainer(cfg, parties, links=None):
    group, links = engine_group(parties, links)
    trainer = Trainer(
        group,
        cfg.training.engine_params("binary", 1, "auc"),
        categorical=[3],
        feature_names=list(cfg.features),
        evaluate=False,
    )
    trainer.start()
    return trainer, links


# ---------------------------------------------------------------------------
# secure aggregation comes first; peers are the config's organisations
# ---------------------------------------------------------------------------


def test_summed_answers_wait_for_the_key_exchange(rows):
    X, y, parts = rows
    cfg = cfg_for("binary", ORGS[:3])
    assert cfg.secure_aggregation
    bank = policy_parties(cfg, X, y, parts)[0]
    grids, cat = np.zeros((5, 4)), np.zeros(5, dtype=bool)
    with pytest.raises(
        PartyError,
        match=r"^party bank: grid_counts refused: this organisation's config requires "
        r"secure aggregation and no key exchange has happened in this training$",
    ):
        bank.call("grid_counts", grids, cat)
    bank.call("feature_ranges")  # disclosed answers are not summed: allowed


def test_peers_must_be_the_configs_organisations(rows):
    X, y, parts = rows
    cfg = cfg_for("binary", ORGS[:3])
    parties = policy_parties(cfg, X, y, parts)
    keys = {p.name: p.call("secure_setup", "s1") for p in parties}
    forged = dict(keys, mallory=keys["clinic"])
    with pytest.raises(
        PartyError,
        match=r"party bank: secure_peers refused: the peers must be this federation's "
        r"organisations \(bank, clinic, shop\); unknown: \['mallory'\]",
    ):
        parties[0].call("secure_peers", forged)
    short = {k: v for k, v in keys.items() if k != "shop"}
    with pytest.raises(PartyError, match=r"missing: \['shop'\]"):
        parties[0].call("secure_peers", short)


# ---------------------------------------------------------------------------
# masks bound to the request: different requests to different parties give noise, and the training fails
# ---------------------------------------------------------------------------


class Tampering(Link):
    """The coordinator's link to one party, rewriting that party's splits (a coordinator that deviates)."""

    def call(self, method, *args, **kwargs):
        if method == "batch":  # the first split of a batch (calls travel batched)
            parts = [list(p) for p in args[0]]
            split = next((p for p in parts if p[0] == "apply_split"), None)
            if split is not None:
                node, feature, threshold, default_left, bitset, left, right = split[1]
                if bitset is None:
                    split[1] = (node, feature, max(int(threshold) - 3, 0), default_left, bitset, left, right)
            args = (parts, *args[1:])
        return super().call(method, *args, **kwargs)


def test_party_specific_splits_sum_to_noise_and_the_training_fails_loudly(rows):
    X, y, parts = rows
    cfg = cfg_for("binary", ORGS[:3])
    parties = policy_parties(cfg, X, y, parts)
    keyed(parties)
    links = [Link(parties[0]), Link(parties[1]), Tampering(parties[2])]
    seen = []
    original = parties[2].call

    def spy(name, *a, **k):
        answer = original(name, *a, **k)
        if name in ("histograms", "split_histograms"):
            seen.append(answer)
        return answer

    parties[2].call = spy
    trainer, _ = started_trainer(cfg, parties, links)
    with pytest.raises(
        PartyError,
        match=r"histograms of node \d+ do not add up .*the parties answered different "
        r"requests, or a party is faulty",
    ):
        trainer.step()
    # the target party did answer (masked, bound to the request it got): only the sum is wrong
    assert seen and all(a.dtype == np.int64 for a in seen)


def test_the_same_requests_give_the_same_model_with_or_without_the_policy(rows):
    X, y, parts = rows
    cfg = cfg_for("binary", ORGS[:3], rounds=4)
    plain = Coordinator(
        cfg,
        [
            Party(
                o,
                TrainValidRows(X[i], y[i], X[i][:40], y[i][:40]),
                objective="binary",
                num_class=1,
                feature_names=list(cfg.features),
                categorical=[3],
            )
            for o, i in zip(cfg.organisations, parts)
        ],
    )
    guarded = Coordinator(cfg, policy_parties(cfg, X, y, parts))
    for coord in (plain, guarded):
        coord.start()
        for r in range(1, 5):
            coord.run_round(r)
    assert guarded.model_text() == plain.model_text()


# ---------------------------------------------------------------------------
# noise, local training, bins, ranges, the report: the party's own config decides
# ---------------------------------------------------------------------------


def test_noise_comes_from_the_party_and_stays_on_under_dp(rows):
    X, y, parts = rows
    cfg = cfg_for("binary", ORGS[:3])
    cfg.privacy.epsilon = 1.0
    bank = policy_parties(cfg, X, y, parts)[0]
    state = bank.engine_state()
    state.stage_ = "binned"  # the stage set_noise needs; the policy is checked first
    with pytest.raises(PartyError, match="noise is drawn from this party's own randomness; a seed is not accepted"):
        bank.call("set_noise", np.ones(3), n_parties=3, seed=7)
    with pytest.raises(PartyError, match=r"privacy.epsilon=1; noise cannot be switched off"):
        bank.call("set_noise", None, n_parties=3)
    with pytest.raises(PartyError, match=r"n_parties=9: the federation has 3 organisations"):
        bank.call("set_noise", np.ones(3), n_parties=9)


def test_profile_and_shap_answers_are_refused_under_dp_unless_outside_budget_allows_them(rows):
    X, y, parts = rows
    cfg = cfg_for("binary", ORGS[:3])
    cfg.privacy.epsilon = 1.0
    cfg.privacy.secure_aggregation = False  # the summed shap_sums would wait for a key exchange first
    bank = policy_parties(cfg, X, y, parts)[0]
    with pytest.raises(
        PartyError, match=r"profile_ranges refused: .*privacy.epsilon=1; fedmine profile's answers are exact"
    ):
        bank.call("profile_ranges")
    with pytest.raises(PartyError, match=r"shap_sums refused: .*allowed by privacy.outside_budget: \[explain\]"):
        bank.call("shap_sums", "model", 1.0)
    cfg.privacy.outside_budget = ["profile"]
    bank = policy_parties(cfg, X, y, parts)[0]
    assert bank.call("profile_ranges").shape == (X.shape[1], 2)  # its own config allows it
    with pytest.raises(PartyError, match=r"shap_sums refused"):
        bank.call("shap_sums", "model", 1.0)


def test_local_training_uses_the_organisations_own_parameters_and_caps(rows):
    X, y, _parts = rows
    cfg = cfg_for("binary", ORGS[:3], strategy="bagging", local_rounds=2, rounds=5)
    bank = policy_parties(cfg, X, y, partition(y, 3, "iid"))[0]
    bank.call("start", np.zeros(1))
    hostile = {
        "objective": "binary",
        "min_data_in_leaf": 1,
        "num_leaves": 64,
        "tree_learner": "data",
        "machines": "10.0.0.1:12400",
        "forcedbins_filename": "/etc/hostname",
    }
    trees = bank.call("train_local", hostile, 2)
    own = bank.call("train_local", cfg.training.lightgbm_params("binary", 1), 2)
    assert all(a.equal(b) for a, b in zip(trees, own)) and len(trees) == 2
    assert min(int(t.nodes["count"][t.nodes["is_leaf"] == 1].min()) for t in trees) >= cfg.training.min_data_in_leaf
    with pytest.raises(PartyError, match=r"train_local refused: 50 rounds; this organisation's config allows 1 to 2"):
        bank.call("train_local", hostile, 50)
    with pytest.raises(PartyError, match=r"local_baseline refused: 6 rounds; this organisation's config allows 1 to 5"):
        bank.call("local_baseline", hostile, 6)


def test_bins_are_set_once_per_training(rows):
    X, y, parts = rows
    cfg = cfg_for("binary", ORGS[:3])
    parties = policy_parties(cfg, X, y, parts)
    keyed(parties)
    trainer, _links = started_trainer(cfg, parties)
    mapper = trainer._mapper
    bank = parties[0]
    bank.call("reset")
    bank.call("set_bins", mapper)  # the same bins again (a recovery): accepted
    moved = type(mapper)(**{**vars(mapper), "edges": mapper.edges + 1e-3})
    bank.call("reset")
    with pytest.raises(PartyError, match=r"set_bins refused: bins are set once per training"):
        bank.call("set_bins", moved)
    bank.call("begin_training", "another")  # a new training may bin afresh
    bank.call("set_bins", moved)


def test_ranges_of_declared_features_are_not_answered(rows):
    X, y, parts = rows
    raw = cfg_for("binary", ORGS[:3]).model_dump()
    raw["features"]["f1"].update(min=-10.0, max=10.0)
    cfg = config_from_dict(raw)
    bank = policy_parties(cfg, X, y, parts)[0]
    ranges = bank.call("feature_ranges")
    assert np.isnan(ranges[1]).all() and np.isnan(ranges[3]).all()  # declared: f1 by its bounds, f3 a category
    assert np.isfinite(ranges[[0, 2, 4]]).all()


def test_describe_sends_counts_not_raw_values(rows):
    X, y, parts = rows
    cfg = cfg_for("binary", ORGS[:3])
    report = {
        "rows": 500,
        "missing_rate": {"f0": 0.1},
        "unmapped_columns": ["ssn", "full_name"],
        "unknown_categories": {"f3": {"count": 3, "examples": ["Wien", "Graz"], "policy": "missing"}},
        "problems": ["column 'age' has 3 values below 0, e.g. -7"],
    }
    bank = policy_parties(cfg, X, y, parts, report=report)[0]
    sent = bank.call("describe")["report"]
    assert sent == shared_report(report)
    text = repr(sent)
    assert "ssn" not in text and "Wien" not in text and "-7" not in text
    assert sent["unmapped_columns"] == 2 and sent["unknown_categories"]["f3"]["count"] == 3


def test_histogram_requests_are_bounded(rows):
    X, y, parts = rows
    cfg = cfg_for("binary", ORGS[:3])
    parties = policy_parties(cfg, X, y, parts)
    keyed(parties)
    started_trainer(cfg, parties)
    with pytest.raises(PartyError, match=r"histograms refused: 5000 nodes in one request; at most 4096"):
        parties[0].call("histograms", np.zeros(5000, dtype=np.int64))


# ---------------------------------------------------------------------------
# fresh trainings; the same rows
# ---------------------------------------------------------------------------


def test_a_party_serves_one_training_after_another(rows):
    X, y, parts = rows
    cfg = cfg_for("binary", ORGS[:3], rounds=3)
    parties = policy_parties(cfg, X, y, parts)
    texts = []
    for _ in range(2):
        coord = Coordinator(cfg, parties)
        coord.start()
        for r in range(1, 4):
            coord.run_round(r)
        texts.append(coord.model_text())
    assert texts[0] == texts[1]
    assert parties[0].engine_state().stage_ != "created"


def test_a_resume_on_changed_rows_stops_with_one_line(rows):
    X, y, parts = rows
    cfg = cfg_for("binary", ORGS[:3], rounds=3)
    coord = Coordinator(cfg, policy_parties(cfg, X, y, parts))
    coord.start()
    coord.run_round(1)
    state, arrays = coord.checkpoint()
    changed = [parts[0][:-100], parts[1], parts[2]]
    again = Coordinator(cfg, policy_parties(cfg, X, y, changed))
    again.start()
    with pytest.raises(
        DataError,
        match=r"^organisation bank: source changed since the training started "
        r"\(rows fingerprint [0-9a-f]{12} then, [0-9a-f]{12} now\)$",
    ):
        again.restore(state, arrays)
    same = Coordinator(cfg, policy_parties(cfg, X, y, parts))
    same.start()
    assert same.restore(state, arrays) == 2


def test_unknown_and_out_of_order_calls_name_the_stage(rows):
    X, y, parts = rows
    bank = policy_parties(cfg_for("binary", ORGS[:3]), X, y, parts)[0]
    with pytest.raises(ProtocolError, match="add_trees is not accepted in stage 'new'"):
        bank.call("add_trees", 1, None)


def test_local_training_stops_at_the_organisations_time_limit(rows):
    import dataclasses

    X, y, _parts = rows
    cfg = cfg_for("binary", ORGS[:3], strategy="bagging", local_rounds=50, rounds=50)
    bank = policy_parties(cfg, X, y, partition(y, 3, "iid"))[0]
    bank.policy = dataclasses.replace(bank.policy, train_seconds=0.0)
    bank.call("start", np.zeros(1))
    with pytest.raises(PartyError, match=r"train_local refused: stopped after 0 s, this organisation's limit"):
        bank.call("train_local", {}, 50)


def test_no_histogram_leaves_without_noise_under_dp_and_noise_is_positive(rows):
    X, y, parts = rows
    cfg = cfg_for("binary", ORGS[:3])
    cfg.privacy.epsilon = 1.0
    parties = policy_parties(cfg, X, y, parts)
    keyed(parties)
    bank = parties[0]
    with pytest.raises(PartyError, match=r"privacy.epsilon=1; no histogram leaves without its noise share"):
        bank.call("histograms", np.zeros(1, dtype=np.int64))
    bank.engine_state().stage_ = "binned"
    with pytest.raises(PartyError, match=r"noise variances must be positive, got \[0.0, 0.0, 0.0\]"):
        bank.call("set_noise", np.zeros(3), n_parties=3)


def test_masks_cannot_be_narrowed_below_the_configs_minimum(rows):
    X, y, parts = rows
    cfg = cfg_for("binary", ORGS[:3])
    cfg.privacy.min_parties = 3
    parties = policy_parties(cfg, X, y, parts)
    keyed(parties)
    with pytest.raises(
        PartyError,
        match=r"secure_restart refused: 2 remaining organisations \(bank, clinic\); this "
        r"organisation's config needs at least 3 of its own",
    ):
        parties[0].call("secure_restart", ["bank", "clinic"], 1)


def test_a_restart_counts_message_ids_afresh_at_every_remaining_party(rows):
    X, y, parts = rows
    cfg = cfg_for("binary", ORGS[:3])
    cfg.privacy.min_parties = 2
    parties = policy_parties(cfg, X, y, parts)
    keyed(parties)
    bank, _, shop = parties
    plain = bank.label_totals() + shop.label_totals()
    bank.call("label_totals")  # the round trip that failed: bank answered it, shop was not asked
    with pytest.warns(UserWarning, match="two parties"):
        for p in (bank, shop):
            p.call("secure_restart", ["bank", "shop"], 1)
    total = bank.call("label_totals") + shop.call("label_totals")
    assert np.array_equal(total, plain)


def test_trees_sent_to_a_party_are_checked_against_its_features(rows):
    from fedmine.gbdt.model import Tree

    X, y, parts = rows
    bank = policy_parties(cfg_for("binary", ORGS[:3], strategy="bagging"), X, y, parts)[0]
    bank.call("start", np.zeros(1))
    tree = Tree.single_leaf(0.1)
    nodes = np.concatenate([tree.nodes, tree.nodes, tree.nodes])
    nodes[0]["is_leaf"], nodes[0]["feature"], nodes[0]["left"], nodes[0]["right"] = 0, 10**6, 1, 2
    with pytest.raises(
        PartyError,
        match=r"add_trees refused: a tree splits on feature 1000000 .* this "
        r"organisation has 5 features",
    ):
        bank.call("add_trees", 1, [Tree(nodes)])


def test_histograms_travel_in_the_compact_layout_and_sum_to_the_full_one(rows):
    from fedmine.gbdt.histogram import compact_histograms, expand_histograms, reachable_cells

    X, y, parts = rows
    cfg = cfg_for("binary", ORGS[:3])
    parties = policy_parties(cfg, X, y, parts)
    keyed(parties)
    trainer, _ = started_trainer(cfg, parties)
    mapper = trainer._mapper
    cells = reachable_cells(mapper.n_bins, mapper.max_bin)
    assert cells.sum() < cells.size / 1.2  # the categorical feature has 5 cells of 256
    shapes = []
    original = parties[0].call

    def spy(name, *a, **k):
        answer = original(name, *a, **k)
        if name in ("histograms", "split_histograms"):
            shapes.append(answer.shape)
        return answer

    parties[0].call = spy
    trainer.step()
    assert shapes and all(len(s) == 3 and s[1] == int(cells.sum()) and s[2] in (2, 3) for s in shapes)
    full = np.random.default_rng(0).integers(0, 9, size=(2, *cells.shape, 3)) * cells[None, :, :, None]
    np.testing.assert_array_equal(expand_histograms(compact_histograms(full, cells), cells), full)
