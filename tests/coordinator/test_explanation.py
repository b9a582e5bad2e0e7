"""The federation's explanation: mean |SHAP| from masked sums equals the pooled rows', plots stay with each party."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from fedmine.coordinator.client import RemoteParty
from fedmine.coordinator.explanation import explain_parties, fixed_point_scale, shap_bound, write_report
from fedmine.errors import ConfigError, PartyError
from fedmine.party.server import serve_party
from tests.coordinator.test_strategies import make


def trained(strategy="histogram", rounds=4):
    cfg, coord, splits = make(strategy, rounds=rounds)
    for r in range(1, rounds + 1):
        coord.run_round(r)
    return cfg, coord.parties, splits, coord.model_text()


def pooled_mean_abs(model_text, splits):
    X = np.vstack([np.vstack([s.X_train, s.X_valid]) for s in splits])
    contrib = lgb.Booster(model_str=model_text).predict(X, pred_contrib=True)
    return np.abs(contrib[:, :-1]).mean(axis=0), len(X)


def record(parties, call):
    """What each party answers to ``call``, as the coordinator receives it."""
    seen = {p.name: [] for p in parties}
    for p in parties:
        original = p.call

        def spy(name, *a, _orig=original, _name=p.name, **k):
            answer = _orig(name, *a, **k)
            if name == call:
                seen[_name].append(answer)
            return answer

        p.call = spy
    return seen


@pytest.mark.parametrize("strategy", ["histogram", "bagging"])
def test_federation_mean_abs_shap_is_the_pooled_rows_and_the_parties_answers_are_masked(strategy, tmp_path):
    cfg, parties, splits, text = trained(strategy)
    seen = record(parties, "shap_sums")
    for p in parties:
        p.output_dir = tmp_path / p.name
    explanation = explain_parties(cfg, parties, text)
    want, rows = pooled_mean_abs(text, splits)
    assert explanation.rows == rows and explanation.secure_aggregation
    # fixed point: each row rounded to 1/scale, so the mean is within half a step of the float mean
    assert np.max(np.abs(explanation.mean_abs[0] - want)) <= 0.5 / explanation.scale
    assert explanation.scale == 2.0**40
    # the coordinator holds masked answers: each looks uniform, and only their sum means anything
    answers = [seen[p.name][0] for p in parties]
    bits = np.unpackbits(np.concatenate([a.view(np.uint8).ravel() for a in answers]))
    assert abs(bits.mean() - 0.5) < 0.05
    assert all(a[0, -1] != len(s.y_train) + len(s.y_valid) for a, s in zip(answers, splits))
    total = answers[0] + answers[1] + answers[2]
    assert total[0, -1] == rows
    np.testing.assert_allclose(explanation.gain, lgb.Booster(model_str=text).feature_importance("gain"))
    assert [explanation.features[i] for i in explanation.order()] == [
        explanation.features[i] for i in np.argsort(-want, kind="stable")
    ]


def test_without_secure_aggregation_the_sums_are_plain_and_the_same(tmp_path):
    cfg, parties, splits, text = trained()
    cfg.privacy.secure_aggregation = False
    seen = record(parties, "shap_sums")
    for p in parties:
        p.output_dir = tmp_path / p.name
    explanation = explain_parties(cfg, parties, text, plots=False)
    assert not explanation.secure_aggregation
    assert [int(seen[p.name][0][0, -1]) for p in parties] == [len(s.y_train) + len(s.y_valid) for s in splits]
    want, _ = pooled_mean_abs(text, splits)
    assert np.max(np.abs(explanation.mean_abs[0] - want)) <= 0.5 / explanation.scale
    assert not any((tmp_path / p.name).exists() for p in parties)


def test_each_party_at_its_server_writes_its_own_plots_there_and_sends_none(tmp_path):
    cfg, parties, splits, text = trained()
    servers, remotes = [], []
    for p in parties:
        p.output_dir = tmp_path / p.name
        server = serve_party(p, port=0, tls=None, allow_insecure=True)
        servers.append(server)
        remotes.append(RemoteParty(p.name, f"grpc://127.0.0.1:{server.port}", tls=None, allow_insecure=True))
    seen = record(remotes, "shap_plots")
    try:
        explanation = explain_parties(cfg, remotes, text)
    finally:
        for remote, server in zip(remotes, servers):
            remote.close()
            server.shutdown()
    want, _ = pooled_mean_abs(text, splits)
    assert np.max(np.abs(explanation.mean_abs[0] - want)) <= 0.5 / explanation.scale
    assert all(answers == [None] for answers in seen.values())  # nothing of the plots comes back
    for p in parties:
        files = sorted(f.name for f in (tmp_path / p.name / "explain").iterdir())
        assert "summary.png" in files and "dependence_a.png" in files
        own = np.abs(
            lgb.Booster(model_str=text).predict(np.vstack([p._data.X_train, p._data.X_valid]), pred_contrib=True)
        )[:, :-1].mean(axis=0)
        csv = (tmp_path / p.name / "explain" / "mean_abs_shap.csv").read_text()
        assert f"a,{own[0]:.10g}" in csv  # its own rows', not the federation's
    report = write_report(explanation, tmp_path / "report", model="model.txt")
    assert "| a |" in report.read_text() and (tmp_path / "report" / "importance.png").is_file()


def test_a_party_refuses_a_model_of_another_schema():
    cfg, parties, _, text = trained()
    other = text.replace("feature_names=a b c", "feature_names=a b d")
    with pytest.raises(PartyError, match=r"party a: explain refused: the model's features \['a', 'b', 'd'\]"):
        explain_parties(cfg, parties, other, plots=False)


def test_under_dp_the_explanation_needs_outside_budget_before_any_party_is_asked():
    cfg, parties, _, text = trained()
    cfg.privacy.epsilon = 2.0
    seen = record(parties, "shap_sums")
    with pytest.raises(
        ConfigError,
        match=r"^privacy.epsilon=2 covers the training only: fedmine explain releases exact sums of \|SHAP\| .*"
        r"privacy.outside_budget \(allowed: profile, explain\)$",
    ):
        explain_parties(cfg, parties, text, plots=False)
    assert all(not answers for answers in seen.values())


def test_the_scale_keeps_every_sum_inside_int64():
    text = "tree\nleaf_value=-3 5\nleaf_value=1 2\n"
    assert shap_bound(text) == 9.0
    assert fixed_point_scale(text, 100) == 2.0**40
    scale = fixed_point_scale(text, 10**9)
    assert 10**9 * 9.0 * scale <= 2.0**62 < 10**9 * 9.0 * scale * 2
