"""Vertical federation: a party that restarts rejoins, a coordinator that stopped resumes, the same model.

A party restart is a party whose process state is gone: the test swaps in a
fresh party made from the same frame and folder (what ``fedmine party serve``
does when it is started again with the same command) at the moment a call
fails. The parties are in process with a plain cipher; the same over Flight
with Paillier and real processes is in tests/flows/test_distributed_vertical.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedmine import protocol
from fedmine.config import config_from_dict
from fedmine.coordinator.vertical import VerticalCoordinator, check_resume
from fedmine.demo import make_vertical_frames, vertical_demo_config
from fedmine.errors import ConfigError, DataError, PartyError
from fedmine.party.vertical import PartyState, vertical_party
from tests.support import plain_cipher

ORGS = ("bank", "retailer", "telecom")
ROUNDS = 4


def _cfg(**training):
    raw = vertical_demo_config("sqlite:///unused.db")
    raw["training"].update(
        {"rounds": ROUNDS, "num_leaves": 6, "max_bin": 16, "bagging_fraction": 0.8, "bagging_freq": 1, **training}
    )
    for i, org in enumerate(ORGS):  # endpoints make the coordinator wait for a failed party (nothing listens there)
        raw["organisations"][org]["endpoint"] = f"grpc+tls://127.0.0.1:{47000 + i}"
    raw["transport"] = {"rejoin_seconds": 5}
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def frames():
    return make_vertical_frames(7, n=600)


def _party(cfg, org, frame, folder):
    party = vertical_party(cfg, org, frame, cipher=plain_cipher)
    party.output_dir = folder / org
    return party


class Restarting:
    """A party whose process is killed at the ``at``-th call ``call`` and started again (state lost, disk kept)."""

    def __init__(self, make, *, call: str, at: int) -> None:
        self.make, self.trigger, self.at = make, call, at
        self.inner = make()
        self.name = self.inner.name
        self.seen = 0
        self.restarts = 0
        self.rejoined: list = []  # its vertical_rejoin answers

    def call(self, name, *args, **kwargs):
        if name == self.trigger:
            self.seen += 1
            if self.seen == self.at:
                self.inner = self.make()  # a new process: its rows prepared again, nothing else
                self.restarts += 1
                raise PartyError(f"party {self.name}: {name} failed: connection reset")
        answer = self.inner.call(name, *args, **kwargs)
        if name in ("vertical_rejoin", "vertical_resume") and self.rejoined and "result" not in self.rejoined[-1]:
            self.rejoined.append(answer)  # the label holder's conversation, to its result
        elif name == "vertical_rejoin":
            self.rejoined.append(answer)
        return answer


def _train(coord, first=1):
    for r in range(first, ROUNDS + 1):
        coord.run_round(r)
        if coord.stopped:
            break
    return coord.model_text()


@pytest.fixture(scope="module")
def uninterrupted(frames, tmp_path_factory):
    cfg = _cfg()
    folder = tmp_path_factory.mktemp("whole")
    coord = VerticalCoordinator(cfg, [_party(cfg, o, frames[o], folder) for o in ORGS])
    coord.start()
    text = _train(coord)
    assert text is not None and "Tree=3" in text  # the demo publishes its thresholds: one LightGBM model
    scores = _scores(coord)
    return {"scores": scores, "text": text, "metrics": coord.history[-1].global_metrics, "folder": folder}


def _scores(coord):
    return coord.predict_raw([f"C{i:05d}" for i in range(0, 600, 7)]).tolist()


@pytest.mark.parametrize(
    ("org", "call", "at"),
    [
        ("retailer", "owner_histograms", 9),
        ("bank", "vertical_resume", 12),
        ("telecom", "owner_split", 3),
        ("bank", "vertical_model", 1),
        ("retailer", "psi_reblind", 1),
        ("bank", "vertical_begin", 1),
        ("telecom", "owner_bins", 1),
    ],
    ids=[
        "owner-mid-round",
        "label-holder-mid-round",
        "owner-early",
        "label-holder-after-the-rounds",
        "in-the-intersection",
        "label-holder-at-the-start",
        "owner-at-the-start",
    ],
)
def test_a_restarted_party_rejoins_and_the_model_is_unchanged(frames, uninterrupted, tmp_path, org, call, at):
    cfg = _cfg()
    parties = [_party(cfg, o, frames[o], tmp_path) for o in ORGS]
    flaky = Restarting(lambda: _party(cfg, org, frames[org], tmp_path), call=call, at=at)
    parties[ORGS.index(org)] = flaky
    coord = VerticalCoordinator(cfg, parties)
    coord.start()
    assert _train(coord) == uninterrupted["text"]
    assert flaky.restarts == 1
    assert any(n.startswith(f"party {org} failed ") and n.endswith("and rejoined") for n in coord.notices)
    if call == "psi_reblind":  # the intersection is run again from its start: nothing to take up
        return
    # what the rejoin disclosed is in the protocol table and in the receipt
    entry = protocol.call("vertical_rejoin")
    result = flaky.rejoined[-1]["result"]
    assert {"shared_rows", "rounds"} <= set(result) <= set(entry.discloses)
    assert result["shared_rows"] == coord.shared_rows
    listed = coord.receipt().as_dict()["disclosed"].split(", ")
    assert {f"vertical_rejoin.{f}" for f in entry.discloses} <= set(listed)
    assert _scores(coord) == uninterrupted["scores"]
    assert coord.history[-1].global_metrics == uninterrupted["metrics"]


def test_a_resumed_coordinator_ends_with_the_same_model(frames, uninterrupted, tmp_path):
    cfg = _cfg()
    first = VerticalCoordinator(cfg, [_party(cfg, o, frames[o], tmp_path) for o in ORGS])
    first.start()
    first.run_round(1)
    first.run_round(2)
    state, arrays = first.checkpoint()
    assert arrays == {} and state["round"] == 2
    first.run_round(3)  # grown at the label holder, never recorded: the resume grows it again
    # a new coordinator, and new party processes: all they had is on their own disks
    again = VerticalCoordinator(cfg, [_party(cfg, o, frames[o], tmp_path) for o in ORGS])
    assert again.resume(state) == 3
    assert again.history[-1].round_id == 2 and again.shared_rows == first.shared_rows
    assert _train(again, first=3) == uninterrupted["text"]


def test_a_party_whose_rows_changed_is_refused(frames, tmp_path):
    cfg = _cfg()
    coord = VerticalCoordinator(cfg, [_party(cfg, o, frames[o], tmp_path) for o in ORGS])
    coord.start()
    coord.run_round(1)
    state, _ = coord.checkpoint()
    changed = frames["retailer"].copy()
    changed.loc[changed.index[0], "basket_eur"] = 999.0
    parties = [_party(cfg, o, changed if o == "retailer" else frames[o], tmp_path) for o in ORGS]
    with pytest.raises(DataError, match=r"^organisation retailer: source changed since the training started \(rows"):
        VerticalCoordinator(cfg, parties).resume(state)
    # and the party checks on its own (a coordinator that does not)
    party = _party(cfg, "retailer", changed, tmp_path)
    with pytest.raises(DataError, match=r"^organisation retailer: source changed since the training started"):
        party.call("vertical_rejoin", state["training_id"], 1, {}, None)


def test_a_party_restarted_without_its_folder_fails_the_training_in_one_line(frames, tmp_path):
    cfg = _cfg()
    parties = [_party(cfg, o, frames[o], tmp_path) for o in ORGS]
    moved = Restarting(
        lambda: _party(cfg, "retailer", frames["retailer"], tmp_path / "elsewhere"), call="owner_histograms", at=2
    )
    moved.inner = parties[1]  # it trained with tmp_path/retailer, is started again with another folder
    parties[1] = moved
    coord = VerticalCoordinator(cfg, parties)
    coord.start()
    with pytest.raises(
        ConfigError, match=r"^party retailer: vertical_rejoin: no saved state of training [0-9a-f]+ \(.*elsewhere"
    ):
        _train(coord)
    assert parties[1].restarts == 1 and not coord.notices


def test_a_party_without_its_saved_state_says_so(frames, tmp_path):
    cfg = _cfg()
    party = _party(cfg, "retailer", frames["retailer"], tmp_path)
    with pytest.raises(ConfigError, match=r"^party retailer: vertical_rejoin: no saved state of training 0123abcd \("):
        party.call("vertical_rejoin", "0123abcd", 1, {}, None)
    party.output_dir = None
    with pytest.raises(ConfigError, match=r"no saved state of training 0123abcd \(no --output folder\); serve it"):
        party.call("vertical_rejoin", "0123abcd", 1, {}, None)
    with pytest.raises(PartyError, match="is not a folder name"):
        _party(cfg, "retailer", frames["retailer"], tmp_path).call("vertical_rejoin", "../../etc", 1, {}, None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: {**s, "partition": "horizontal"}, r"the run trained with partition: horizontal, the config says"),
        (lambda s: {**s, "organisations": ["bank", "retailer"]}, r"the run trained organisations bank, retailer; the"),
        (lambda s: {**s, "label_holder": "telecom"}, r"the run's label holder was telecom; the config says bank"),
    ],
    ids=["partition", "organisations", "label-holder"],
)
def test_a_resume_whose_config_changed_is_refused(change, message):
    cfg = _cfg()
    state = {"partition": "vertical", "organisations": list(ORGS), "label_holder": "bank", "round": 1}
    check_resume(cfg, state)
    with pytest.raises(ConfigError, match=f"^--resume: {message}"):
        check_resume(cfg, change(state))


def test_a_vertical_resume_needs_party_servers():
    raw = vertical_demo_config("sqlite:///unused.db")
    cfg = config_from_dict(raw)
    state = {"partition": "vertical", "organisations": list(ORGS), "label_holder": "bank"}
    with pytest.raises(ConfigError, match=r"organisations\.bank\.endpoint is not set$"):
        check_resume(cfg, state)


def test_the_label_holder_keeps_its_last_two_rounds(frames, tmp_path):
    cfg = _cfg()
    coord = VerticalCoordinator(cfg, [_party(cfg, o, frames[o], tmp_path) for o in ORGS])
    coord.start()
    for r in (1, 2, 3):
        coord.run_round(r)
    folder = tmp_path / "bank" / "vertical" / coord.training_id
    assert sorted(p.name for p in folder.iterdir()) == ["round-00002", "round-00003", "rows"]
    assert sorted(p.name for p in (tmp_path / "retailer" / "vertical" / coord.training_id).iterdir()) == [
        "bins",
        "predict",  # its bin mapper, to predict with after a restart
        "rows",
    ]
    assert np.isfinite(coord.history[-1].global_metrics["auc"])


def test_a_party_keeps_the_state_of_its_last_three_trainings(frames, tmp_path):
    cfg = _cfg()
    parties = [_party(cfg, o, frames[o], tmp_path) for o in ORGS]
    ids = []
    for _ in range(4):
        coord = VerticalCoordinator(cfg, parties)
        coord.intersect()
        ids.append(coord.training_id)
    for org in ORGS:
        kept = {p.name for p in (tmp_path / org / "vertical").iterdir()}
        assert kept == set(ids[1:]), org


def test_restarted_party_servers_predict_from_their_disks_with_the_same_scores(frames, uninterrupted):
    """Every party started again after training (state lost, folder kept): predict needs no new training."""
    cfg = _cfg()
    folder = uninterrupted["folder"]
    (training,) = {p.name for p in (folder / "bank" / "vertical").iterdir()}
    kept = {o: sorted(f.name for f in (folder / o / "vertical" / training).iterdir()) for o in ORGS}
    assert {"predict", "rows"} <= set(kept["bank"])  # its model and maps, beside its rejoin state
    assert kept["retailer"] == kept["telecom"] == ["bins", "predict", "rows"]  # an owner: its bins
    model = PartyState(folder / "bank" / "vertical" / training).load("predict")
    owned = [
        np.isnan(t.nodes["threshold"][j])
        for t in model["model"]["trees"]
        for j in np.flatnonzero((t.nodes["is_leaf"] == 0) & (t.nodes["is_categorical"] == 0))
        if model["holder"][int(t.nodes["feature"][j])]
    ]
    assert owned and all(owned)  # the owners' numeric thresholds stay with them, published or not
    parties = [_party(cfg, o, frames[o], folder) for o in ORGS]
    assert all(p.role_ is None for p in parties)  # nothing in memory: a fresh process
    coord = VerticalCoordinator(cfg, parties)
    assert _scores(coord) == uninterrupted["scores"]  # bit for bit
    assert [p._kept[0] for p in parties] == [training] * 3  # each read that training's predict state
    # an owner asked for bins of a training it does not keep says so, naming the folder
    with pytest.raises(
        PartyError,
        match=r"^party telecom: no model to predict with: train first \(no predict state of training "
        r"0123abcd in .*telecom/vertical/0123abcd\)$",
    ):
        _party(cfg, "telecom", frames["telecom"], folder).call(
            "owner_predict", ["C00001"], np.zeros((0, 3), dtype=np.int64), [], training_id="0123abcd"
        )


def test_a_restarted_party_predicts_with_the_latest_finished_training_not_a_later_unfinished_one(frames, tmp_path):
    """An owner's bins of an unfinished later training (other bins) must not answer for the finished model."""
    cfg = _cfg()

    def parties(c=cfg):
        return [_party(c, o, frames[o], tmp_path) for o in ORGS]

    coord = VerticalCoordinator(cfg, parties())
    coord.start()
    coord.run_round(1)  # stopped before the model was collected: the training did not finish
    no_model = r"^party bank: no model to predict with: train first "
    with pytest.raises(PartyError, match=no_model + r"\(no finished training in .*bank/vertical\)$"):
        VerticalCoordinator(cfg, parties()).predict_raw(["C00001"])
    bank = _party(cfg, "bank", frames["bank"], tmp_path)
    bank.output_dir = None
    with pytest.raises(PartyError, match=no_model + r"\(no --output folder\)$"):
        bank.call("vertical_predict", ["C00001"])

    finished = VerticalCoordinator(cfg, parties())
    finished.start()
    _train(finished)
    scores = _scores(finished)
    coarser = _cfg(max_bin=4)  # a later training with other bins, stopped after its first round
    later = VerticalCoordinator(coarser, parties(coarser))
    later.start()
    later.run_round(1)
    again = parties()
    assert _scores(VerticalCoordinator(cfg, again)) == scores
    assert [p._kept[0] for p in again] == [finished.training_id] * 3
