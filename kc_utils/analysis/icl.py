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
5. **Sentences** (:mod:`kc_utils.analysis.icl_text`): the notebook's computed text, built only from the
   tables shown.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
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
from kc_utils.circuits.budget import SMALL_GRAPH_EDGES
from kc_utils.circuits.compare import CircuitDiff
from kc_utils.data.fewshot import FewShotPrompt, build_fewshot_prompts, check_format, fewshot_batch, shuffled_batch
from kc_utils.data.prompts import PromptBatch
from kc_utils.data.relations import RelationFileError, Sample, load_relation

__all__ = [
    "PAPER_TABLE2",
    "PAPER_TABLE2_SOURCE",
    "SPAN_BUCKETS",
    "TABLE2_HEAD_SETS",
    "TABLE2_RELATIONS",
    "accuracy_by_k",
    "circuit_changes_table",
    "demo_attention_heads",
    "fewshot_facts",
    "span_attention",
    "span_masks",
    "table2",
    "table2_head_sets",
    "table2_row",
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
    model: Any, prompts: Sequence[FewShotPrompt], shuffled: bool, batch_size: int = 32
) -> dict[tuple[str, str], tuple[float, float]]:
    """``{(relation, subject): (top1, prob)}`` of the prompts (or of their shuffled twins).

    The prompts run shortest first, ``batch_size`` at a time, so that each pass pads its rows to a length near
    their own: every relation's prompts in one batch would pad them all to the longest (on SmolLM2-135M, the
    sentence-format prompts with 4 demonstrations run from 33 to 56 tokens). A prompt's scores do not depend on
    the rows beside it.
    """
    texts = [p.shuffled_prompt if shuffled else p.prompt for p in prompts]
    lengths = [len(ids) for ids in models.tokenize(model, texts)]
    ordered = [prompts[i] for i in sorted(range(len(prompts)), key=lambda i: lengths[i])]
    out = {}
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start : start + batch_size]
        batch = shuffled_batch(model, chunk) if shuffled else fewshot_batch(model, chunk, None)
        with torch.no_grad(), models.without_edge_hooks(model):  # a plain pass: no per-head edge point is read
            scores = answer_scores(
                models.last_logits(model, batch.clean, batch.last_pos)[:, None], batch.at_last_position()
            )
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
    with torch.no_grad(), models.without_edge_hooks(model):  # patterns only
        cache = models.cache_activations(model, batch.clean, [models.attn_pattern_hook(layer) for layer in by_layer])
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
#: Table 2's head sets per relation, in the order the relation's main row is chosen: the heads new in the k-shot
#: circuit, else the heads with the most attention to the demonstrations.
TABLE2_HEAD_SETS = ("new in the k-shot circuit", "most attention to demonstrations")


def table2_head_sets(
    head_sets: Mapping[str, Mapping[str, Sequence[str]]], n_edges: int, setting: bool | str = "auto"
) -> tuple[dict[str, dict[str, list[str]]], list[str]]:
    """The head sets Table 2 ablates, per relation, and the relations whose attention set is left out.

    Each set ablated is a row of ``n_random + 1`` ablated passes over the k-shot prompts. The heads new in the
    k-shot circuit are always ablated (the paper's Table 2); the heads with the most attention to the
    demonstrations stand in where no head is new, and beside them only when ``setting`` says so: ``True``,
    ``False``, or ``"auto"`` (on graphs of at most
    :data:`~kc_utils.circuits.budget.SMALL_GRAPH_EDGES` edges, the organism's, where a row takes seconds; on
    SmolLM2-135M's 70,651-edge graph each of those rows took about a minute on one thread).

    Args:
        head_sets: ``{relation: {set name: heads}}`` with the names of :data:`TABLE2_HEAD_SETS`.
        n_edges: edges of the model's graph (``Graph.from_model(model).n_edges``).
        setting: ``True``, ``False`` or ``"auto"``.

    Returns:
        ``(sets, left_out)``: the non-empty sets to ablate, in :data:`TABLE2_HEAD_SETS` order, and the relations
        whose attention set was not ablated (because the new heads were and ``setting`` left it out).

    Raises:
        ValueError: ``setting`` is none of the three, or a relation lacks one of :data:`TABLE2_HEAD_SETS`.

    Example:
        >>> sets = {"r1": {"new in the k-shot circuit": ["a5.h1"], "most attention to demonstrations": ["a3.h0"]},
        ...         "r2": {"new in the k-shot circuit": [], "most attention to demonstrations": ["a3.h0"]}}
        >>> chosen, left_out = table2_head_sets(sets, n_edges=70_651)
        >>> chosen["r1"], chosen["r2"], left_out
        ({'new in the k-shot circuit': ['a5.h1']}, {'most attention to demonstrations': ['a3.h0']}, ['r1'])
        >>> _, left_out_on_the_organism = table2_head_sets(sets, n_edges=479)
        >>> left_out_on_the_organism
        []
    """
    if setting not in ("auto", True, False):
        raise ValueError(f"ablate_attention_heads={setting!r}: use 'auto', True or False")
    both = n_edges <= SMALL_GRAPH_EDGES if setting == "auto" else bool(setting)
    new_name, attention_name = TABLE2_HEAD_SETS
    chosen: dict[str, dict[str, list[str]]] = {}
    left_out = []
    for relation, sets in head_sets.items():
        missing = [name for name in TABLE2_HEAD_SETS if name not in sets]
        if missing:
            raise ValueError(f"{relation}: no head set named {missing[0]!r}; give both of {TABLE2_HEAD_SETS}")
        new, attention = list(sets[new_name]), list(sets[attention_name])
        chosen[relation] = {}
        if new:
            chosen[relation][new_name] = new
        if attention and (both or not new):
            chosen[relation][attention_name] = attention
        elif attention:
            left_out.append(relation)
    return chosen, left_out


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
