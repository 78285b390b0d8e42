"""Sentences of notebook 02, each built from the table the notebook shows beside it.

Every function takes one table (or a few plain numbers that label it) and returns Markdown text;
none computes anything the table does not hold, so the sentence and the table cannot disagree.
``tests/test_head_roles_text.py`` runs each on a hand-made table whose answer is known.

===========================  ==================================================================
builder                      table
===========================  ==================================================================
:func:`lens_text`            one row per criterion (top-1, top-k) of
                             :func:`kc_utils.analysis.lens.summarise_first_rank_layers`
:func:`roles_text`           :func:`kc_utils.analysis.heads.head_roles` of one relation
:func:`sensitivity_text`     :func:`kc_utils.analysis.heads.role_sensitivity`
:func:`layers_text`          heads per layer (rows) and role (columns)
:func:`pool_text`            the model's heads and the random-set pool
:func:`group_tests_text`     one row per relation × group × test of
                             :func:`kc_utils.analysis.head_groups.group_test_summary`
:func:`single_ablation_text` one row per relation: single-head ablation effects by role
:func:`circuit_sources_text` one row per relation: where its circuit came from
:func:`departures_text`      head roles of all relations stacked (the model's departures from the paper)
===========================  ==================================================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from kc_utils.circuits.nodes import parse_node

__all__ = [
    "circuit_sources_text",
    "departures_text",
    "group_tests_text",
    "layers_text",
    "lens_text",
    "pool_text",
    "roles_text",
    "sensitivity_text",
    "single_ablation_text",
]


def _need(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"the {what} table lacks columns {missing}")


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.0%}"


def _num(x: float, fmt: str = ".2f") -> str:
    return "never" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _span(values: pd.Series, fmt: str = ".2f") -> str:
    lo, hi = float(values.min()), float(values.max())
    return format(lo, fmt) if math.isclose(lo, hi) else f"{lo:{fmt}}–{hi:{fmt}}"


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


# ----------------------------------------------------------------------------- logit lens
def lens_text(lens_summary: pd.DataFrame, n_layers: int) -> str:
    """Where the answer first reaches the top, at the last position and at the subject.

    Args:
        lens_summary: one row per criterion (index such as ``"top-1"``, ``"top-10"``), the
            columns of :func:`kc_utils.analysis.lens.summarise_first_rank_layers`.
        n_layers: the model's number of blocks (for "after x% of the blocks").
    """
    _need(
        lens_summary,
        ["n_prompts", "last_reached", "last_median", "subject_reached", "subject_median", "subject_earlier"],
        "logit-lens summary",
    )
    parts = []
    for criterion, row in lens_summary.iterrows():
        depth = (row["last_median"] + 1) / n_layers if not math.isnan(row["last_median"]) else float("nan")
        parts.append(
            f"**{criterion}**: the last position reaches it in {_pct(row['last_reached'])} of the "
            f"{int(row['n_prompts'])} prompts, at median layer {_num(row['last_median'], '.1f')} "
            f"(after {_pct(depth)} of the blocks); the subject's positions in "
            f"{_pct(row['subject_reached'])}, at median layer {_num(row['subject_median'], '.1f')}; "
            f"the subject is strictly earlier in {_pct(row['subject_earlier'])} of the prompts."
        )
    first = lens_summary.iloc[0]
    verdict = (
        "The answer is mostly readable at the subject before the last position"
        if first["subject_earlier"] > 0.5
        else "The answer is mostly **not** readable at the subject before it appears at the last position"
    )
    return " ".join(parts) + f" {verdict} ({lens_summary.index[0]})."


# ----------------------------------------------------------------------------- roles of one relation
def roles_text(roles: pd.DataFrame, top_k: int = 10) -> str:
    """Role counts and the strongest mover and relation head of one relation's roles table.

    Needs ``head``, ``role``, ``attn_subject``, ``attn_relation``, ``dla``, ``relation_type_auc``
    and the flags of :func:`kc_utils.analysis.heads.assign_head_roles`; uses ``answer_rank``,
    ``attn_function``, ``top_tokens`` and ``in_circuit`` when present.
    """
    _need(
        roles,
        ["head", "role", "attn_subject", "attn_relation", "dla", "relation_type_auc", "reads_relation"],
        "head-role",
    )
    counts = roles["role"].value_counts()
    text = [
        f"{_plural(len(roles), 'head')}: {counts.get('mover', 0)} mover, {counts.get('mix', 0)} mix, "
        f"{counts.get('relation', 0)} relation and {counts.get('other', 0)} other."
    ]
    movers = roles[roles["role"].isin(["mover", "mix"])].sort_values("dla", ascending=False)
    if len(movers):
        m = movers.iloc[0]
        rank = f" (the answer ranks {m['answer_rank']:.0f} in its projection, 0 = top)" if "answer_rank" in m else ""
        tokens = f"; its most frequent top tokens: {', '.join(map(str, m['top_tokens']))}" if "top_tokens" in m else ""
        text.append(
            f"The strongest mover, `{m['head']}`, puts {m['attn_subject']:.2f} of the last token's attention on the "
            f"subject and adds {m['dla']:+.2f} to the answer's logit{rank}{tokens}."
        )
    else:
        text.append("No head both reads the subject and writes the answer with these thresholds.")
    relation_heads = roles[roles["role"].isin(["relation", "mix"])].sort_values("relation_type_auc", ascending=False)
    if len(relation_heads):
        r = relation_heads.iloc[0]
        text.append(
            f"The clearest relation head, `{r['head']}`, puts {r['attn_relation']:.2f} of its attention on the "
            f"relation words and ranks the relation's other objects above the rest of the vocabulary with AUC "
            f"{r['relation_type_auc']:.2f} (0.5 = no preference)."
        )
    else:
        text.append("No head both reads the relation words and promotes the relation's objects.")
    readers = roles[roles["reads_relation"] & (roles["role"] == "other")]
    for _, h in readers.iterrows():
        verb = "suppresses" if h["relation_type_auc"] < 0.5 else "does not clearly promote"
        text.append(
            f"`{h['head']}` reads the relation words ({h['attn_relation']:.2f}) but {verb} the relation's objects "
            f"(AUC {h['relation_type_auc']:.2f}, DLA {h['dla']:+.2f}): other."
        )
    if "attn_function" in roles:
        sinks = roles[roles["attn_function"] >= 0.5]
        if len(sinks):
            names = ", ".join(f"`{h}`" for h in sinks["head"])
            text.append(f"Reading mostly function words such as *The* or *of* (not relation words): {names}.")
    if "in_circuit" in roles:
        inside = roles[roles["in_circuit"]]
        n_mov, n_rel = len(movers), len(relation_heads)
        text.append(
            f"The relation's circuit contains {int(inside['role'].isin(['mover', 'mix']).sum())} of the {n_mov} "
            f"movers and {int(inside['role'].isin(['relation', 'mix']).sum())} of the {n_rel} relation heads "
            f"({len(inside)} of its {len(roles)} heads are in the circuit)."
        )
    return " ".join(text)


# ----------------------------------------------------------------------------- threshold sensitivity
def sensitivity_text(sensitivity: pd.DataFrame) -> str:
    """How far each threshold can move before any head changes role, and its largest effect on the grid."""
    _need(sensitivity, ["threshold", "value", "is_reference", "changed"], "sensitivity")
    roles = [c for c in ("mover", "mix", "relation", "other") if c in sensitivity]
    sentences = []
    spread = {}
    for name, part in sensitivity.groupby("threshold", sort=False):
        part = part.sort_values("value").reset_index(drop=True)
        total = int(part.loc[0, roles].sum()) if roles else 0
        ref_rows = part.index[part["is_reference"]]
        if not len(ref_rows):
            raise ValueError(f"the sensitivity table has no reference value for {name!r}")
        ref = int(ref_rows[0])
        lo = hi = ref
        while lo > 0 and part.loc[lo - 1, "changed"] == 0:
            lo -= 1
        while hi < len(part) - 1 and part.loc[hi + 1, "changed"] == 0:
            hi += 1
        worst = part.loc[part["changed"].idxmax()]
        spread[name] = int(worst["changed"])
        stable = (
            f"roles unchanged for {part.loc[lo, 'value']:g}–{part.loc[hi, 'value']:g}"
            if lo < hi
            else "every other value on the grid changes some role"
        )
        if worst["changed"] == 0:
            sentences.append(
                f"`{name}` (used: {part.loc[ref, 'value']:g}): no head changes role anywhere on the grid "
                f"({part['value'].min():g}–{part['value'].max():g})."
            )
        else:
            counts = ", ".join(f"{int(worst[r])} {r}" for r in roles)
            sentences.append(
                f"`{name}` (used: {part.loc[ref, 'value']:g}): {stable}; at {worst['value']:g}, "
                f"{int(worst['changed'])} of {total} heads change role ({counts})."
            )
    most = max(spread, key=spread.get)
    summary = (
        f"The assignment depends most on `{most}` (up to {_plural(spread[most], 'head')} of {total} change role)"
        if spread[most]
        else "No threshold on the grid changes any role"
    )
    return " ".join(sentences) + f" {summary}."


# ----------------------------------------------------------------------------- roles per layer
def layers_text(per_layer: pd.DataFrame, n_layers: int) -> str:
    """Where each role sits, read from a ``[layer × role]`` count table (e.g. ``pd.crosstab``)."""
    if per_layer.empty:
        raise ValueError("the per-layer table is empty")
    layers = np.asarray(per_layer.index, dtype=float)
    half = n_layers / 2
    text, means = [], {}
    for role in ("mover", "mix", "relation", "other"):
        if role not in per_layer or per_layer[role].sum() == 0:
            continue
        counts = per_layer[role]
        total = int(counts.sum())
        top_layer = int(counts.idxmax())
        means[role] = float((counts * layers).sum() / total)
        early = float(counts[layers < half].sum() / total)
        text.append(
            f"{_plural(total, role + ' head')}: {int(counts.max())} in layer {top_layer}, {early:.0%} in the first "
            f"half (mean layer {means[role]:.2f})."
        )
    last = per_layer.loc[per_layer.index.max()]
    last = last[last > 0].sort_values(ascending=False)
    if len(last):
        listing = ", ".join(f"{int(n)} {r}" for r, n in last.items())
        text.append(
            f"The last layer ({int(per_layer.index.max())}) holds {listing} heads: mostly {last.index[0]} heads."
        )
    if "mover" in means and "relation" in means:
        if means["relation"] < means["mover"]:
            text.append(
                f"As in the paper's picture (knowledge gathered early to middle, refined later), the heads that read "
                f"the relation sit earlier (mean layer {means['relation']:.2f}) than the movers that bring the "
                f"subject's attribute to the last token ({means['mover']:.2f})."
            )
        else:
            text.append(
                f"Unlike the paper's picture, the relation heads do not sit earlier than the movers (mean layer "
                f"{means['relation']:.2f} vs {means['mover']:.2f})."
            )
    return " ".join(text)


# ----------------------------------------------------------------------------- group tests
def pool_text(heads: Sequence[str], pool: Sequence[str], reason: str = "") -> str:
    """Which heads the random sets are drawn from, and which are left out (grouped by layer)."""
    left_out = [h for h in heads if h not in set(pool)]
    if not left_out:
        return f"Random sets are drawn from all {len(heads)} heads."
    by_layer: dict[int, list[str]] = {}
    for h in left_out:
        by_layer.setdefault(parse_node(h).layer, []).append(h)
    per_layer = {layer: sum(parse_node(h).layer == layer for h in heads) for layer in by_layer}
    parts = [
        f"all {len(names)} heads of layer {layer}" if len(names) == per_layer[layer] else ", ".join(names)
        for layer, names in sorted(by_layer.items())
    ]
    why = f" ({reason})" if reason else ""
    return (
        f"Random sets are drawn from the {len(pool)} heads that write something on these prompts; "
        f"{'; '.join(parts)} output exactly zero{why} and are left out of the pool."
    )


_GROUP_COLUMNS = (
    "relation",
    "group",
    "test",
    "n_heads",
    "top1_group",
    "top1_random_mean",
    "top1_random_std",
    "flip_group",
    "flip_random_mean",
    "flip_random_std",
    "n_random",
    "n_distinct",
    "mean_overlap",
)


def group_tests_text(summary: pd.DataFrame, ablation: str = "mean") -> str:
    """Each role's group ablation and path patching against random same-size sets, over relations.

    ``summary`` has one row per relation × ``group`` (e.g. ``"movers"``, ``"relation heads"``) ×
    ``test`` (``"ablation"``/``"patching"``); a group with ``n_heads`` 0 (none found) may appear
    with NaN scores. A group counts as *below* the random sets when its accuracy is more than two
    standard deviations under their mean (and, for flips, *above* when more than two over). A
    baseline is called degenerate when fewer than half its random sets are distinct or all score
    the same (std 0).
    """
    _need(summary, _GROUP_COLUMNS, "group-test")
    text = []
    for group, rows in summary.groupby("group", sort=False):
        found = rows[rows["n_heads"] > 0]
        n_rel = rows["relation"].nunique()
        missing = sorted(set(rows["relation"]) - set(found["relation"]))
        if found.empty:
            text.append(f"No {group} were found in any of the {n_rel} relations.")
            continue
        abl = found[found["test"] == "ablation"]
        pat = found[found["test"] == "patching"]
        if len(abl):
            below = int((abl["top1_group"] < abl["top1_random_mean"] - 2 * abl["top1_random_std"]).sum())
            low = int((abl["top1_group"] <= 0.10).sum())
            text.append(
                f"**{group.capitalize()}** ({_span(abl['n_heads'], '.0f')} heads per relation). "
                f"{ablation.capitalize()}-ablating them together leaves top-1 accuracy {_span(abl['top1_group'])} "
                f"(at most 0.10 in {low} of {len(abl)} relations), against {_span(abl['top1_random_mean'])} for "
                f"random same-size sets (per-relation std {_span(abl['top1_random_std'])}); more than two standard "
                f"deviations below the random sets in {below} of {len(abl)} relations."
            )
        if len(pat):
            above = int((pat["flip_group"] > pat["flip_random_mean"] + 2 * pat["flip_random_std"]).sum())
            full = int((pat["flip_group"] >= 0.999).sum())
            text.append(
                f"Patching their last-position outputs from the corrupted prompt flips the answer to the corrupt "
                f"answer in {_span(pat['flip_group'])} of the prompts (all of them in {full} of {len(pat)} "
                f"relations), against {_span(pat['flip_random_mean'])} for random sets; more than two standard "
                f"deviations above them in {above} of {len(pat)} relations."
            )
            if pat["flip_group"].max() < 0.1:
                text.append(
                    "The corrupted prompt keeps the template and changes only the subject, so heads that read the "
                    "relation words see the same input in both runs: patching them is a negative control, and "
                    "flipping nothing is what it should do."
                )
        unmoved = int((abl["top1_group"] >= abl["top1_random_mean"] - 0.1).sum()) if len(abl) else 0
        if ablation == "mean" and unmoved >= max(1, len(abl) / 2):
            text.append(
                f"In {unmoved} of {len(abl)} relations the {group} ablated together leave accuracy within 0.10 of the "
                "random sets. Mean ablation replaces a head's output by its average over the prompts; a head whose "
                "output depends on the template rather than the subject keeps almost all of it, so mean ablation "
                f'cannot show whether the {group} matter (zero ablation can: `ablation = "zero"`).'
            )
        if missing:
            text.append(f"No {group} in {', '.join(missing)}.")
        mean_overlap = float(found["mean_overlap"].mean())
        text.append(f"Random sets share {mean_overlap:.1f} heads with the {group} on average.")
    degenerate = summary[
        (summary["n_heads"] > 0)
        & ((summary["n_distinct"] < summary["n_random"] / 2) | (summary["top1_random_std"] == 0))
        & (summary["test"] == "ablation")
    ]
    if len(degenerate):
        items = ", ".join(
            f"{r.relation} ({r.group}: {int(r.n_distinct)} distinct of {int(r.n_random)} sets, std "
            f"{r.top1_random_std:.2f})"
            for r in degenerate.itertuples()
        )
        text.append(
            f"Degenerate ablation baselines (fewer than half the random sets distinct, or every random set scoring "
            f"the same): {items}. There the comparison only says whether the group does anything at all."
        )
    return " ".join(text)


# ----------------------------------------------------------------------------- single-head ablations
def single_ablation_text(table: pd.DataFrame, ablation: str = "mean") -> str:
    """One head ablated at a time, by role, against the paper's reading of its Figure 5.

    ``table``: one row per relation with ``movers`` and ``relation heads`` (counts), ``mover Δp``,
    ``relation Δp`` (mean change of the answer's probability), ``mover share`` and ``relation
    share`` (share of the top gaining tokens that are other objects of the relation) and ``chance``.
    """
    _need(
        table,
        ["relation", "movers", "relation heads", "mover Δp", "relation Δp", "mover share", "relation share", "chance"],
        "single-ablation",
    )
    with_movers = table[table["movers"] > 0]
    with_relation = table[table["relation heads"] > 0]
    text = []
    if len(with_movers):
        ratio = float(with_movers["mover share"].mean() / max(with_movers["chance"].mean(), 1e-12))
        text.append(
            f"{ablation.capitalize()}-ablating **one** mover at a time changes the answer's probability by "
            f"{_span(with_movers['mover Δp'], '+.3f')} on average per relation ({len(with_movers)} relations): "
            + (
                "movers are redundant, so the group test above is the causal evidence. "
                if float(with_movers["mover Δp"].abs().max()) < REDUNDANT_DELTA
                else "a single mover matters on its own. "
            )
            + "The tokens that gain are other "
            f"objects of the relation {with_movers['mover share'].mean():.2f} of the time, {ratio:.0f}× chance "
            f"(paper: ablating a mover raises other languages)."
        )
    if len(with_relation):
        ratio = float(with_relation["relation share"].mean() / max(with_relation["chance"].mean(), 1e-12))
        closer = (with_relation["relation share"] < with_relation["mover share"]).sum()
        text.append(
            f"After one relation head is ablated, the gaining tokens are other objects "
            f"{with_relation['relation share'].mean():.2f} of the time ({ratio:.0f}× chance; lower than after a "
            f"mover ablation in {closer} of {len(with_relation)} relations). The paper's relation-head ablation "
            f"raises filler words instead, which would put this share near chance."
        )
    if not text:
        return "No relation has a mover or a relation head, so no single-head ablation is summarised."
    return " ".join(text)


# ----------------------------------------------------------------------------- provenance and departures
def circuit_sources_text(sources: pd.DataFrame, folder: str = "notebook 01") -> str:
    """Which relations reused notebook 01's circuit and which were recomputed here, and why.

    ``sources``: one row per relation with ``relation``, ``source`` (``"reused"`` or
    ``"recomputed"``) and ``reason``; ``folder`` names where the reused circuits came from.
    """
    _need(sources, ["relation", "source", "reason"], "circuit-source")
    reused = sources[sources["source"] == "reused"]
    redone = sources[sources["source"] != "reused"]
    text = []
    if len(reused):
        text.append(
            f"{_plural(len(reused), 'circuit')} reused from {folder} (recorded settings match): "
            f"{', '.join(reused['relation'])}."
        )
    if len(redone):
        reasons = "; ".join(f"{r.relation}: {r.reason}" for r in redone.itertuples())
        text.append(f"{_plural(len(redone), 'circuit')} recomputed here with the same settings — {reasons}.")
    return " ".join(text)


#: Largest mean change of the answer's probability under one mover's ablation that counts as redundancy.
REDUNDANT_DELTA = 0.05
#: Mean peak attention share above which :func:`departures_text` calls attention nearly one-hot.
ONE_HOT_ATTENTION = 0.7


def departures_text(all_roles: pd.DataFrame, n_layers: int, n_heads: int, n_writing: int, model_name: str) -> str:
    """How the model read here departs from the paper's GPT-2 medium, from the stacked roles table.

    ``all_roles``: :func:`kc_utils.analysis.heads.head_roles` of every relation with a
    ``relation`` column.
    """
    _need(all_roles, ["relation", "role", "attn_subject", "attn_relation", "attn_other"], "stacked head-role")
    shares = ["attn_subject", "attn_relation", "attn_other"] + (
        ["attn_function"] if "attn_function" in all_roles else []
    )
    peak = float(all_roles[shares].max(axis=1).mean())
    per_relation = all_roles.groupby("relation")["role"].apply(lambda r: int(r.isin(["mover", "mix"]).sum()))
    text = [
        f"`{model_name}` has {n_layers} layers of {n_heads} heads (the paper's GPT-2 medium: 24 × 16), and "
        f"{n_writing} of its {n_layers * n_heads} heads write anything."
    ]
    if peak >= ONE_HOT_ATTENTION:
        text.append(
            f"Its attention is nearly one-hot: averaged over heads and relations, the last token puts {peak:.2f} of "
            "its attention on a single kind of position (the paper's mover L14H7 puts 0.60 on the subject), so "
            "attention thresholds barely matter and the output criteria decide the roles."
        )
    else:
        text.append(
            f"Averaged over heads and relations, the last token puts {peak:.2f} of its attention on a single kind of "
            "position (the paper's mover L14H7 puts 0.60 on the subject): attention is spread, so the attention "
            "thresholds take part in the roles (their sensitivity is above)."
        )
    writing = max(n_writing, 1)
    # a random set of k heads drawn from the writing heads holds k · k / n_writing movers on average
    expected = float((per_relation.astype(float) ** 2 / writing).mean())
    sentence = (
        f"Movers are {_span(per_relation, '.0f')} heads per relation ({_span(100 * per_relation / writing, '.1f')}% "
        f"of the {n_writing} writing heads; GPT-2 medium's circuits name a few movers among 384 heads); a random head "
        f"set of the same size holds {expected:.2f} movers on average"
    )
    if expected >= 1:
        sentence += ", so it often contains several and the random baseline is partly a mover baseline."
    else:
        sentence += ", so the random baseline is a set of non-movers."
    text.append(sentence)
    return " ".join(text)
