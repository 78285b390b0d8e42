"""In-context learning: accuracy with demonstrations, where the last token looks, and the paper's Table 2.

Yao et al. (2024, §6, Table 2) give GPT-2 medium a demonstration before the query, find attention
heads that are new in the circuit and attend to the demonstration, and ablate them: accuracy falls
far more than when as many random heads are ablated. The pieces, in the order a notebook uses them:

1. **Accuracy by k and format** (:func:`accuracy_by_k`): top-1 accuracy and the answer's
   probability with ``k`` demonstrations (:mod:`kc_utils.data.fewshot`), and with the same
   demonstrations carrying wrong objects (the shuffled twin) — does their content matter?
2. **Attention to the demonstrations** (:func:`span_attention`): for every head, the share of the
   last token's attention on the demonstrations, their objects, the query's subject, the rest of
   the query and BOS, averaged over prompts. :func:`demo_attention_heads` ranks heads by the first.
   With no demonstrations that share is 0, so the rise from zero-shot to k-shot *is* the k-shot share.
3. **Heads that can write** (:func:`kc_utils.analysis.head_groups.writing_heads`): the organism's
   block 0 has no attention (its weights are zero); its heads never write, can never be in a
   circuit, and must not dilute a random baseline, so random sets are drawn from the others.
4. **Table 2** (:func:`table2_row`, :func:`table2`): original k-shot accuracy, accuracy with a head
   set ablated and with ``n_random`` (≥ 20) random same-size sets from the writing heads not in the
   set, via :func:`kc_utils.analysis.head_groups.group_vs_random` (the shared group-ablation code),
   beside the paper's numbers (:data:`PAPER_TABLE2`).
5. **Sentences** (:func:`accuracy_sentence`, :func:`circuit_change_sentence`, :func:`table2_sentence`,
   :func:`departures_sentence`): the notebook's computed text, built only from the tables shown.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool
from torch import Tensor
from tqdm.auto import tqdm

from kc_utils import models
from kc_utils.analysis.head_groups import answer_scores, group_test_summary, group_vs_random
from kc_utils.analysis.heads import resolve_heads
from kc_utils.analysis.lens import parse_node
from kc_utils.circuits.compare import CircuitDiff
from kc_utils.data.fewshot import FewShotPrompt, build_fewshot_prompts, check_format, fewshot_batch, shuffled_batch
from kc_utils.data.prompts import PromptBatch
from kc_utils.data.relations import RelationFileError, Sample, load_relation

__all__ = [
    "PAPER_TABLE2",
    "PAPER_TABLE2_SOURCE",
    "SPAN_BUCKETS",
    "TABLE2_RELATIONS",
    "accuracy_by_k",
    "accuracy_sentence",
    "circuit_change_sentence",
    "circuit_changes_table",
    "demo_attention_heads",
    "fewshot_facts",
    "departures_sentence",
    "span_attention",
    "span_masks",
    "table2",
    "table2_row",
    "table2_sentence",
]

#: The five relations of the paper's Table 2, in its order.
TABLE2_RELATIONS = ("adj_comparative", "word_sentiment", "substance_phase", "occupation_gender", "person_occupation")

#: Where the paper's numbers come from (the numbers themselves are :data:`PAPER_TABLE2`, kept here with it).
PAPER_TABLE2_SOURCE = (
    "Yao et al. 2024, Knowledge Circuits in Pretrained Transformers (NeurIPS 2024, arXiv:2405.17969), §6 "
    "(in-context learning), Table 2: GPT-2 medium, accuracy in % with the demonstration, with the new heads "
    "ablated and with as many random heads ablated"
)

#: The paper's Table 2 (accuracy in %): original (with the demonstration), new heads ablated, random heads ablated.
PAPER_TABLE2 = pd.DataFrame(
    {
        "relation": list(TABLE2_RELATIONS),
        "paper_original": [62.24, 89.02, 78.74, 86.97, 35.17],
        "paper_ablated": [32.55, 55.50, 52.85, 59.54, 23.27],
        "paper_random": [58.18, 88.61, 71.24, 86.54, 31.60],
    }
)

#: Where the last token's attention can go in a few-shot prompt (they partition the prompt's positions).
SPAN_BUCKETS = ("bos", "demos", "separators", "query_subject", "query_other")


# ---------------------------------------------------------------------------------------------- facts
def fewshot_facts(
    relations: Sequence[str], model_name: str, n_prompts: int, seed: int = 0
) -> tuple[dict[str, tuple[list[Sample], list[Sample], str]], dict[str, str]]:
    """The facts to ask and to demonstrate, per relation, and the relations that cannot be used (with why).

    For the organism (``model_name == "kc-organism"``) both come from the facts it was trained on
    (:func:`kc_utils.organism.load_split`); for any other model from the relation file. The queries
    are ``n_prompts`` of them drawn with ``seed`` (all when fewer); the pool is all of them. The
    template is the relation's first (a training template of the organism).

    Returns:
        ``(facts, missing)``: ``facts[relation] = (queries, pool, template)``; ``missing[relation]`` is
        the reason a requested relation was left out (not shipped, or not taught to the organism).
    """
    facts: dict[str, tuple[list[Sample], list[Sample], str]] = {}
    missing: dict[str, str] = {}
    split = None
    if model_name == models.ORGANISM_NAME:
        from kc_utils.organism import load_split

        split = load_split()
    for key in relations:
        try:
            relation = load_relation(key)
        except RelationFileError as error:
            missing[key] = f"no such relation file ({error})"
            continue
        if split is not None and relation.key not in split.relations:
            missing[key] = "the organism was not trained on it"
            continue
        if split is not None:
            pool, template = (
                list(split.relations[relation.key].trained),
                split.relations[relation.key].train_templates[0],
            )
        else:
            pool, template = list(relation.samples), relation.prompt_templates[0]
        queries = random.Random(f"{seed}-{relation.key}").sample(pool, min(n_prompts, len(pool)))
        facts[relation.key] = (queries, pool, template)
    return facts, missing


# ---------------------------------------------------------------------------------------------- accuracy
def accuracy_by_k(
    model: Any,
    facts: dict[str, tuple[Sequence[Sample], Sequence[Sample], str]],
    ks: Sequence[int],
    formats: Sequence[str],
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Top-1 accuracy and answer probability with ``k`` demonstrations, per relation and format.

    Args:
        facts: ``{relation: (queries, pool, template)}`` — the facts asked about, the facts the
            demonstrations come from, and the template of the sentence format.
        ks: numbers of demonstrations (0 = zero-shot).
        formats: prompt formats (:data:`kc_utils.data.fewshot.FORMATS`).

    Returns:
        One row per (relation, format, k): ``n``, ``top1``, ``prob``, and ``top1_shuffled`` /
        ``prob_shuffled`` with the demonstrations' objects shuffled (NaN for k = 0 or when no
        prompt has a shuffled twin of the same length).
    """
    for fmt in formats:
        check_format(fmt)
    rows = []
    jobs = [(fmt, k) for fmt in formats for k in ks]
    for fmt, k in tqdm(jobs, desc="accuracy by k", disable=not progress, leave=False):
        # every relation's prompts in one batch: one forward pass per (format, k)
        prompts = {
            key: build_fewshot_prompts(model, queries, k, fmt, template, pool=pool, seed=seed, relation=key)
            for key, (queries, pool, template) in facts.items()
        }
        clean = _per_prompt_scores(model, [p for ps in prompts.values() for p in ps], shuffled=False)
        twins = [p for ps in prompts.values() for p in ps if p.shuffled_prompt is not None]
        wrong = _per_prompt_scores(model, twins, shuffled=True) if twins else {}
        for key, ps in prompts.items():
            row = {"relation": key, "format": fmt, "k": k, "n": len(ps)}
            row["top1"] = float(np.mean([clean[(key, p.subject)][0] for p in ps]))
            row["prob"] = float(np.mean([clean[(key, p.subject)][1] for p in ps]))
            hits = [wrong[(key, p.subject)] for p in ps if (key, p.subject) in wrong]
            row["top1_shuffled"] = float(np.mean([h[0] for h in hits])) if hits else float("nan")
            row["prob_shuffled"] = float(np.mean([h[1] for h in hits])) if hits else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def _per_prompt_scores(
    model: Any, prompts: Sequence[FewShotPrompt], shuffled: bool, batch_size: int = 256
) -> dict[tuple[str, str], tuple[float, float]]:
    """``{(relation, subject): (top1, prob)}`` of the prompts (or of their shuffled twins)."""
    out = {}
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        batch = shuffled_batch(model, chunk) if shuffled else fewshot_batch(model, chunk, None)
        with torch.no_grad():
            scores = answer_scores(models.run_with_hooks(model, batch.clean), batch)
        for p, top1, prob in zip(chunk, scores["top1"].tolist(), scores["prob"].tolist()):
            out[(p.relation, p.subject)] = (top1, prob)
    return out


