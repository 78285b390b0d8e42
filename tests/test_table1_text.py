"""Table-1 sentences on hand-made tables whose answers are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kc_utils.circuits.table1_text import degenerate_random_relations, describe_table1, paper_claim_holds


def _table():
    rows = []
    for name, random, random_std, empty, circuit, nodes, objects in (
        ("capital", 0.20, 0.0, 0.20, 1.00, 0.50, 40),  # random == empty: degenerate
        ("language", 0.35, 0.05, 0.20, 0.90, 0.40, 12),  # random differs from empty
        ("phase", 0.96, 0.0, 0.96, 0.50, 0.96, 3),  # corrupted run already high; circuit keeps < 70%
    ):
        row = {
            "type": "factual",
            "relation": name,
            "budget": "knee 0.9",
            "#edges": 10,
            "% edges": 2.0,
            "knee70": 6.0,
            "knee90": 10.0 if name != "phase" else np.nan,
            "#Dval": 24,
            "#Dtest": 24,
            "#objects": objects,
            "Dval faithfulness": 0.9,
            "Dtest faithfulness": 0.8,
            "Dtest hit@10 other": 0.3,
            "Dtest hit@1 other": 0.1,
            "corrupt high": empty >= 0.5,
        }
        for split in ("Dval", "Dtest"):
            for metric, scale in (("hit@10", 1.0), ("hit@1", 0.5)):
                values = {"full": 1.0, "circuit": circuit, "empty": empty, "random": random, "nodes": nodes}
                for kind, value in values.items():
                    row[f"{split} {metric} {kind}"] = value * scale
                row[f"{split} {metric} random std"] = random_std
                row[f"{split} {metric} nodes std"] = 0.1
        rows.append(row)
    table = pd.DataFrame(rows)
    average = {"type": "", "relation": "average", **table.select_dtypes("number").mean().to_dict()}
    return pd.concat([table, pd.DataFrame([average])], ignore_index=True)


def test_degenerate_baseline_and_claim_are_read_from_the_table():
    table = _table()
    assert degenerate_random_relations(table) == ["capital", "phase"]
    assert paper_claim_holds(table) == ["capital", "language"]


def test_description_states_what_the_table_says():
    text = describe_table1(_table())
    assert "degenerate** in 2 of 3 relations" in text
    assert "phase (3 distinct answers)" in text
    assert "holds on Dtest for 2 of 3 relations (not for phase), with circuits of 2.0% of the edges." in text
    assert "on Dval: 10.0 edges on average (range 10–10); for 70%: 6.0 edges" in text  # knee90: the two that reach it
    no_knee = _table().assign(knee90=np.nan)
    assert "logit difference on Dval: never reached; for 70%: 6.0 edges" in describe_table1(no_knee)
    assert "circuit**" in text and "0.80 for the circuit" in text
    # Hit@1 other 0.10 against circuit (1.0 + 0.9 + 0.5) / 2 / 3 = 0.40: a quarter of it
    assert "(25% of it) — each relation needs much of its own circuit" in text
    # gains against node-set random circuits: (0.5 + 0.5 − 0.46) / 3 for Hit@10
    assert f"{(0.5 + 0.5 - 0.46) / 3:+.2f} Dtest Hit@10" in text


def test_description_refuses_an_empty_table():
    with pytest.raises(ValueError, match="no relation rows"):
        describe_table1(_table().iloc[[-1]])


def test_node_set_baseline_equal_to_empty_is_said():
    table = _table()
    assert "wiring of these components" not in describe_table1(table)
    for split in ("Dval", "Dtest"):
        table[f"{split} hit@1 nodes"] = table[f"{split} hit@1 empty"]
    assert "wiring of these components" in describe_table1(table)


def test_large_circuits_are_not_called_small_and_little_wiring_gain_is_said():
    table = _table()
    table["% edges"] = 60.0
    for split in ("Dval", "Dtest"):
        for metric in ("hit@10", "hit@1"):
            table[f"{split} {metric} nodes"] = table[f"{split} {metric} circuit"]
    text = describe_table1(table)
    assert "but these circuits are not small: they keep 60% of the edges" in text
    assert "The wiring adds little beyond the components here" in text


def test_a_large_hit10_gain_says_the_wiring_matters_even_when_hit1_gains_little():
    """SmolLM2's ACDC circuits: Hit@1 0.10 with the nodes at 0.00 (a gain under 0.1), but +0.26 Hit@10."""
    table = _table()
    for split in ("Dval", "Dtest"):
        table[f"{split} hit@1 nodes"] = table[f"{split} hit@1 circuit"] - 0.05
        table[f"{split} hit@10 nodes"] = table[f"{split} hit@10 circuit"] - 0.3
    text = describe_table1(table)
    assert "The circuit's wiring matters: against random circuits on its own nodes the circuit gains +0.30 Dtest" in (
        text
    )
    assert "adds little" not in text
    for split in ("Dval", "Dtest"):
        table[f"{split} hit@10 nodes"] = table[f"{split} hit@10 circuit"] - 0.05
    assert "The wiring adds little beyond the components here: " in describe_table1(table)


def test_model_against_paper_sentence_is_computed_from_the_shape():
    from kc_utils.circuits.paper import describe_model_against_paper
    from kc_utils.shape import ModelShape

    real = describe_model_against_paper("smollm2-135m", ModelShape(30, 9, 3, 576), 70_651, trained_here=False)
    assert "30 layers of 9 query heads sharing 3 key/value heads and d_model 576" in real
    assert "70,651 edges — smaller than GPT-2 medium's (24 layers of 16 heads" in real
    assert "organism" not in real and "trained in this repository" not in real
    organism = describe_model_against_paper("kc-organism", ModelShape(4, 4, 4, 128), 479, trained_here=True)
    assert "4 layers of 4 heads and d_model 128" in organism and "trained in this repository" in organism
    big = describe_model_against_paper("x", ModelShape(32, 32, 8, 4096), 1_600_000, trained_here=False)
    assert "larger than GPT-2 medium's" in big
