"""Every headline claim of the README's findings table and of the notebooks' findings is checked against its table.

The long findings of each notebook live in ``docs/findings/<notebook>.md`` (shown on the notebook's docs page), one
section per model (``### On ... (`<model>`...``); the README's "Findings at a glance" table holds one short row per
notebook with a verdict per model. A claim is a row of :data:`CLAIMS` (the findings) or :data:`README_CLAIMS` (the
README table): the notebook, the versioned CSV under ``figures/`` (whose name ends in the model) and a function that
computes, from that table, the exact words the text must contain. When a rerun changes a table, the words change and
this test fails until the text says what the table says. For the findings listed in :data:`FULLY_CHECKED`, and for
every cell of the README table, every number must also belong to a checked claim, so they say nothing the tables do
not.

To add a claim: append ``Claim(notebook, table, words)``; ``words(table) -> str`` formats the numbers as the text
writes them. To add a model to the README table: a column headed with the model's name in backticks, a verdict in
each cell, and a ``README_CLAIMS`` entry for each number it states.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "figures"
FINDINGS = ROOT / "docs" / "findings"


@dataclass(frozen=True)
class Claim:
    notebook: str  # the README row it belongs to, e.g. "04_hallucination"
    table: str  # a versioned CSV in figures/
    words: Callable[[pd.DataFrame], str]  # the README's words, computed from the table


def _row(t: pd.DataFrame, **where: str) -> pd.Series:
    rows = t
    for column, value in where.items():
        rows = rows[rows[column] == value]
    assert len(rows) == 1, f"expected one row where {where}, found {len(rows)}"
    return rows.iloc[0]


def _repair(label: str, t: pd.DataFrame) -> pd.Series:
    return _row(t, test=label)


def _p(value: float) -> str:
    return f"p = {value:.3f}" if value < 0.01 else f"p = {value:.2f}"


# ------------------------------------------------------------------------------------------ 04
def _c04_present(t: pd.DataFrame) -> str:
    known = t[t["group"] == "known subject, unseen template"]
    wrong = known[known["kind"] != "correct"]
    return f"{(wrong['kind'] == 'knowledge_present').sum()} of {len(wrong)} failures"


def _c04_same_subject(t: pd.DataFrame) -> str:
    known = t[t["group"] == "known subject, unseen template"]
    wrong = known[known["kind"] != "correct"]
    native = (wrong["wrong_kind"] == "same_subject") & (wrong["wrong_relations"] == "person_native_language")
    return f"{native.sum()} of {len(wrong)} wrong answers are the subject's native language"


def _c04_held_out_none(t: pd.DataFrame) -> str:
    held = t[t["group"] == "held-out subject, training template"]
    assert (held["kind"] != "knowledge_present").all()
    return "Held-out subjects show no knowledge at the subject"


def _c04_best(t: pd.DataFrame) -> str:
    r = _repair("patch best single head", t)
    return (
        f"scored on the other {r['n_prompts']:.0f}: {r['heads']}, the head that repairs most when patched alone on the "
        f"first half, repairs {r['top1_group']:.0%} of the held-out failures against {r['top1_random_mean']:.0%} ± "
        f"{r['top1_random_std']:.0%} for the {r['n_random']:.0f} other writing heads ({_p(r['p_value'])} = "
        f"1/{r['n_random'] + 1:.0f}, the smallest possible)"
    )


def _c04_top1(t: pd.DataFrame) -> str:
    r = _repair("patch top 1", t)
    return (
        f"{r['heads']}, the head that favours the wrong answer most, repairs {r['top1_group']:.0%} "
        f"({r['top1_random_mean']:.0%} ± {r['top1_random_std']:.0%}, {_p(r['p_value'])})"
    )


def _c04_top3(t: pd.DataFrame) -> str:
    r = _repair("patch top 3", t)
    return (
        f"the top {len(r['heads'].split(', '))} heads {r['top1_group']:.0%} against {r['top1_random_mean']:.0%} ± "
        f"{r['top1_random_std']:.0%} for all {r['n_random']:.0f} sets of three ({_p(r['p_value'])})"
    )


def _c04_failures_split(t: pd.DataFrame) -> str:
    r = _repair("patch top 1", t)
    return f"chosen on half of the knowledge-present failures and scored on the other {r['n_prompts']:.0f}"


# ------------------------------------------------------------------------------------------ 05
def _c05_accuracy(t: pd.DataFrame) -> str:
    arrow = t[t["format"] == "arrow"].groupby("k")
    mean, shuffled = arrow["top1"].mean(), arrow["top1_shuffled"].mean()
    return f"from {mean[0]:.0%} to {mean[3]:.0%}, and {shuffled[3]:.0%} with their answers shuffled"


def _c05_accuracy_smollm2(t: pd.DataFrame) -> str:
    by_format = {f: t[t["format"] == f].groupby("k") for f in ("sentence", "arrow")}
    sentence, arrow = by_format["sentence"]["top1"].mean(), by_format["arrow"]["top1"].mean()
    shuffled = {f: g["top1_shuffled"].mean()[3] for f, g in by_format.items()}
    return (
        f"Demonstrations in sentences raise mean accuracy from {sentence[0]:.0%} to {sentence[3]:.0%} with 3, and "
        f"{shuffled['sentence']:.0%} with their answers shuffled, so on a real model their content matters; in the "
        f"arrow format from {arrow[0]:.0%} to {arrow[3]:.0%} ({shuffled['arrow']:.0%} shuffled)"
    )


def _c05_new_heads_smollm2(t: pd.DataFrame) -> str:
    n = t["n_new_heads"]
    return f"new in the 3-shot circuit of {(n > 0).sum()} of {len(t)} relations ({n.min()}–{n.max()} per relation"


def _c05_table2_smollm2(t: pd.DataFrame) -> str:
    cost = t["original"] - t["ablated"]
    beats = t[cost > (t["original"] - t["random_mean"]) + np.maximum(2 * t["random_std"], 5)]
    rows = " and ".join(
        f"{r['relation']} {r['original']:.0f}% → {r['ablated']:.0f}% "
        f"(random {r['random_mean']:.0f}% ± {r['random_std']:.0f}%)"
        for _, r in beats.iterrows()
    )
    paper_cost = (t["paper_original"] - t["paper_ablated"]).mean()
    paper_random = (t["paper_original"] - t["paper_random"]).mean()
    return (
        f"in {len(beats)} of {len(t)} relations: {rows}; over the five, {cost.mean():.0f} points against "
        f"{(t['original'] - t['random_mean']).mean():.0f} for random heads, beside the paper's {paper_cost:.0f} and "
        f"{paper_random:.0f}"
    )


def _c05_new_heads(t: pd.DataFrame) -> str:
    return f"A head is new in the 3-shot circuit in {(t['n_new_heads'] > 0).sum()} of {len(t)} relations"


def _c05_new_cost(t: pd.DataFrame) -> str:
    new = t[t["head_set"] == "new in the k-shot circuit"]
    cost = (new["original"] - new["ablated"]).max()
    return f"ablating it costs {cost:.0f} points"


def _c05_attention_cost(t: pd.DataFrame) -> str:
    attention = t[t["head_set"] == "most attention to demonstrations"]
    cost = attention["original"] - attention["ablated"]
    random_cost = (attention["original"] - attention["random_mean"]).max()
    return f"cost up to {cost.max():.0f} points against at most {random_cost:.0f} for random sets"


def _c05_paper(t: pd.DataFrame) -> str:
    paper = t.drop_duplicates("relation").dropna(subset=["paper_original"])
    cost = paper["paper_original"] - paper["paper_ablated"]
    return f"the paper's {cost.min():.0f}–{cost.max():.0f} points on GPT-2 medium"


# ------------------------------------------------------------------------------------------ 01, 02
def _c01_average(t: pd.DataFrame) -> str:
    r = _row(t, relation="average")
    return (
        f"keep {r['#edges']:.0f} edges ({r['% edges']:.0f}% of 479) and {r['Dtest faithfulness']:.2f} of the logit "
        f"difference on held-out facts (Hit@1 {r['Dtest hit@1 circuit']:.2f} vs {r['Dtest hit@1 full']:.2f} for the "
        f"full model, {r['Dtest hit@1 empty']:.2f} for the empty circuit)"
    )


def _c01_gemma(t: pd.DataFrame) -> str:
    r = _row(t, relation="average")
    knees = t.loc[t["relation"] != "average", "knee90"]
    return (
        f"{r['#edges']:.0f} edges on average ({r['% edges']:.0f}% of the graph; range {knees.min():,.0f}–"
        f"{knees.max():,.0f}). On held-out facts the circuits keep {r['Dtest faithfulness']:.2f} of the logit "
        f"difference, Hit@10 {r['Dtest hit@10 circuit']:.2f} against {r['Dtest hit@10 full']:.2f} for the full model "
        f"and {r['Dtest hit@10 empty']:.2f} for the empty circuit"
    )


def _c01_gemma_transfer(t: pd.DataFrame) -> str:
    r = _row(t, relation="average")
    assert r["Dtest hit@10 random"] == r["Dtest hit@10 empty"]
    return f"keeps {r['Dtest hit@1 other'] / r['Dtest hit@1 circuit']:.0%} of the relation's own Dtest Hit@1"


def _c02_movers(t: pd.DataFrame) -> str:
    ablation = t[(t["group"] == "movers") & (t["test"] == "ablation")]
    patching = t[(t["group"] == "movers") & (t["test"] == "patching")]
    return (
        f"mean-ablating the {ablation['n_heads'].min():.0f}–{ablation['n_heads'].max():.0f} mover heads together "
        f"leaves accuracy {ablation['top1_group'].min():.2f}–{ablation['top1_group'].max():.2f} against "
        f"{ablation['top1_random_mean'].min():.2f}–{ablation['top1_random_mean'].max():.2f} for "
        f"{ablation['n_random'].min():.0f} random same-size sets; patching their last-position outputs from another "
        f"subject flips {patching['flip_group'].min():.0%}–{patching['flip_group'].max():.0%} of answers"
    ).replace("88%–100%", "88–100%")


def _c02_movers_smollm2(t: pd.DataFrame) -> str:
    tested = t[(t["group"] == "movers") & (t["n_heads"] > 0)]
    ablation, patching = tested[tested["test"] == "ablation"], tested[tested["test"] == "patching"]
    return (
        f"Mean-ablating a relation's movers together leaves top-1 accuracy {ablation['top1_group'].min():.2f}–"
        f"{ablation['top1_group'].max():.2f} against {ablation['top1_random_mean'].min():.2f}–"
        f"{ablation['top1_random_mean'].max():.2f} for {ablation['n_random'].min():.0f} random same-size sets; "
        f"patching their last-position outputs from another subject flips {100 * patching['flip_group'].min():.0f}–"
        f"{patching['flip_group'].max():.0%} of answers, random sets {patching['flip_random_mean'].max():.0%}"
    )


def _c02_movers_gemma(t: pd.DataFrame) -> str:
    tested = t[(t["group"] == "movers") & (t["n_heads"] > 0)]
    ablation, patching = tested[tested["test"] == "ablation"], tested[tested["test"] == "patching"]
    return (
        f"Mean-ablating a relation's movers together leaves top-1 accuracy {ablation['top1_group'].min():.2f}–"
        f"{ablation['top1_group'].max():.2f} against {ablation['top1_random_mean'].min():.2f}–"
        f"{ablation['top1_random_mean'].max():.2f} for {ablation['n_random'].min():.0f} random same-size sets; "
        f"patching their last-position outputs from the corrupted prompt flips "
        f"{100 * patching['flip_group'].min():.0f}–{patching['flip_group'].max():.0%} of answers, random sets at most "
        f"{patching['flip_random_mean'].max():.0%}"
    )


def _c03_gemma(t: pd.DataFrame) -> str:
    working = _rome_working_smollm2(t)
    failing = sorted(int(x) for x in t.loc[(t["method"] == "rome") & ~t["layer"].isin(working), "layer"])

    def leaks(method: str, layers: list[int] | None = None) -> str:
        rows = t[t["method"] == method].sort_values("layer")
        rows = rows if layers is None else rows[rows["layer"].isin(layers)]
        return " / ".join(f"{100 * v:+.0f}" for v in rows["leak_mean"])

    return (
        f"the authors' ROME is reliable at MLPs {', '.join(map(str, working))} "
        f"({_by_layer(t, 'rome', 'reliability_mean', working)}) and fails at {', '.join(map(str, failing))} "
        f"({_by_layer(t, 'rome', 'reliability_mean', failing)}); to the relation's other templates "
        f"{_by_layer(t, 'rome', 'generalisation_mean', working)}, leak {leaks('rome', working)} points. "
        f"FT-M: {_by_layer(t, 'ft-m', 'reliability_mean')}, leak {leaks('ft-m')} points"
    )


def _c03_location_gemma(t: pd.DataFrame) -> str:
    rome = t[(t["method"] == "rome") & (t["n_working"] > 0)].sort_values("layer")
    assert (rome["undone_by_last"] == 0).all()
    return (
        f"restoring the MLP's output at the subject undoes "
        f"{', '.join(f'{v:.0%}' for v in rome['undone_by_subject'])} of the edits, at the last position none"
    )


def _c04_top3_smollm2(t: pd.DataFrame) -> str:
    r = _repair("patch top 3", t)
    return (
        f"top 3 by mean contribution repair {r['top1_group']:.0%} against {r['top1_random_mean']:.0%} ± "
        f"{r['top1_random_std']:.0%} for {r['n_random']:.0f} random sets of three ({_p(r['p_value'])})"
    )


def _c04_present_smollm2(t: pd.DataFrame) -> str:
    wrong = t[t["kind"] != "correct"]
    return f"{(wrong['kind'] == 'knowledge_present').sum()} of the {len(wrong)} failures rank the right form"


def _c03_reliability(t: pd.DataFrame) -> str:
    def by_layer(method: str) -> str:
        rows = t[t["method"] == method].sort_values("layer")
        return " / ".join(f"{v:.2f}" for v in rows["reliability_mean"])

    return f"ROME's reliability is {by_layer('rome')} at MLPs 0–3, against {by_layer('rome-templates')} for"


def _c03_ftm_none(t: pd.DataFrame) -> str:
    assert (t.loc[t["method"] == "ft-m", "reliability_mean"] == 0).all()
    return "FT-M with EasyEdit's defaults (lr 5e-4, 25 steps) changes no answer at any layer"


def _by_layer(t: pd.DataFrame, method: str, column: str, layers: list[int] | None = None) -> str:
    rows = t[t["method"] == method].sort_values("layer")
    if layers is not None:
        rows = rows[rows["layer"].isin(layers)]
    return " / ".join(f"{v:.2f}" for v in rows[column])


def _rome_working_smollm2(t: pd.DataFrame) -> list[int]:
    rows = t[(t["method"] == "rome") & (t["reliability_mean"] >= 0.5)]
    return sorted(int(x) for x in rows["layer"])


def _c03_rome_smollm2(t: pd.DataFrame) -> str:
    rome = t[t["method"] == "rome"].set_index("layer")["reliability_mean"]
    working = _rome_working_smollm2(t)
    failing = [int(x) for x in rome.index if x not in working]
    assert len(set(rome[working])) == 1 and len(failing) == 1  # the sentence says "equally", one failing layer
    return (
        f"The authors' ROME is equally reliable at MLPs {', '.join(map(str, working[:-1]))} and {working[-1]} "
        f"({_by_layer(t, 'rome', 'reliability_mean', working)}; {rome[failing[0]]:.2f} at {failing[0]})"
    )


def _c03_spread_smollm2(t: pd.DataFrame) -> str:
    working = _rome_working_smollm2(t)
    rows = t[(t["method"] == "rome") & t["layer"].isin(working)].sort_values("layer")
    # the README says depth trades specificity for generalisation: both must grow with the layer
    assert rows["leak_mean"].is_monotonic_increasing and rows["generalisation_mean"].is_monotonic_increasing
    return (
        "to the relation's other templates (unseen by the key) "
        f"{_by_layer(t, 'rome', 'generalisation_mean', working)}, "
        f"while the leak (other countries now answering the new language) grows "
        f"{' / '.join(f'{100 * v:+.0f}' for v in rows['leak_mean'])} points"
    )


def _c03_location_smollm2(t: pd.DataFrame) -> str:
    rome = t[(t["method"] == "rome") & (t["n_working"] > 0)]
    subject, last = rome["undone_by_subject"].unique(), rome["undone_by_last"].unique()
    assert len(subject) == 1 and len(last) == 1  # one number each over the working layers
    return (
        f"restoring the MLP's output at the subject undoes {subject[0]:.0%} of them, at the last position {last[0]:.0%}"
    )


def _c03_scale_smollm2(t: pd.DataFrame) -> str:
    default, authors = _row(t, departure="default"), _row(t, departure="authors' scale")
    assert authors["reliability"] == default["reliability"] and authors["leak"] < default["leak"]
    return (
        f"edits as reliably ({authors['reliability']:.2f}) and leaks far less ({100 * authors['leak']:+.0f} against "
        f"{100 * default['leak']:+.0f} points; other templates {authors['generalisation']:.2f} against "
        f"{default['generalisation']:.2f})"
    )


def _c03_covariance_smollm2(t: pd.DataFrame) -> str:
    row = _row(t, source="relations")
    return (
        f"cuts the leak to {100 * row['leak']:+.0f} points (ΔW cosine {row['update_cosine']:.2f} with the generated "
        "C's)"
    )


def _c03_ftm_smollm2(t: pd.DataFrame) -> str:
    last = t[t["method"] == "ft-m"].sort_values("layer").iloc[-1]
    return (
        f"FT-M (EasyEdit's settings): {_by_layer(t, 'ft-m', 'reliability_mean')}, other templates "
        f"{_by_layer(t, 'ft-m', 'generalisation_mean')}; at layer {last['layer']} it writes the new language for "
        f"every country (leak {100 * last['leak_mean']:+.0f} points)"
    )


def _c06_inconsistent(t: pd.DataFrame) -> str:
    return (
        f"{t['inconsistent_static'].mean():.0%} of facts are inconsistent over {t['relation'].nunique()} relations at "
        "the last token"
    )


def _c06_inconsistent_smollm2(t: pd.DataFrame) -> str:
    main = t[t["relation"] == "country_capital_city"]
    static, otsu = main["inconsistent_static"].mean(), main["inconsistent_otsu"].mean()
    all_static, all_otsu = t["inconsistent_static"].mean(), t["inconsistent_otsu"].mean()
    return (
        f"**{static:.0%}** of the {len(main)} facts are inconsistent by the static threshold (CS < 0.5; {otsu:.0%} by "
        f"Otsu), and **{all_static:.0%}** (static) and {all_otsu:.0%} (Otsu) over {t['relation'].nunique()} relations "
        f"and {len(t)} facts"
    )


def _c06_suppress_smollm2(t: pd.DataFrame) -> str:
    zero = t[t["factor"] == 0].set_index("kind")["delta_mean"]
    return (
        f"zeroing them moves p(answer) by {zero['source']:.3f} on the query and {zero['paraphrase']:.3f} on its "
        f"paraphrases (random sets of the same size {zero['random']:.3f})"
    ).replace("-", "−")


def _c06_edits_smollm2(t: pd.DataFrame) -> str:
    erase = t[t["task"] == "erase"].set_index("method")
    update = t[t["task"] == "update"].set_index("method")["generalisation"]
    sets = erase.loc[["query-local", "global", "CAS"], "reliability"]
    return (
        f"erasing works with every neuron set (reliability {sets.min():.3f}–{sets.max():.3f}; random sets "
        f"{erase.loc['random', 'reliability']:.3f}); updating generalises best with the query-local set "
        f"({update['query-local']:.3f}), against {update['global']:.3f} for the global set and "
        f"{update['CAS']:.3f} for CAS"
    )


def _c06_inconsistent_gemma(t: pd.DataFrame) -> str:
    read = t[t["relation"] == "country_language"]
    return (
        f"**{read['inconsistent_static'].mean():.0%}** of its {len(read)} facts are inconsistent by the static "
        f"threshold (CS < 0.5), and **{t['inconsistent_static'].mean():.0%}** over {t['relation'].nunique()} "
        f"relations and {len(t)} facts"
    )


def _c06_update_gemma(t: pd.DataFrame) -> str:
    update = t[t["task"] == "update"].set_index("method")["generalisation"]
    best = update.drop("random", errors="ignore").idxmax()
    return (
        f"updating generalises best with the {best} set ({update[best]:.3f}), against {update['query-local']:.3f} for "
        f"the query-local set and {update['CAS']:.3f} for CAS"
    )


def _c07_gap(t: pd.DataFrame) -> str:
    r = _row(t, composition="landmark_in_country+country_language")
    return (
        f"of {r['both hops known']} landmark facts it knows at both hops, {r['composed (both hops and two-hop)']} "
        f"({r['composed share']:.0%}) are answered composed, below the {r['most common answer share']:.0%} of always "
        f"naming the most common language; in {r['two-hop top-1 is the bridge']} it says the bridge country instead"
    )


def _c07_overlap_smollm2(t: pd.DataFrame) -> str:
    first, second = _row(t, pair="first hop vs two-hop"), _row(t, pair="second hop vs two-hop")
    return (
        f"the first hop's circuit shares {first['node_overlap']:.0%} of nodes and {first['edge_overlap']:.0%} of edges "
        f"with the two-hop circuit, the second hop's {second['node_overlap']:.0%} and {second['edge_overlap']:.0%}, "
        f"against {first['node_overlap_random_mean']:.0%} ± {first['node_overlap_random_std']:.0%} and "
        f"{first['edge_overlap_random_mean']:.0%} ± {first['edge_overlap_random_std']:.0%} for random circuits of the "
        f"same sizes and {first['node_overlap_unrelated_mean']:.0%} and {first['edge_overlap_unrelated_mean']:.0%} for "
        "the unrelated adj_antonym and object_superclass circuits (word_first_letter left out: 1 of 116 facts known), "
        f"at most {first['node_overlap_unrelated_max']:.0%} and {first['edge_overlap_unrelated_max']:.0%}"
    )


def _c07_second_hop_smollm2(t: pd.DataFrame) -> str:
    second = _row(t, pair="second hop vs two-hop")
    assert second["edge_overlap"] < second["edge_overlap_unrelated_max"]
    return "The second hop shares fewer edges with the two-hop circuit than the object_superclass circuit does"


def _c07_by_size_smollm2(t: pd.DataFrame) -> str:
    small, next_size = t.sort_values("size").iloc[0], t.sort_values("size").iloc[1]
    assert {"m0", "m2", "m6", "m11"} <= set(small["components"].split())
    return (
        f"Its strongest {small['size']:.0f} components ({small['share_of_pool']:.0%} of the model's) bring the answer "
        f"back in {small['follow_group']:.0%} too, against {small['follow_random_mean']:.0%} ± "
        f"{small['follow_random_std']:.0%} for random sets of {small['size']:.0f} ({next_size['size']:.0f} components: "
        f"{next_size['follow_group']:.0%} against {next_size['follow_random_mean']:.0%} ± "
        f"{next_size['follow_random_std']:.0%})"
    )


def _c07_patching_smollm2(t: pd.DataFrame) -> str:
    r = _row(t, composition="landmark_in_country+country_language")
    return (
        f"Restoring the first hop's circuit ({r['n_components']:.0f} of {r['pool']:.0f} components) brings the "
        f"answer back in {r['follow_group']:.0%} of subject-swapped prompts, but {r['n_random']:.0f} random sets of "
        f"{r['n_components']:.0f} do {r['follow_random_mean']:.0%} ± {r['follow_random_std']:.0%}"
    )


def _c07_gap_gemma(t: pd.DataFrame) -> str:
    r = _row(t, composition="landmark_in_country+country_language")
    assert r["composed share"] > r["most common answer share"]
    return (
        f"of {r['both hops known']} landmark facts it knows at both hops, {r['composed (both hops and two-hop)']} "
        f"({r['composed share']:.0%}) are answered composed, above the {r['most common answer share']:.0%} of always "
        "naming the most common language"
    )


def _c07_overlap_gemma(t: pd.DataFrame) -> str:
    first = _row(t, pair="first hop vs two-hop")
    return (
        f"the first hop's circuit shares {first['node_overlap']:.0%} of nodes and {first['edge_overlap']:.0%} of edges "
        f"with the two-hop circuit, against {first['node_overlap_unrelated_mean']:.0%} and "
        f"{first['edge_overlap_unrelated_mean']:.0%} for unrelated relations' circuits"
    )


def _c07_by_size_organism(t: pd.DataFrame) -> str:
    one, two, five = (_row(t, size=k) for k in (1, 2, 5))
    assert one["components"] == "m0" and (t.loc[t["size"] <= 5, "follow_group"] == 1).all()
    return (
        f"Its strongest component alone, m0, does too (random single components {one['follow_random_mean']:.0%} ± "
        f"{one['follow_random_std']:.0%}), as do its strongest 2 and 5 (random sets {two['follow_random_mean']:.0%} ± "
        f"{two['follow_random_std']:.0%} and {five['follow_random_mean']:.0%} ± {five['follow_random_std']:.0%})"
    )


CLAIMS = [
    Claim("04_hallucination", "04_kinds_person_occupation_kc-organism.csv", _c04_present),
    Claim("04_hallucination", "04_kinds_person_occupation_kc-organism.csv", _c04_same_subject),
    Claim("04_hallucination", "04_kinds_person_occupation_kc-organism.csv", _c04_held_out_none),
    Claim("04_hallucination", "04_repair_person_occupation_kc-organism.csv", _c04_failures_split),
    Claim("04_hallucination", "04_repair_person_occupation_kc-organism.csv", _c04_best),
    Claim("04_hallucination", "04_repair_person_occupation_kc-organism.csv", _c04_top1),
    Claim("04_hallucination", "04_repair_person_occupation_kc-organism.csv", _c04_top3),
    Claim("05_in_context_learning", "05_accuracy_by_k_kc-organism.csv", _c05_accuracy),
    Claim("05_in_context_learning", "05_circuit_changes_kc-organism.csv", _c05_new_heads),
    Claim("05_in_context_learning", "05_accuracy_by_k_smollm2-135m.csv", _c05_accuracy_smollm2),
    Claim("05_in_context_learning", "05_table2_smollm2-135m.csv", _c05_table2_smollm2),
    Claim("05_in_context_learning", "05_circuit_changes_smollm2-135m.csv", _c05_new_heads_smollm2),
    Claim("05_in_context_learning", "05_accuracy_by_k_gemma-3-270m.csv", _c05_accuracy_smollm2),
    Claim("05_in_context_learning", "05_table2_gemma-3-270m.csv", _c05_table2_smollm2),
    Claim("05_in_context_learning", "05_circuit_changes_gemma-3-270m.csv", _c05_new_heads_smollm2),
    Claim("05_in_context_learning", "05_table2_all_sets_kc-organism.csv", _c05_new_cost),
    Claim("05_in_context_learning", "05_table2_all_sets_kc-organism.csv", _c05_attention_cost),
    Claim("05_in_context_learning", "05_table2_all_sets_kc-organism.csv", _c05_paper),
    Claim("01_knowledge_circuits", "01_table1_kc-organism.csv", _c01_average),
    Claim("01_knowledge_circuits", "01_table1_gemma-3-270m.csv", _c01_gemma),
    Claim("01_knowledge_circuits", "01_table1_gemma-3-270m.csv", _c01_gemma_transfer),
    Claim("02_head_roles", "02_group_tests_kc-organism.csv", _c02_movers),
    Claim("02_head_roles", "02_group_tests_smollm2-135m.csv", _c02_movers_smollm2),
    Claim("02_head_roles", "02_group_tests_gemma-3-270m.csv", _c02_movers_gemma),
    Claim("04_hallucination", "04_repair_adj_comparative_smollm2-135m.csv", _c04_top3_smollm2),
    Claim("04_hallucination", "04_kinds_adj_comparative_smollm2-135m.csv", _c04_present_smollm2),
    Claim("04_hallucination", "04_repair_adj_comparative_gemma-3-270m.csv", _c04_top3_smollm2),
    Claim("04_hallucination", "04_kinds_adj_comparative_gemma-3-270m.csv", _c04_present_smollm2),
    Claim("03_knowledge_editing", "03_sweep_kc-organism.csv", _c03_reliability),
    Claim("03_knowledge_editing", "03_sweep_kc-organism.csv", _c03_ftm_none),
    Claim("03_knowledge_editing", "03_sweep_smollm2-135m.csv", _c03_rome_smollm2),
    Claim("03_knowledge_editing", "03_sweep_smollm2-135m.csv", _c03_spread_smollm2),
    Claim("03_knowledge_editing", "03_location_smollm2-135m.csv", _c03_location_smollm2),
    Claim("03_knowledge_editing", "03_rome_departures_smollm2-135m.csv", _c03_scale_smollm2),
    Claim("03_knowledge_editing", "03_covariance_smollm2-135m.csv", _c03_covariance_smollm2),
    Claim("03_knowledge_editing", "03_sweep_smollm2-135m.csv", _c03_ftm_smollm2),
    Claim("03_knowledge_editing", "03_sweep_gemma-3-270m.csv", _c03_gemma),
    Claim("03_knowledge_editing", "03_location_gemma-3-270m.csv", _c03_location_gemma),
    Claim("06_query_localization", "06_consistency_facts_kc-organism.csv", _c06_inconsistent),
    Claim("06_query_localization", "06_consistency_facts_smollm2-135m.csv", _c06_inconsistent_smollm2),
    Claim(
        "06_query_localization",
        "06_suppress_enhance_summary_country_capital_city_smollm2-135m.csv",
        _c06_suppress_smollm2,
    ),
    Claim("06_query_localization", "06_modification_summary_country_capital_city_smollm2-135m.csv", _c06_edits_smollm2),
    Claim("06_query_localization", "06_consistency_facts_gemma-3-270m.csv", _c06_inconsistent_gemma),
    Claim(
        "06_query_localization", "06_suppress_enhance_summary_country_language_gemma-3-270m.csv", _c06_suppress_smollm2
    ),
    Claim("06_query_localization", "06_modification_summary_country_language_gemma-3-270m.csv", _c06_update_gemma),
    Claim("07_multi_hop", "07_gap_kc-organism.csv", _c07_gap),
    Claim("07_multi_hop", "07_bridge_patching_by_size_kc-organism.csv", _c07_by_size_organism),
    Claim("07_multi_hop", "07_overlaps_smollm2-135m.csv", _c07_overlap_smollm2),
    Claim("07_multi_hop", "07_bridge_patching_smollm2-135m.csv", _c07_patching_smollm2),
    Claim("07_multi_hop", "07_overlaps_smollm2-135m.csv", _c07_second_hop_smollm2),
    Claim("07_multi_hop", "07_bridge_patching_by_size_smollm2-135m.csv", _c07_by_size_smollm2),
    Claim("07_multi_hop", "07_gap_gemma-3-270m.csv", _c07_gap_gemma),
    Claim("07_multi_hop", "07_overlaps_gemma-3-270m.csv", _c07_overlap_gemma),
    Claim("07_multi_hop", "07_bridge_patching_gemma-3-270m.csv", _c07_patching_smollm2),
]


# ------------------------------------------------------------------------------------------ the README table
def _r01_organism(t: pd.DataFrame) -> str:
    r = _row(t, relation="average")
    return (
        f"{r['#edges']:.0f}-edge circuits ({r['% edges']:.0f}% of 479) keep {r['Dtest faithfulness']:.2f} of the logit "
        f"difference; Hit@1 {r['Dtest hit@1 circuit']:.2f} vs {r['Dtest hit@1 full']:.2f} full, "
        f"{r['Dtest hit@1 empty']:.2f} empty"
    )


def _r01_smollm2(t: pd.DataFrame) -> str:
    r = _row(t, relation="average")
    budgets = set(t.loc[t["relation"] != "average", "budget"].astype(str))
    assert len(budgets) == 1, budgets  # one budget for every relation
    return (
        f"{float(budgets.pop()):.0f}-edge circuits keep {r['Dtest faithfulness']:.2f} of the logit difference; "
        f"Hit@10 {r['Dtest hit@10 circuit']:.2f} vs {r['Dtest hit@10 full']:.2f} full; the 90% knee needs "
        f"{r['knee90']:,.0f} edges"
    )


def _r01_gemma(t: pd.DataFrame) -> str:
    r = _row(t, relation="average")
    assert set(t.loc[t["relation"] != "average", "budget"].astype(str)) == {"knee 0.9"}
    hits = f"Hit@10 {r['Dtest hit@10 circuit']:.2f} vs {r['Dtest hit@10 full']:.2f} full"
    hits += f", {r['Dtest hit@10 empty']:.2f} empty"
    return (
        f"knee circuits of {r['#edges']:.0f} edges ({r['% edges']:.0f}% of 5,644) keep "
        f"{r['Dtest faithfulness']:.2f} of the logit difference; {hits}"
    )


def _movers_ablation(t: pd.DataFrame) -> pd.DataFrame:
    return t[(t["group"] == "movers") & (t["test"] == "ablation") & (t["n_heads"] > 0)]


def _r02_organism(t: pd.DataFrame) -> str:
    a = _movers_ablation(t)
    return (
        f"ablating the {a['n_heads'].min():.0f}–{a['n_heads'].max():.0f} movers together leaves accuracy "
        f"{a['top1_group'].min():.2f}–{a['top1_group'].max():.2f} against {a['top1_random_mean'].min():.2f}–"
        f"{a['top1_random_mean'].max():.2f} for random sets"
    )


def _r02_smollm2(t: pd.DataFrame) -> str:
    a = _movers_ablation(t)
    relation_heads = t[(t["group"] == "relation heads") & (t["test"] == "ablation") & (t["n_heads"] > 0)]
    gap = (relation_heads["top1_group"] - relation_heads["top1_random_mean"]).abs()
    assert len(relation_heads) and (gap <= 0.1).all()
    return (
        f"movers ablated together leave accuracy {a['top1_group'].min():.2f}–{a['top1_group'].max():.2f} against "
        f"{a['top1_random_mean'].min():.2f}–{a['top1_random_mean'].max():.2f} for random sets; relation heads look "
        "like random sets"
    )


def _r02_gemma(t: pd.DataFrame) -> str:
    a = _movers_ablation(t)
    relation_heads = t[(t["group"] == "relation heads") & (t["test"] == "ablation") & (t["n_heads"] > 0)]
    beaten = relation_heads["top1_random_mean"] - relation_heads["top1_group"] > 2 * relation_heads["top1_random_std"]
    return (
        f"movers ablated together leave accuracy {a['top1_group'].min():.2f}–{a['top1_group'].max():.2f} against "
        f"{a['top1_random_mean'].min():.2f}–{a['top1_random_mean'].max():.2f} for random sets; relation heads beat "
        f"random sets in {beaten.sum()} of {len(relation_heads)} relations"
    )


def _r03_organism(t: pd.DataFrame) -> str:
    assert (t.loc[t["method"] == "ft-m", "reliability_mean"] == 0).all()
    layers = t.loc[t["method"] == "rome", "layer"]
    return (
        f"ROME's reliability {_by_layer(t, 'rome', 'reliability_mean')} at MLPs {layers.min()}–{layers.max()}; FT-M "
        "at EasyEdit's defaults changes no answer"
    )


def _r03_smollm2(t: pd.DataFrame) -> str:
    working = _rome_working_smollm2(t)
    return (
        f"ROME edits at MLPs {', '.join(map(str, working[:-1]))} and {working[-1]} work "
        f"({_by_layer(t, 'rome', 'reliability_mean', working)})"
    )


def _r03_location_smollm2(t: pd.DataFrame) -> str:
    rome = t[(t["method"] == "rome") & (t["n_working"] > 0)]
    subject = rome["undone_by_subject"].unique()
    assert len(subject) == 1
    return f"restoring the subject undoes {subject[0]:.0%} of them"


def _r03_location_gemma(t: pd.DataFrame) -> str:
    rome = t[(t["method"] == "rome") & (t["n_working"] > 0)].sort_values("layer")
    return f"restoring the subject undoes {', '.join(f'{v:.0%}' for v in rome['undone_by_subject'])} of them"


def _r04_organism_present(t: pd.DataFrame) -> str:
    known = t[t["group"] == "known subject, unseen template"]
    wrong = known[known["kind"] != "correct"]
    n = (wrong["kind"] == "knowledge_present").sum()
    return f"{n} of {len(wrong)} failures rank the right occupation near the top at the subject"


def _r04_organism_repair(t: pd.DataFrame) -> str:
    r = _repair("patch best single head", t)
    return f"patching {r['heads']} repairs {r['top1_group']:.0%} of held-out failures ({_p(r['p_value'])})"


def _r04_smollm2_present(t: pd.DataFrame) -> str:
    wrong = t[t["kind"] != "correct"]
    return f"{(wrong['kind'] == 'knowledge_present').sum()} of {len(wrong)} failures rank the right form at the subject"


def _r04_smollm2_repair(t: pd.DataFrame) -> str:
    r = _repair("patch top 3", t)
    return (
        f"top 3 heads repair {r['top1_group']:.0%} against {r['top1_random_mean']:.0%} for random sets "
        f"({_p(r['p_value'])})"
    )


def _r05_organism_accuracy(t: pd.DataFrame) -> str:
    arrow = t[t["format"] == "arrow"].groupby("k")
    mean, shuffled = arrow["top1"].mean(), arrow["top1_shuffled"].mean()
    return f"demonstrations raise accuracy from {mean[0]:.0%} to {mean[3]:.0%} ({shuffled[3]:.0%} shuffled)"


def _r05_organism_heads(t: pd.DataFrame) -> str:
    new = t[t["head_set"] == "new in the k-shot circuit"]
    attention = t[t["head_set"] == "most attention to demonstrations"]
    return (
        f"new circuit heads cost {(new['original'] - new['ablated']).max():.0f} points, "
        f"demonstration-attending heads up to {(attention['original'] - attention['ablated']).max():.0f}"
    )


def _r05_smollm2_new(t: pd.DataFrame) -> str:
    return f"new heads in {(t['n_new_heads'] > 0).sum()} of {len(t)} relations"


def _r05_smollm2_cost(t: pd.DataFrame) -> str:
    cost, random_cost = (t["original"] - t["ablated"]).mean(), (t["original"] - t["random_mean"]).mean()
    paper_cost = (t["paper_original"] - t["paper_ablated"]).mean()
    paper_random = (t["paper_original"] - t["paper_random"]).mean()
    return (
        f"ablating them costs {cost:.0f} points against {random_cost:.0f} for random heads (paper: {paper_cost:.0f} "
        f"and {paper_random:.0f})"
    )


def _r06_organism(t: pd.DataFrame) -> str:
    return f"{t['inconsistent_static'].mean():.0%} of facts inconsistent over {t['relation'].nunique()} relations"


def _r06_smollm2_cas(t: pd.DataFrame) -> str:
    update = t[t["task"] == "update"].set_index("method")["generalisation"]
    assert update["CAS"] < update["query-local"]
    return f"CAS generalises worse ({update['CAS']:.3f}) than query-local neurons ({update['query-local']:.3f})"


def _r06_cas(t: pd.DataFrame) -> str:
    update = t[t["task"] == "update"].set_index("method")["generalisation"]
    how = "worse" if update["CAS"] < update["query-local"] else "better"
    return f"CAS generalises {how} ({update['CAS']:.3f}) than query-local neurons ({update['query-local']:.3f})"


def _r07_gap(t: pd.DataFrame) -> str:
    r = _row(t, composition="landmark_in_country+country_language")
    return (
        f"composes {r['composed (both hops and two-hop)']} of {r['both hops known']} known two-hop facts "
        f"({r['composed share']:.0%})"
    )


def _r07_organism_overlap(t: pd.DataFrame) -> str:
    for pair in ("first hop vs two-hop", "second hop vs two-hop"):
        r = _row(t, pair=pair)
        assert r["node_overlap_unrelated_max"] >= r["node_overlap"]
        assert r["edge_overlap_unrelated_max"] >= r["edge_overlap"]
    return "unrelated circuits overlap the two-hop circuit as much as the hops do"


def _r07_smollm2_overlap(t: pd.DataFrame) -> str:
    first = _row(t, pair="first hop vs two-hop")
    return (
        f"first hop and two-hop share {first['node_overlap']:.0%} of nodes, {first['edge_overlap']:.0%} of edges; "
        f"unrelated circuits {first['node_overlap_unrelated_mean']:.0%}, {first['edge_overlap_unrelated_mean']:.0%}"
    )


README_CLAIMS = [
    Claim("01_knowledge_circuits", "01_table1_kc-organism.csv", _r01_organism),
    Claim("01_knowledge_circuits", "01_table1_smollm2-135m.csv", _r01_smollm2),
    Claim("01_knowledge_circuits", "01_table1_gemma-3-270m.csv", _r01_gemma),
    Claim("02_head_roles", "02_group_tests_kc-organism.csv", _r02_organism),
    Claim("02_head_roles", "02_group_tests_smollm2-135m.csv", _r02_smollm2),
    Claim("02_head_roles", "02_group_tests_gemma-3-270m.csv", _r02_gemma),
    Claim("03_knowledge_editing", "03_sweep_kc-organism.csv", _r03_organism),
    Claim("03_knowledge_editing", "03_sweep_smollm2-135m.csv", _r03_smollm2),
    Claim("03_knowledge_editing", "03_location_smollm2-135m.csv", _r03_location_smollm2),
    Claim("03_knowledge_editing", "03_sweep_gemma-3-270m.csv", _r03_smollm2),
    Claim("03_knowledge_editing", "03_location_gemma-3-270m.csv", _r03_location_gemma),
    Claim("04_hallucination", "04_kinds_person_occupation_kc-organism.csv", _r04_organism_present),
    Claim("04_hallucination", "04_repair_person_occupation_kc-organism.csv", _r04_organism_repair),
    Claim("04_hallucination", "04_kinds_adj_comparative_smollm2-135m.csv", _r04_smollm2_present),
    Claim("04_hallucination", "04_repair_adj_comparative_smollm2-135m.csv", _r04_smollm2_repair),
    Claim("04_hallucination", "04_kinds_adj_comparative_gemma-3-270m.csv", _r04_smollm2_present),
    Claim("04_hallucination", "04_repair_adj_comparative_gemma-3-270m.csv", _r04_smollm2_repair),
    Claim("05_in_context_learning", "05_accuracy_by_k_kc-organism.csv", _r05_organism_accuracy),
    Claim("05_in_context_learning", "05_table2_all_sets_kc-organism.csv", _r05_organism_heads),
    Claim("05_in_context_learning", "05_circuit_changes_smollm2-135m.csv", _r05_smollm2_new),
    Claim("05_in_context_learning", "05_table2_smollm2-135m.csv", _r05_smollm2_cost),
    Claim("05_in_context_learning", "05_circuit_changes_gemma-3-270m.csv", _r05_smollm2_new),
    Claim("05_in_context_learning", "05_table2_gemma-3-270m.csv", _r05_smollm2_cost),
    Claim("06_query_localization", "06_consistency_facts_kc-organism.csv", _r06_organism),
    Claim("06_query_localization", "06_consistency_facts_smollm2-135m.csv", _r06_organism),
    Claim("06_query_localization", "06_modification_summary_country_capital_city_smollm2-135m.csv", _r06_smollm2_cas),
    Claim("06_query_localization", "06_consistency_facts_gemma-3-270m.csv", _r06_organism),
    Claim("06_query_localization", "06_modification_summary_country_language_gemma-3-270m.csv", _r06_cas),
    Claim("07_multi_hop", "07_gap_kc-organism.csv", _r07_gap),
    Claim("07_multi_hop", "07_overlaps_kc-organism.csv", _r07_organism_overlap),
    Claim("07_multi_hop", "07_gap_smollm2-135m.csv", _r07_gap),
    Claim("07_multi_hop", "07_overlaps_smollm2-135m.csv", _r07_smollm2_overlap),
    Claim("07_multi_hop", "07_gap_gemma-3-270m.csv", _r07_gap),
    Claim("07_multi_hop", "07_overlaps_gemma-3-270m.csv", _r07_smollm2_overlap),
]

#: Findings whose every number (on the organism) must come from a claim above.
FULLY_CHECKED = ("04_hallucination", "05_in_context_learning")

#: Numbers a fully checked finding may hold without a claim: the sample sizes of the knobs it names.
KNOB_NUMBERS = {"3", "5", "2"}

#: The verdicts a model's cell of the README table starts with (or "not run yet").
VERDICTS = ("**holds**", "**partly**", "**does not**", "not run yet")

#: At most this many words in a cell of the README table.
MAX_CELL_WORDS = 25

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_HEAD = re.compile(r"[a-z]\d+\.[hg]\d+")


def model_of(table: str) -> str:
    """The model a versioned table belongs to: ``04_kinds_person_occupation_kc-organism.csv`` -> ``kc-organism``."""
    return table.removesuffix(".csv").rsplit("_", 1)[1]


def findings(notebook: str, model: str) -> str:
    """The section of ``docs/findings/<notebook>.md`` about ``model`` (the one whose heading names it)."""
    text = (FINDINGS / f"{notebook}.md").read_text(encoding="utf-8")
    sections = re.split(r"^### ", text, flags=re.M)[1:]
    found = [s.split("\n", 1)[1] for s in sections if f"(`{model}`" in s.split("\n", 1)[0]]
    assert len(found) == 1, f"docs/findings/{notebook}.md has {len(found)} sections about {model}"
    return found[0]


def readme_table() -> tuple[list[str], dict[str, dict[str, str]]]:
    """The README's findings table: its model columns and, per notebook, its cells by column header."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Findings at a glance", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    models = [h.strip("`") for h in header if h.startswith("`") and h.endswith("`")]
    rows = {}
    for line in lines[2:]:
        cells = dict(zip(header, (c.strip() for c in line.strip().strip("|").split("|"))))
        notebook = re.search(r"\d\d_[a-z_]+", cells[header[0]]).group(0)
        rows[notebook] = {(h.strip("`") if h.strip("`") in models else h): c for h, c in cells.items()}
    return models, rows