# ---------------------------------------------------------------------------------------------- attention
def span_masks(prompts: Sequence[FewShotPrompt], width: int) -> dict[str, Bool[Tensor, "b p"]]:
    """Position masks of :data:`SPAN_BUCKETS` (plus ``demo_objects``, inside ``demos``) for each prompt.

    ``bos`` is position 0; ``demos`` the union of the demonstrations' spans; ``separators`` every
    other position before the query; ``query_subject`` the query's subject; ``query_other`` the
    rest of the query (template words or the arrow, and the last token). Padding is in no bucket.
    """
    names = [*SPAN_BUCKETS, "demo_objects"]
    masks = {name: torch.zeros(len(prompts), width, dtype=torch.bool) for name in names}
    for i, p in enumerate(prompts):
        if p.n_tokens > width:
            raise ValueError(f"prompt {i} has {p.n_tokens} tokens but the batch is {width} wide")
        masks["bos"][i, 0] = True
        for start, end in p.demo_spans:
            masks["demos"][i, start:end] = True
        for start, end in p.demo_object_spans:
            masks["demo_objects"][i, start:end] = True
        q0, q1 = p.query_span
        masks["separators"][i, 1:q0] = ~masks["demos"][i, 1:q0]
        masks["query_other"][i, q0:q1] = True
        s0, s1 = p.query_subject_span
        masks["query_subject"][i, s0:s1] = True
        masks["query_other"][i, s0:s1] = False
    return masks


