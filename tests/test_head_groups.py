"""Group ablation against random head sets, and head-output patching (tiny models)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from kc_utils import models
from kc_utils.analysis import head_groups
from kc_utils.analysis.head_ablation import run_with_heads_ablated
from kc_utils.data.prompts import make_batch


@pytest.fixture()
def batch(tiny_model, country_batch_args):
    return make_batch(tiny_model, *country_batch_args)


def test_random_head_sets_never_contain_the_excluded_heads_and_are_deterministic():
    pool = [f"a{layer}.h{h}" for layer in range(3) for h in range(4)]
    group = ["a1.h0", "a2.h3"]
    draws = head_groups.random_head_sets(pool, 2, 50, exclude=group, seed=3)
    assert len(draws) == 50 and all(len(d) == 2 and len(set(d)) == 2 for d in draws)
    assert not any(set(d) & set(group) for d in draws)
    assert draws == head_groups.random_head_sets(pool, 2, 50, exclude=group, seed=3)
    assert draws != head_groups.random_head_sets(pool, 2, 50, exclude=group, seed=4)
    with pytest.raises(ValueError, match="cannot draw 11 heads"):
        head_groups.random_head_sets(pool, 11, 1, exclude=group)


def test_group_ablation_rows_match_direct_ablation(tiny_model, batch):
    group = ["a1.h0", "a1.h2"]
    table = head_groups.group_ablation(tiny_model, batch, group, n_random=4, ablation="zero")
    assert list(table["set"]) == ["none", "group"] + ["random"] * 4
    expected = head_groups.answer_scores(run_with_heads_ablated(tiny_model, batch, group, "zero"), batch)
    assert table.loc[1, "top1"] == pytest.approx(float(expected["top1"].mean()))
    assert table.loc[1, "prob"] == pytest.approx(float(expected["prob"].mean()))
    for heads in table.loc[table["set"] == "random", "heads"]:
        assert not set(heads) & set(group)
    with torch.no_grad():
        plain = head_groups.answer_scores(models.run_with_hooks(tiny_model, batch.clean), batch)
    assert table.loc[0, "prob"] == pytest.approx(float(plain["prob"].mean()))


def test_group_ablation_summary_on_a_hand_made_table():
    table = pd.DataFrame(
        {
            "set": ["none", "group", "random", "random", "random"],
            "top1": [1.0, 0.2, 0.9, 0.7, 0.8],
            "prob": [0.9, 0.1, 0.8, 0.6, 0.7],
        }
    )
    summary = head_groups.group_ablation_summary(table)
    assert summary["top1_original"] == 1.0 and summary["top1_group"] == 0.2
    assert summary["top1_random_mean"] == pytest.approx(0.8)
    assert summary["top1_random_std"] == pytest.approx((0.02 / 3) ** 0.5)
    assert summary["n_random"] == 3


def test_patching_a_head_at_the_last_position_equals_a_hand_made_swap(tiny_model, batch):
    """Patching a head at the last position equals running with that head's output swapped by hand."""
    head = "a1.h1"
    logits = head_groups.patch_head_outputs(tiny_model, batch, [head], position="last")
    _, corrupt = models.run_with_cache(tiny_model, batch.corrupt, [models.head_result_hook(1)])
    rows = torch.arange(len(batch))

    def swap(result, hook):
        result = result.clone()
        result[rows, batch.last_pos, 1] = corrupt[models.head_result_hook(1)][rows, batch.last_pos, 1]
        return result

    with torch.no_grad():
        expected = models.run_with_hooks(tiny_model, batch.clean, [(models.head_result_hook(1), swap)])
    torch.testing.assert_close(logits, expected)
    pool = head_groups.all_heads(tiny_model)
    table = head_groups.group_vs_random(tiny_model, batch, [head], pool, "patching", n_random=3, overlap=False)
    assert list(table["set"]) == ["none", "group", "random", "random", "random"]
    assert table["flip"].between(0, 1).all()


def test_bad_inputs_get_clear_errors(tiny_model, batch):
    with pytest.raises(ValueError, match="empty"):
        head_groups.group_ablation(tiny_model, batch, [], n_random=2)
    with pytest.raises(ValueError, match="unknown ablation"):
        head_groups.group_ablation(tiny_model, batch, ["a1.h0"], ablation="resample")
    with pytest.raises(ValueError, match="unknown position"):
        head_groups.patch_head_outputs(tiny_model, batch, ["a1.h0"], position="first")
    no_corrupt = make_batch(tiny_model, list(batch.prompts), list(batch.answers))
    with pytest.raises(ValueError, match="corrupted prompts"):
        head_groups.patch_head_outputs(tiny_model, no_corrupt, ["a1.h0"])


def test_heads_for_single_ablation_keeps_every_role_and_samples_the_rest():
    import pandas as pd

    from kc_utils.analysis.head_ablation import heads_for_single_ablation

    roles = pd.DataFrame(
        {
            "head": [f"a1.h{i}" for i in range(8)],
            "role": ["mover", "other", "relation", "other", "other", "mix", "other", "other"],
        }
    )
    assert heads_for_single_ablation(roles) == roles["head"].tolist()
    picked = heads_for_single_ablation(roles, max_other=2, seed=3)
    assert {"a1.h0", "a1.h2", "a1.h5"} <= set(picked) and len(picked) == 5
    assert picked == [h for h in roles["head"] if h in picked]  # the table's order
    assert picked == heads_for_single_ablation(roles, max_other=2, seed=3)  # seeded
    assert heads_for_single_ablation(roles, max_other=0) == ["a1.h0", "a1.h2", "a1.h5"]
    with pytest.raises(ValueError, match="max_other"):
        heads_for_single_ablation(roles, max_other=-1)
