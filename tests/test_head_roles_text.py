"""Notebook 02's sentence builders on hand-made tables whose right sentence is known."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from kc_utils.analysis import head_roles_text as text
from kc_utils.analysis.heads import assign_head_roles, role_sensitivity


def _roles():
    table = pd.DataFrame(
        {
            "head": ["a3.h1", "a2.h0", "a1.h1", "a2.h2", "a2.h1", "a1.h0"],
            "attn_subject": [1.0, 0.9, 0.0, 0.0, 0.0, 0.5],
            "attn_relation": [0.0, 0.0, 1.0, 1.0, 0.0, 0.5],
            "attn_function": [0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            "attn_other": [0.0, 0.1, 0.0, 0.0, 0.0, 0.0],
            "dla": [3.4, 2.1, 1.3, -2.0, 0.1, 1.2],
            "relation_type_auc": [0.5, 0.6, 0.94, 0.02, 0.4, 0.8],
            "answer_rank": [10.5, 5.0, 97.0, 2585.0, 1888.0, 40.0],
            "top_tokens": [["French", "Paris"], ["Lima"], ["Hindi"], ["x"], ["y"], ["z"]],
            "in_circuit": [True, True, False, True, False, True],
        }
    )
    return assign_head_roles(table)


def test_roles_text_names_counts_strongest_heads_and_circuit_membership():
    roles = _roles()
    assert roles["role"].tolist() == ["mover", "mover", "relation", "other", "other", "mix"]
    sentence = text.roles_text(roles)
    assert sentence.startswith("6 heads: 2 mover, 1 mix, 1 relation and 2 other.")
    assert (
        "The strongest mover, `a3.h1`, puts 1.00 of the last token's attention on the subject and adds +3.40"
        in sentence
    )
    assert "answer ranks 10 in its projection" in sentence and "French, Paris" in sentence
    assert "The clearest relation head, `a1.h1`, puts 1.00" in sentence and "AUC 0.94" in sentence
    assert "`a2.h2` reads the relation words (1.00) but suppresses the relation's objects (AUC 0.02" in sentence
    assert "function words such as *The* or *of* (not relation words): `a2.h1`" in sentence
    # circuit: a3.h1, a2.h0, a2.h2, a1.h0 -> movers a3.h1, a2.h0, a1.h0 (mix); relation heads: a1.h0 only
    assert "contains 3 of the 3 movers and 1 of the 2 relation heads (4 of its 6 heads" in sentence


def test_roles_text_when_no_role_is_found():
    roles = _roles()
    roles["role"] = "other"
    sentence = text.roles_text(roles.drop(columns=["in_circuit"]))
    assert "No head both reads the subject and writes the answer" in sentence
    assert "No head both reads the relation words and promotes" in sentence
    with pytest.raises(ValueError, match="lacks columns \\['role'"):
        text.roles_text(roles.drop(columns=["role"]))


def test_sensitivity_text_reports_stable_ranges_and_the_most_sensitive_threshold():
    table = pd.DataFrame(
        {
            "head": ["a", "b", "c"],
            "attn_subject": [1.0, 1.0, 0.0],
            "attn_relation": [0.0, 0.0, 0.8],
            "dla": [0.6, 2.5, 0.0],
            "relation_type_auc": [0.5, 0.5, 0.8],
        }
    )
    grid = {"subject_threshold": (0.1, 0.3, 0.9), "min_dla": (0.0, 0.5, 1.0, 2.0, 3.0)}
    sentence = text.sensitivity_text(role_sensitivity(table, grid))
    assert "`subject_threshold` (used: 0.3): no head changes role anywhere on the grid (0.1–0.9)." in sentence
    # min_dla: 0.0 and 0.5 make `a` a mover (1 change); 1.0-2.0 unchanged; 3.0 drops `b` (1 change)
    assert "`min_dla` (used: 1): roles unchanged for 1–2; at 0, 1 of 3 heads change role (2 mover" in sentence
    assert sentence.endswith("The assignment depends most on `min_dla` (up to 1 head of 3 change role).")
    narrow = text.sensitivity_text(role_sensitivity(table, {"min_dla": (0.5, 1.0, 3.0)}))
    assert "`min_dla` (used: 1): every other value on the grid changes some role; at 0.5," in narrow


def test_layers_text_agrees_with_its_table():
    per_layer = pd.DataFrame(
        {"mover": [0, 8, 8, 26], "relation": [0, 6, 2, 0], "other": [0, 4, 13, 6]}, index=pd.Index([0, 1, 2, 3])
    )
    sentence = text.layers_text(per_layer, n_layers=4)
    assert "42 mover heads: 26 in layer 3, 19% in the first half (mean layer 2.43)." in sentence
    assert "8 relation heads: 6 in layer 1, 75% in the first half (mean layer 1.25)." in sentence
    assert "The last layer (3) holds 26 mover, 6 other heads: mostly mover heads." in sentence
    assert "the heads that read the relation sit earlier (mean layer 1.25) than the movers" in sentence
    assert "mostly other" not in sentence
    flipped = text.layers_text(per_layer.rename(columns={"mover": "relation", "relation": "mover"}), n_layers=4)
    assert "Unlike the paper's picture" in flipped


def test_lens_text_reads_its_summary_rows():
    summary = pd.DataFrame(
        {
            "n_prompts": [24.0, 24.0],
            "last_reached": [1.0, 1.0],
            "last_median": [3.0, 1.0],
            "subject_reached": [0.25, 0.75],
            "subject_median": [0.5, float("nan")],
            "subject_earlier": [0.125, 0.6],
        },
        index=["top-1", "top-10"],
    )
    sentence = text.lens_text(summary, n_layers=4)
    assert "**top-1**: the last position reaches it in 100% of the 24 prompts, at median layer 3.0" in sentence
    assert "(after 100% of the blocks)" in sentence and "subject's positions in 25%, at median layer 0.5" in sentence
    assert "strictly earlier in 12% of the prompts" in sentence
    assert "at median layer never" in sentence  # a NaN median says so
    assert sentence.endswith("mostly **not** readable at the subject before it appears at the last position (top-1).")


def _group_summary():
    rows = []
    for relation, g_top1, flip in (("r1", 0.0, 1.0), ("r2", 0.05, 1.0), ("r3", 0.46, 0.88)):
        for test in ("ablation", "patching"):
            rows.append(
                dict(relation=relation, group="movers", test=test, n_heads=6, top1_group=g_top1,
                     top1_random_mean=0.8, top1_random_std=0.1, flip_group=flip, flip_random_mean=0.4,
                     flip_random_std=0.3, n_random=20, n_distinct=19, mean_overlap=2.8)
            )  # fmt: skip
            rows.append(
                dict(relation=relation, group="relation heads", test=test, n_heads=2, top1_group=1.0,
                     top1_random_mean=1.0, top1_random_std=0.0, flip_group=0.0, flip_random_mean=0.01,
                     flip_random_std=0.01, n_random=20, n_distinct=20, mean_overlap=0.3)
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_group_tests_text_counts_relations_and_flags_degenerate_baselines():
    sentence = text.group_tests_text(_group_summary(), ablation="mean")
    assert "**Movers** (6 heads per relation). Mean-ablating them together leaves top-1 accuracy 0.00–0.46" in sentence
    assert "(at most 0.10 in 2 of 3 relations), against 0.80 for random same-size sets" in sentence
    assert "more than two standard deviations below the random sets in 3 of 3 relations" in sentence
    assert "flips the answer to the corrupt answer in 0.88–1.00 of the prompts (all of them in 2 of 3" in sentence
    assert "more than two standard deviations above them in 0 of 3 relations" in sentence  # 1.0 < 0.4 + 0.6
    assert "patching them is a negative control" in sentence  # the relation heads flip nothing
    assert (
        "In 3 of 3 relations the relation heads ablated together leave accuracy within 0.10 of the random" in sentence
    )
    assert "mean ablation cannot show whether the relation heads matter" in sentence
    assert "mean ablation cannot show whether the movers matter" not in sentence
    assert "Random sets share 2.8 heads with the movers" in sentence
    # relation-head baselines have std 0 (every random set scores 1.0); the movers' 19 distinct of 20 are fine
    assert "Degenerate ablation baselines" in sentence
    assert "r1 (relation heads: 20 distinct of 20 sets, std 0.00)" in sentence and "r1 (movers:" not in sentence
    zero = text.group_tests_text(_group_summary(), ablation="zero")
    assert "Zero-ablating" in zero and "cannot show" not in zero


def test_group_tests_text_when_a_group_is_missing():
    summary = _group_summary()
    summary.loc[(summary["group"] == "relation heads") & (summary["relation"] == "r2"), "n_heads"] = 0
    sentence = text.group_tests_text(summary)
    assert "No relation heads in r2." in sentence
    summary.loc[summary["group"] == "relation heads", "n_heads"] = 0
    assert "No relation heads were found in any of the 3 relations." in text.group_tests_text(summary)


def test_pool_text_groups_left_out_heads_by_layer():
    heads = [f"a{layer}.h{h}" for layer in range(4) for h in range(4)]
    pool = heads[4:]
    sentence = text.pool_text(heads, pool, reason="block 0 has no attention")
    assert sentence == (
        "Random sets are drawn from the 12 heads that write something on these prompts; all 4 heads of layer 0 "
        "output exactly zero (block 0 has no attention) and are left out of the pool."
    )
    assert "a2.h1" in text.pool_text(heads, [h for h in heads if h != "a2.h1"])
    assert text.pool_text(heads, heads) == "Random sets are drawn from all 16 heads."


def test_single_ablation_text():
    table = pd.DataFrame(
        {
            "relation": ["r1", "r2"],
            "movers": [6, 6],
            "relation heads": [2, 0],
            "mover Δp": [-0.02, -0.0002],
            "relation Δp": [-0.01, math.nan],
            "mover share": [0.5, 0.3],
            "relation share": [0.2, math.nan],
            "chance": [0.02, 0.02],
        }
    )
    sentence = text.single_ablation_text(table)
    assert "changes the answer's probability by -0.020–-0.000 on average per relation (2 relations)" in sentence
    assert "other objects of the relation 0.40 of the time, 20× chance" in sentence
    assert (
        "gaining tokens are other objects 0.20 of the time (10× chance; lower than after a mover ablation in 1 of 1"
        in sentence
    )
    assert "movers are redundant" in sentence  # |Δp| at most 0.02
    alone = text.single_ablation_text(table.assign(**{"mover Δp": [-0.12, -0.10]}))
    assert "a single mover matters on its own" in alone and "redundant" not in alone


def test_circuit_sources_text():
    sources = pd.DataFrame(
        {
            "relation": ["r1", "r2", "r3"],
            "source": ["reused", "recomputed", "reused"],
            "reason": ["match", "no saved circuit at x/r2.json", "match"],
        }
    )
    sentence = text.circuit_sources_text(sources)
    assert text.circuit_sources_text(sources, folder="`runs/x`").startswith("2 circuits reused from `runs/x` (")
    assert sentence == (
        "2 circuits reused from notebook 01 (recorded settings match): r1, r3. 1 circuit recomputed here with "
        "the same settings — r2: no saved circuit at x/r2.json."
    )


def test_departures_text():
    roles = _roles().assign(relation="r1")
    sentence = text.departures_text(roles, n_layers=4, n_heads=4, n_writing=12, model_name="kc-organism")
    assert sentence.startswith(
        "`kc-organism` has 4 layers of 4 heads (the paper's GPT-2 medium: 24 × 16), and 12 of its 16"
    )
    # peak attention per head: 1, 0.9, 1, 1, 1, 0.5 -> mean 0.9
    assert "puts 0.90 of its attention on a single kind of position" in sentence
    assert "Movers are 3 heads per relation (25.0% of the 12 writing heads" in sentence  # 2 movers + 1 mix
    assert "nearly one-hot" in sentence
    # a random set of 3 of 12 writing heads holds 3 * 3 / 12 = 0.75 movers on average
    assert "holds 0.75 movers on average, so the random baseline is a set of non-movers." in sentence
    crowded = text.departures_text(roles, n_layers=4, n_heads=4, n_writing=6, model_name="m")
    assert "holds 1.50 movers on average, so it often contains several" in crowded
    spread = roles.assign(attn_subject=0.3, attn_relation=0.3, attn_other=0.4)
    assert "attention is spread" in text.departures_text(spread, 4, 4, 12, "m")
