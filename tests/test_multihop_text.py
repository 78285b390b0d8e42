"""Notebook 07's sentences on hand-made tables whose answer is known."""

from __future__ import annotations

import pandas as pd
import pytest

from kc_utils.analysis.multihop_text import (
    bridge_lens_text,
    bridge_patching_text,
    gap_text,
    movers_text,
    overlap_comparison,
    overlap_text,
    patching_sizes_text,
)
from kc_utils.circuits.overlap import MEASURES


def _gap(composed: int, both: int, bridge: int, common: float) -> dict:
    return {
        "composition": "a+b",
        "both hops known": both,
        "composed (both hops and two-hop)": composed,
        "composed share": composed / both,
        "two-hop top-1 is the bridge": bridge,
        "most common answer share": common,
    }


def test_gap_text_says_whether_the_model_composes():
    no = gap_text(pd.DataFrame([_gap(10, 133, 30, 0.21)]), top_k=1)
    assert no.startswith("The model does not compose: at best 8%")
    assert "10 of 133" in no and "gap 92%" in no and "not above the 21%" in no and "bridge itself in 30 of 133" in no
    yes = gap_text(pd.DataFrame([_gap(60, 100, 2, 0.2), {**_gap(1, 50, 40, 0.3), "composition": "c+d"}]), top_k=1)
    assert yes.startswith("The model composes: at best 60% of the facts it knows at both hops (`a+b`)")
    assert "`c+d`: 1 of 50" in yes
    with pytest.raises(ValueError, match="lacks columns"):
        gap_text(pd.DataFrame([{"composition": "a+b"}]), top_k=1)


def _observed(values: dict[str, float]) -> pd.DataFrame:
    rows = []
    for a, b in (("first_hop", "two_hop"), ("second_hop", "two_hop")):
        rows.append({"a": a, "b": b, **{m: values[m] for m in MEASURES}})
    return pd.DataFrame(rows)


def _comparison(observed: float, random: tuple[float, float], unrelated: float) -> pd.DataFrame:
    obs = _observed({m: observed for m in MEASURES})
    draws = pd.DataFrame(
        [
            {"a": a, "b": b, "draw": i, **{m: random[0] + s * random[1] for m in MEASURES}}
            for a, b in (("first_hop", "two_hop"), ("second_hop", "two_hop"))
            for i, s in enumerate((-1, 1))
        ]
    )
    others = pd.DataFrame(
        [
            {"pair_a": a, "pair_b": b, "relation": "u", **{m: unrelated for m in MEASURES}}
            for a, b in (("first_hop", "two_hop"), ("second_hop", "two_hop"))
        ]
    )
    return overlap_comparison(obs, draws, others)


def test_overlap_comparison_aggregates_the_baselines():
    table = _comparison(0.8, (0.3, 0.1), 0.5)
    assert table["pair"].tolist() == ["first hop vs two-hop", "second hop vs two-hop"]
    assert table.loc[0, "edge_overlap_random_mean"] == pytest.approx(0.3)
    assert table.loc[0, "edge_overlap_random_std"] == pytest.approx(0.1)
    assert table.loc[0, "node_jaccard_unrelated_max"] == 0.5 and table.loc[0, "n_random"] == 2


def test_overlap_text_verdicts():
    reuse = overlap_text(_comparison(0.8, (0.3, 0.1), 0.5))
    assert "70–83% shared nodes and 45–63% shared edges" in reuse
    assert "**first hop vs two-hop**: 80% of nodes and 80% of edges shared" in reuse
    assert "30% ± 10%" in reuse and "reuses the single-hop circuits" in reuse
    common = overlap_text(_comparison(0.8, (0.3, 0.1), 0.78))
    assert "common to many relations" in common
    none = overlap_text(_comparison(0.35, (0.3, 0.1), 0.2))
    assert "no more edges with the two-hop circuit than random circuits" in none


def test_movers_text():
    row = {"n_movers": 6, "movers_in_circuit": 6, "movers_share": 1.0, "chance": 1.0, "missing": ""}
    assert "holds 6 of the first hop's 6 mover heads (100%)" in movers_text(pd.DataFrame([row]))
    assert "says nothing about reuse" in movers_text(pd.DataFrame([row]))
    row = {"n_movers": 4, "movers_in_circuit": 3, "movers_share": 0.75, "chance": 0.2, "missing": "a9.h1"}
    text = movers_text(pd.DataFrame([row]))
    assert "more often than heads at random" in text and "Missing: a9.h1." in text
    row = {**row, "movers_in_circuit": 1, "movers_share": 0.25}
    assert "no more often" in movers_text(pd.DataFrame([row]))