def span_attention(
    model: Any, batch: PromptBatch, prompts: Sequence[FewShotPrompt], heads: Sequence[str] | None = None
) -> pd.DataFrame:
    """Each head's attention from the last token to the parts of the prompt, averaged over prompts.

    Args:
        batch: :func:`kc_utils.data.fewshot.fewshot_batch` of ``prompts`` (same order).
        heads: heads to read (default: all).

    Returns:
        One row per head: ``head``, ``layer``, ``attn_<bucket>`` for :data:`SPAN_BUCKETS` (they sum to
        1), ``attn_demo_objects`` (part of ``attn_demos``) and ``attn_query`` (subject + other).
    """
    if len(prompts) != len(batch):
        raise ValueError(f"{len(prompts)} prompts but the batch has {len(batch)}; pass the prompts of the batch")
    if [p.prompt for p in prompts] != list(batch.prompts):
        raise ValueError("the prompts are not those of the batch (or not in its order)")
    names = resolve_heads(model, heads)
    by_layer: dict[int, list[tuple[str, int]]] = {}
    for name in names:
        _, layer, head = parse_node(model, name)
        by_layer.setdefault(int(layer), []).append((name, int(head)))
    with torch.no_grad():
        _, cache = models.run_with_cache(model, batch.clean, [models.attn_pattern_hook(layer) for layer in by_layer])
    rows_idx = torch.arange(len(batch), device=batch.clean.device)
    masks = {k: v.to(batch.clean.device).float() for k, v in span_masks(prompts, batch.clean.shape[1]).items()}
    out = {}
    for layer, heads_here in by_layer.items():
        pattern = cache[models.attn_pattern_hook(layer)].float()  # [b, heads, q, k]
        last = pattern[rows_idx, :, batch.last_pos]  # [b, heads, k]
        for name, head in heads_here:
            row = {"head": name, "layer": layer}
            for bucket, mask in masks.items():
                row[f"attn_{bucket}"] = float((last[:, head] * mask).sum(-1).mean())
            row["attn_query"] = row["attn_query_subject"] + row["attn_query_other"]
            out[name] = row
    return pd.DataFrame([out[n] for n in names])


