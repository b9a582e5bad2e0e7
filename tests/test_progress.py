"""Round progress: listeners hear every round, and one of them may ask the training to stop."""

from __future__ import annotations

from fedmine import progress


def test_listeners_hear_each_round_and_any_of_them_can_ask_to_stop():
    heard = []
    with progress.listening(lambda r, n, m: heard.append((r, n, m["auc"]))):
        assert progress.report(1, 5, {"auc": 0.7}) is False
        with progress.listening(lambda r, n, m: m["auc"] < 0.6):
            assert progress.report(2, 5, {"auc": 0.65}) is False
            assert progress.report(3, 5, {"auc": 0.55}) is True
        assert progress.report(4, 5, {"auc": 0.5}) is False  # the stopping listener is gone
    assert heard == [(1, 5, 0.7), (2, 5, 0.65), (3, 5, 0.55), (4, 5, 0.5)]
    assert progress.report(5, 5, {"auc": 0.5}) is False and len(heard) == 4