def test_bridge_lens_text():
    summary = pd.DataFrame(
        {
            "layer": [-1, 0, 1, 2],
            "n_prompts": [20] * 4,
            "bridge_last_median": [900, 300, 40, 2],
            "bridge_last_top": [0.0, 0.0, 0.2, 0.9],
            "control_last_median": [900, 500, 400, 300],
            "control_last_top": [0.0, 0.0, 0.0, 0.05],
            "bridge_subject_median": [500, 1, 0, 0],
            "bridge_subject_top": [0.0, 0.6, 0.95, 0.95],
            "control_subject_median": [600, 40, 50, 60],
            "control_subject_top": [0.0, 0.1, 0.15, 0.1],
        }
    )
    text = bridge_lens_text(summary, n_layers=3)
    assert text.startswith("Over 20 two-hop prompts")
    assert "At the first hop's subject, from block 0 of 3 on" in text
    assert "At the last position, from block 2 of 3 on" in text and "90% of prompts have it in the top 10" in text
    assert "its best block is the last (block 2), where 95% of prompts" in text  # the subject's largest gap
    flat = summary.assign(bridge_last_top=[0.0, 0.0, 0.05, 0.1], control_last_top=0.0)
    text = bridge_lens_text(flat, n_layers=3)
    assert "At the last position, no block puts the bridge in the top 10 for half of the prompts" in text
    assert "its best block is the last (block 2), where 10% of prompts" in text
    early = summary.assign(bridge_last_top=[0.0, 0.2, 0.1, 0.1], control_last_top=0.0)
    assert "at its best (block 0), 20% of prompts" in bridge_lens_text(early, n_layers=3)


def _patching(group: float, random: float, std: float, n: int, pool: int) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "follow_corrupt": 0.1,
                "follow_clean": 1.0,
                "follow_group": group,
                "recovery_corrupt": 0.0,
                "recovery_clean": 1.0,
                "recovery_group": group,
                "follow_random_mean": random,
                "follow_random_std": std,
                "recovery_random_mean": random,
                "recovery_random_std": std,
                "n_components": n,
                "n_random": 20,
                "n_prompts": 8,
                "pool": pool,
            }
        ]
    )


def test_bridge_patching_text():
    special = bridge_patching_text(_patching(0.9, 0.3, 0.1, 10, 100))
    assert "On 8 two-hop prompts" in special and "brings it back in 90%" in special
    assert "30% ± 10%" in special and "follows the bridge" in special
    big = bridge_patching_text(_patching(1.0, 0.9, 0.15, 10, 16))
    assert "62% of all components" in big and "cannot single it out" in big
    plain = bridge_patching_text(_patching(0.35, 0.3, 0.1, 10, 100))
    assert "not special here" in plain


def _sizes(recovery: list[float], random: list[float], std: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "size": [5, 10, 40],
            "pool": 100,
            "follow_group": recovery,
            "follow_random_mean": random,
            "follow_random_std": std,
            "recovery_group": recovery,
            "recovery_random_mean": random,
            "recovery_random_std": std,
        }
    )


def test_patching_sizes_text():
    text = patching_sizes_text(_sizes([0.2, 0.7, 0.9], [0.1, 0.3, 0.8], [0.1, 0.1, 0.1]))
    assert "5 (5% of the 100 components): follow 20% against 10% ± 10%" in text
    assert (
        "At 10 components the circuit's strongest components restore more than random sets of the same size "
        "(not at 5 and 40)" in text
    )
    text = patching_sizes_text(_sizes([0.2, 0.7, 0.95], [0.1, 0.3, 0.5], [0.1, 0.1, 0.1]))
    assert (
        "At 10 and 40 components the circuit's strongest components restore more than random sets of the same size "
        "(not at 5):" in text
    )
    one = _sizes([0.9, 0.7, 0.95], [0.1, 0.3, 0.9], [0.1, 0.1, 0.1]).assign(size=[1, 2, 3])
    assert "At 1 and 2 components" in patching_sizes_text(one) and "(not at 3)" in patching_sizes_text(one)
    assert "At 1 component the" in patching_sizes_text(one.iloc[:1])
    text = patching_sizes_text(_sizes([0.2, 0.36, 0.9], [0.1, 0.3, 0.8], [0.1, 0.03, 0.1]))
    assert "At no size do the circuit's strongest components restore more" in text  # 0.36 is within 0.05 of 0.30
    with pytest.raises(ValueError, match="no 'pool' column|pool"):
        patching_sizes_text(_sizes([0.2] * 3, [0.1] * 3, [0.1] * 3).drop(columns="pool"))