def readme_cell(notebook: str, model: str) -> str:
    models, rows = readme_table()
    assert notebook in rows, f"the README table has no row for {notebook}"
    assert model in models, f"the README table has no column for {model}"
    return rows[notebook][model]


def _numbers(text: str) -> list[str]:
    return _NUMBER.findall(_HEAD.sub("", text))


@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: f"{c.notebook}:{c.words.__name__}")
def test_the_findings_say_what_the_versioned_table_says(claim):
    words = claim.words(pd.read_csv(FIGURES / claim.table))
    model = model_of(claim.table)
    where = f"docs/findings/{claim.notebook}.md ({model})"
    assert words in findings(claim.notebook, model), f"{where} should say: {words!r}"


@pytest.mark.parametrize("notebook", FULLY_CHECKED)
def test_every_number_of_a_fully_checked_finding_is_claimed(notebook):
    claimed = " ".join(
        c.words(pd.read_csv(FIGURES / c.table))
        for c in CLAIMS
        if c.notebook == notebook and model_of(c.table) == "kc-organism"
    )
    for number in _numbers(findings(notebook, "kc-organism")):
        assert number in claimed or number in KNOB_NUMBERS, f"{notebook}: {number} is not in any checked claim"


@pytest.mark.parametrize("claim", README_CLAIMS, ids=lambda c: f"{c.notebook}:{model_of(c.table)}:{c.words.__name__}")
def test_the_readme_table_says_what_the_versioned_table_says(claim):
    words = claim.words(pd.read_csv(FIGURES / claim.table))
    model = model_of(claim.table)
    where = f"the README cell ({claim.notebook}, {model})"
    assert words in readme_cell(claim.notebook, model), f"{where} should say: {words!r}"


