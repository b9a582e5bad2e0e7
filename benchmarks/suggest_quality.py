"""Mapping-suggestion quality on real schema pairs.

Usage::

    python benchmarks/suggest_quality.py [--pair NAME ...] [--details]

Runs ``fedmine schema suggest`` (:func:`fedmine.schema.suggest.suggest_mapping`)
for the new organisation of each pair in tests/data/suggest (public tables
and realistic renamings of them; tests/data/suggest/README.md) and compares
the proposal with the mapping a person wrote. Prints per pair the renames
found, missed and wrong (every proposed rename is above the acceptance
threshold), the ``values``/``units``/``scale``/``missing`` entries found, and
the seconds taken; then the totals against the goals: at least 90 % of the
expected renames found and no wrong one.

``--wide`` also times the scoring on a seeded table of 200 columns against
80 canonical features that none of them is (``unrelated_table``): seconds
for the summaries, the 16,000 pairs and the assignment, and the proposals
made (every one would be wrong). Record ``uptime`` beside the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from fedmine.schema.suggest import choose, score_pair, summarise_column
from tests.schema.suggest_pairs import evaluate, pair_names, unrelated_table

GOAL_RECALL = 0.9
GOAL_WRONG = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", action="append", default=[], help="only this pair (repeatable)")
    parser.add_argument("--details", action="store_true", help="also print each proposal's YAML")
    parser.add_argument("--wide", action="store_true", help="also time a 200-column table against 80 features")
    args = parser.parse_args()
    names = args.pair or pair_names()
    expected = found = wrong = entries = entries_found = 0
    labels = labels_found = 0
    seconds = 0.0
    print(f"{'pair':16} {'renames found':>14} {'wrong':>6} {'entries found':>14} {'seconds':>8}")
    for name in names:
        r, s = evaluate(name)
        expected += len(r.expected)
        found += len(r.found)
        wrong += len(r.wrong)
        entries += r.entries_expected
        entries_found += r.entries_found
        seconds += r.seconds
        label_src = [src for src, dst in r.expected.items() if dst == r.label]
        labels += len(label_src)
        labels_found += sum(r.proposed.get(src) == r.label for src in label_src)
        print(
            f"{name:16} {len(r.found):>6} of {len(r.expected):<5} {len(r.wrong):>6} "
            f"{r.entries_found:>6} of {r.entries_expected:<5} {r.seconds:>8.2f}"
        )
        for src in r.missed:
            got = r.proposed.get(src)
            print(
                f"    missed {src!r} -> {r.expected[src]}" + (f" (proposed {got}, {r.scores[src]:.2f})" if got else "")
            )
        for src in r.wrong:
            if src not in r.expected:
                score = r.scores.get(src, float("nan"))
                print(f"    wrong  {src!r} -> {r.proposed[src]} ({score:.2f}; maps onto nothing)")
        for entry in r.missed_entries:
            print(f"    entry missed: {entry}")
        if args.details:
            print("    " + s.to_yaml().replace("\n", "\n    "))
    recall = found / expected if expected else float("nan")
    print()
    print(f"renames found: {found} of {expected} ({recall:.1%}; goal {GOAL_RECALL:.0%})")
    print(f"wrong renames above the acceptance threshold: {wrong} (goal {GOAL_WRONG})")
    print(f"labels found: {labels_found} of {labels}")
    print(f"values/units/scale/missing entries found: {entries_found} of {entries}")
    print(f"seconds: {seconds:.2f} for {len(names)} pairs (profile of the mapped organisations included)")
    met = recall >= GOAL_RECALL and wrong <= GOAL_WRONG
    print("goals met" if met else "goals NOT met")
    if args.wide:
        wide()


def wide() -> None:
    specs, frame = unrelated_table()
    t0 = time.perf_counter()
    summaries = [summarise_column(str(c), frame[c]) for c in frame.columns]
    t1 = time.perf_counter()
    candidates = [
        c
        for s in summaries
        for f, spec in specs.items()
        if (c := score_pair(s, feature=f, spec=spec, fed={})) is not None
    ]
    t2 = time.perf_counter()
    chosen = choose(candidates, list(frame.columns), list(specs))
    t3 = time.perf_counter()
    pairs = len(frame.columns) * len(specs)
    print()
    print(f"wide table: {len(frame.columns)} columns x {len(specs)} features ({pairs} pairs, {len(frame)} rows)")
    print(
        f"  summaries {t1 - t0:.2f} s, scoring {t2 - t1:.2f} s ({pairs / (t2 - t1):,.0f} pairs/s), "
        f"assignment {t3 - t2:.3f} s; proposals {len(chosen)} (all would be wrong)"
    )


if __name__ == "__main__":
    main()