def demo_attention_heads(attention: pd.DataFrame, n: int, pool: Sequence[str] | None = None) -> list[str]:
    """The ``n`` heads (from ``pool``, default all rows) with the most attention on the demonstrations.

    Ties are broken by the table's order. Raises ValueError for ``n < 1`` or a pool smaller than ``n``.
    """
    table = attention if pool is None else attention[attention["head"].isin(list(pool))]
    if n < 1 or len(table) < n:
        raise ValueError(f"cannot pick {n} heads from {len(table)}; use 1 <= n <= {len(table)}")
    return list(table.sort_values("attn_demos", ascending=False, kind="stable")["head"][:n])


# ---------------------------------------------------------------------------------------------- circuits
def circuit_changes_table(diffs: dict[str, CircuitDiff]) -> pd.DataFrame:
    """One row per relation from :func:`kc_utils.circuits.compare.compare_circuits` results."""
    rows = []
    for key, d in diffs.items():
        rows.append(
            {
                "relation": key,
                "heads_zero_shot": len(d.heads_kept) + len(d.heads_dropped),
                "heads_k_shot": len(d.heads_kept) + len(d.heads_added),
                "new_heads": ", ".join(d.heads_added),
                "n_new_heads": len(d.heads_added),
                "dropped_heads": ", ".join(d.heads_dropped),
                "n_dropped_heads": len(d.heads_dropped),
                "edges_added": d.edges_added,
                "edges_removed": d.edges_removed,
                "edges_kept": d.edges_kept,
                "node_jaccard": d.node_jaccard,
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- Table 2
def table2_row(
    model: Any,
    batch: PromptBatch,
    heads: Sequence[str],
    pool: Sequence[str],
    head_set: str,
    n_random: int = 20,
    ablation: str = "mean",
    seed: int = 0,
) -> dict[str, Any]:
    """One relation's Table-2 numbers for one head set (accuracy in %).

    Args:
        batch: the k-shot prompts.
        heads: the set ablated together.
        pool: heads the random sets come from (the writing heads); the set itself is excluded.
        head_set: what the set is (e.g. ``"new in the k-shot circuit"``), kept in the row.

    Returns:
        ``head_set``, ``heads``, ``n_heads``, ``original``, ``ablated``, ``random_mean``,
        ``random_std``, ``n_random``, ``n_distinct`` (distinct random sets: few when the pool
        outside the set is small), ``random_at_most_ablated`` (share of random sets whose accuracy
        is no higher than the set's), and the answer's mean probability ``prob_original``,
        ``prob_ablated``, ``prob_random_mean``, ``prob_random_std`` (finer than accuracy when
        accuracy does not move). When the pool has fewer than ``len(heads)`` heads outside the set,
        no random baseline can be drawn: the random columns are NaN and ``n_random`` is 0.
    """
    heads = list(heads)
    available = [h for h in pool if h not in set(heads)]
    baseline = len(available) >= len(heads)
    # random sets from the pool minus the set (overlap=False); several sets per forward pass
    table = group_vs_random(
        model,
        batch,
        heads,
        pool if baseline else list(dict.fromkeys([*heads, *pool])),
        test="ablation",
        n_random=n_random if baseline else 1,
        ablation=ablation,
        overlap=not baseline,
        seed=seed,
    )
    if not baseline:
        table = table[table["set"] != "random"]
    s = group_test_summary(table)
    randoms = table[table["set"] == "random"]
    nan = float("nan")
    return {
        "head_set": head_set,
        "heads": ", ".join(heads),
        "n_heads": len(heads),
        "original": 100 * s["top1_original"],
        "ablated": 100 * s["top1_group"],
        "random_mean": 100 * s["top1_random_mean"],
        "random_std": 100 * s["top1_random_std"],
        "n_random": int(s["n_random"]),
        "n_distinct": int(s["n_distinct"]),
        "random_at_most_ablated": s["top1_random_at_most_group"],
        "prob_original": float(table.loc[table["set"] == "none", "prob"].iloc[0]),
        "prob_ablated": float(table.loc[table["set"] == "group", "prob"].iloc[0]),
        "prob_random_mean": float(randoms["prob"].mean()) if len(randoms) else nan,
        "prob_random_std": float(np.std(randoms["prob"])) if len(randoms) else nan,
    }


def table2(rows: dict[str, dict[str, Any]], paper: pd.DataFrame = PAPER_TABLE2) -> pd.DataFrame:
    """The paper's Table 2 layout: our rows (``{relation: table2_row(...)}``) beside the paper's numbers.

    Relations the paper does not list get NaN paper columns.
    """
    ours = pd.DataFrame([{"relation": key, **row} for key, row in rows.items()])
    return ours.merge(paper, on="relation", how="left")


# ---------------------------------------------------------------------------------------------- sentences
def _pct(x: float) -> str:
    return "n/a" if x != x else f"{x:.0f}%"


def _points(x: float) -> str:
    """A whole number of points, without a negative zero."""
    text = f"{x:.0f}"
    return "0" if text == "-0" else text


def accuracy_sentence(table: pd.DataFrame, n_shots: int) -> str:
    """Zero-shot vs ``n_shots``-shot accuracy per format, from an :func:`accuracy_by_k` table."""
    parts = []
    for fmt, group in table.groupby("format", sort=False):
        zero = group[group["k"] == 0].set_index("relation")["top1"]
        shot = group[group["k"] == n_shots].set_index("relation")["top1"]
        if not len(zero) or not len(shot):
            continue
        gain = shot - zero.reindex(shot.index)
        mean_by_k = group.groupby("k")["top1"].mean()
        best_k = int(mean_by_k.idxmax())
        with_demos = mean_by_k[mean_by_k.index > 0]
        text = (
            f"In the {fmt} format, mean accuracy goes from {_pct(100 * zero.mean())} with no demonstration to "
            f"{_pct(100 * shot.mean())} with {n_shots} (it rises in {int((gain > 0).sum())} of {len(gain)} relations, "
            f"falls in {int((gain < 0).sum())}); the best k on average is {best_k} ({_pct(100 * mean_by_k.max())})"
        )
        if len(with_demos):
            text += f", the worst k ≥ 1 is {int(with_demos.idxmin())} ({_pct(100 * with_demos.min())})"
        text += "."
        shuffled = group[group["k"] == n_shots]["top1_shuffled"].dropna() if n_shots else pd.Series(dtype=float)
        if len(shuffled):
            text += (
                f" With the demonstrations' objects shuffled, {n_shots}-shot accuracy is "
                f"{_pct(100 * shuffled.mean())}, so the content of the demonstrations "
                f"{'matters' if shuffled.mean() < shot.mean() - 0.05 else 'barely matters'}."
            )
        parts.append(text)
    return " ".join(parts)


def circuit_change_sentence(changes: pd.DataFrame, n_shots: int, max_listed: int = 12) -> str:
    """Which heads are new in the k-shot circuits, from a :func:`circuit_changes_table`.

    The ``max_listed`` heads new in the most relations are named; the rest are counted (the table
    beside the sentence names them all).
    """
    n = len(changes)
    with_new = changes[changes["n_new_heads"] > 0]
    counts: dict[str, int] = {}
    for heads in with_new["new_heads"]:
        for h in heads.split(", "):
            counts[h] = counts.get(h, 0) + 1
    if not len(with_new):
        head_text = f"No head is new in the {n_shots}-shot circuit of any of the {n} relations."
    else:
        ranked = sorted(counts.items(), key=lambda x: (-x[1], x[0]))
        listed = ", ".join(f"{h} ({c} of {n})" for h, c in ranked[:max_listed])
        if len(ranked) > max_listed:
            rest = ranked[max_listed:]
            most = max(c for _, c in rest)
            listed += f" and {len(rest)} more heads, each new in at most {most} of {n} (in the table)"
        head_text = (
            f"Heads new in the {n_shots}-shot circuit appear in {len(with_new)} of {n} relations: {listed}; "
            f"{n - len(with_new)} relations gain no head."
        )
    dropped = int((changes["n_dropped_heads"] > 0).sum())
    return (
        f"{head_text} {dropped} of {n} relations lose at least one zero-shot head; on average the two circuits "
        f"share {changes['node_jaccard'].mean():.0%} of their nodes (Jaccard)."
    )


def table2_sentence(table: pd.DataFrame, n_sigma: float = 2.0, min_points: float = 5.0) -> str:
    """What Table 2 says: does ablating the head set cost more than random heads, here and in the paper?

    A row counts as *specific* when its ablated accuracy is below the random mean by more than
    ``n_sigma`` random standard deviations and by more than ``min_points`` accuracy points.
    """
    parts = []
    specific = []
    for _, r in table.iterrows():
        if r["n_random"] == 0 or r["random_mean"] != r["random_mean"]:
            parts.append(f"{r['relation']}: no random baseline (too few other heads)")
            continue
        gap = r["random_mean"] - r["ablated"]
        is_specific = gap > max(n_sigma * r["random_std"], min_points)
        specific.append(is_specific)
        parts.append(
            f"{r['relation']} ({r['heads']}): {_pct(r['original'])} → {_pct(r['ablated'])} vs random "
            f"{r['random_mean']:.0f} ± {r['random_std']:.0f}%"
        )
    n_specific = int(sum(specific))
    text = (
        f"Ablating the chosen heads costs more than as many random heads (by more than {n_sigma:g} standard "
        f"deviations and {min_points:g} points) in {n_specific} of {len(specific)} rows. " + "; ".join(parts) + "."
    )
    paper = table.dropna(subset=["paper_original"])
    if len(paper):
        ours_drop = (paper["original"] - paper["ablated"]).mean()
        paper_drop = (paper["paper_original"] - paper["paper_ablated"]).mean()
        paper_random_drop = (paper["paper_original"] - paper["paper_random"]).mean()
        ours_random_drop = (paper["original"] - paper["random_mean"]).mean()
        text += (
            f" Over the {len(paper)} rows of relations the paper also reports, ablation costs "
            f"{_points(ours_drop)} points here ({_points(ours_random_drop)} for random heads) against "
            f"{_points(paper_drop)} in the paper ({_points(paper_random_drop)} for random heads)."
        )
    return text


def departures_sentence(
    n_layers: int, n_heads: int, n_writing: int, fmt: str, n_shots: int, organism: bool = True
) -> str:
    """Where the model departs from the paper's GPT-2 medium setting, in plain words.

    ``organism``: the shipped model organism (block 0 without attention, arrow-format few-shot training,
    accuracies over its trained facts); otherwise a pretrained model, described without those assumptions.
    """
    silent = n_layers * n_heads - n_writing
    shape = f"The model has {n_layers} layers of {n_heads} heads against GPT-2 medium's 24 of 16; "
    if not organism:
        fmt_text = (
            "the paper's layout: the relation's template written out for each demonstration, ended by a period"
            if fmt == "sentence"
            else "the arrow format `s -> o ;`, not the paper's sentences"
        )
        silent_text = (
            f"{silent} of its heads write nothing on these prompts and are left out of the random baselines"
            if silent
            else "every head writes something, so random baselines draw from all of them"
        )
        return (
            shape + f"{silent_text}. Its {n_shots}-shot prompts use {fmt_text}. Accuracies are over a sample of "
            "each relation file's facts, the paper's over all facts of a relation."
        )
    fmt_text = (
        "the arrow format `s -> o ;` it was trained on (60 few-shot documents of 4 pairs per relation), "
        "so demonstrations are in distribution"
        if fmt == "arrow"
        else "sentences of a training template one after another, a layout it never saw in training (each "
        "training document holds one fact)"
    )
    return (
        shape + f"{silent} heads (block 0) have no attention and write nothing, so circuits and random baselines "
        f"use the {n_writing} others. Its {n_shots}-shot prompts use {fmt_text}. The paper's accuracies are over "
        "all facts of a relation; ours are over facts the organism was trained on."
    )