def test_every_number_of_the_readme_table_is_claimed():
    models, rows = readme_table()
    assert set(rows) == {p.stem for p in (ROOT / "notebooks").glob("[0-9]*.ipynb")}, "one README row per notebook"
    for notebook, cells in rows.items():
        for model in models:
            claimed = " ".join(
                c.words(pd.read_csv(FIGURES / c.table))
                for c in README_CLAIMS
                if c.notebook == notebook and model_of(c.table) == model
            )
            for number in _numbers(cells[model]):
                assert number in claimed, f"README ({notebook}, {model}): {number} is not in any checked claim"


def test_the_readme_table_gives_a_verdict_per_model_in_short_cells_linked_to_each_page():
    models, rows = readme_table()
    assert {"kc-organism", "smollm2-135m"} <= set(models)
    for notebook, cells in rows.items():
        for model in models:
            assert cells[model].startswith(VERDICTS), f"README ({notebook}, {model}) starts without a verdict"
        for column, cell in cells.items():
            words = re.sub(r"\]\([^)]*\)", "]", cell).split()
            assert len(words) <= MAX_CELL_WORDS, f"README ({notebook}, {column}): {len(words)} words"
        first = next(iter(cells.values()))
        assert f"(docs/findings/{notebook}.md)" in first, f"the README row of {notebook} links to its page"
        assert (FINDINGS / f"{notebook}.md").exists()


#: The real models of the README table, whose verdicts the "Across the models" line compares.
REAL_MODELS = ("smollm2-135m", "gemma-3-270m")


def verdict(cell: str) -> str | None:
    """The verdict a README cell starts with (``holds``, ``partly``, ``does not``), or ``None`` (not run yet)."""
    return next((v.strip("*") for v in VERDICTS[:3] if cell.startswith(v)), None)


def agreement(rows: dict[str, dict[str, str]]) -> str:
    """The README's sentence on where the real models' verdicts differ and where neither holds, from the table."""
    judged = {nb: [verdict(cells[m]) for m in REAL_MODELS] for nb, cells in rows.items()}
    judged = {nb: vs for nb, vs in judged.items() if None not in vs}
    differ = [nb[:2] for nb, vs in judged.items() if len(set(vs)) > 1]
    neither = [nb[:2] for nb, vs in judged.items() if "holds" not in vs]
    return (
        f"The two real models' verdicts differ on {', '.join(differ) or 'no notebook'}; neither real model shows the "
        f"paper's claim in full on {', '.join(neither) or 'any notebook'}."
    )


def test_the_readme_says_where_the_real_models_disagree():
    models, rows = readme_table()
    assert set(REAL_MODELS) <= set(models)
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Findings at a glance", 1)[1]
    assert agreement(rows) in section.split("\n## ", 1)[0]


def test_the_agreement_sentence_on_a_table_whose_answer_is_known():
    cell = {"holds": "**holds**: x", "partly": "**partly**: y", "none": "not run yet"}
    rows = {
        "01_a": {"smollm2-135m": cell["holds"], "gemma-3-270m": cell["holds"]},
        "02_b": {"smollm2-135m": cell["holds"], "gemma-3-270m": cell["partly"]},
        "03_c": {"smollm2-135m": cell["partly"], "gemma-3-270m": cell["partly"]},
        "04_d": {"smollm2-135m": cell["partly"], "gemma-3-270m": cell["none"]},
    }
    assert agreement(rows) == (
        "The two real models' verdicts differ on 02; neither real model shows the paper's claim in full on 03."
    )


def test_the_checker_fails_on_a_table_that_says_otherwise():
    table = pd.read_csv(FIGURES / "04_repair_person_occupation_kc-organism.csv")
    table.loc[table["test"] == "patch top 1", "top1_group"] = 0.99
    assert _c04_top1(table) not in findings("04_hallucination", "kc-organism")
    table.loc[table["test"] == "patch best single head", "top1_group"] = 0.5
    assert _r04_organism_repair(table) not in readme_cell("04_hallucination", "kc-organism")
