"""Sentences built from the hallucination tables for notebook 04, so no number in its text is typed by hand.

Each function reads one table of :mod:`kc_utils.analysis.failure_kinds`, :mod:`kc_utils.analysis.wrong_answer_heads`,
:mod:`kc_utils.analysis.head_repair` or :mod:`kc_utils.analysis.hallucination` (the columns its docstring
names) and returns plain text; each is tested on a hand-made table whose sentence is known.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from kc_utils.analysis.failure_kinds import PROMPT_KINDS
from kc_utils.analysis.head_repair import ALPHA, MIN_HOLDOUT_FAILURES

__all__ = [
    "describe_case",
    "describe_departures",
    "describe_enrichment",
    "describe_explained",
    "describe_kinds",
    "describe_repair",
    "describe_survey",
    "describe_untested_repair",
    "describe_wrong_answers",
]


def _share(n: float, total: float) -> str:
    return f"{n:.0f} of {total:.0f} ({n / total:.0%})" if total else f"{n:.0f} of 0"


def describe_kinds(kinds: pd.DataFrame, group_column: str = "group") -> str:
    """One sentence per group of a classification table: how many prompts of each kind, and confidence.

    Args:
        kinds: rows with ``group_column``, ``kind`` (:data:`~kc_utils.analysis.failure_kinds.PROMPT_KINDS`) and
            ``confidence``.

    Returns:
        E.g. ``"unseen template: 10 prompts, 6 of 10 (60%) correct; of the 4 wrong, 3 of 4 (75%) are
        knowledge-present (mean confidence 0.80) and 1 of 4 (25%) knowledge-absent (0.55)."``, one
        line per group in order of appearance.
    """
    needed = {group_column, "kind", "confidence"}
    if not needed <= set(kinds.columns):
        raise ValueError(f"the classification table lacks columns {sorted(needed - set(kinds.columns))}")
    unknown = set(kinds["kind"]) - set(PROMPT_KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; expected {PROMPT_KINDS}")
    lines = []
    for group, rows in kinds.groupby(group_column, sort=False):
        wrong = rows[rows["kind"] != "correct"]
        parts = [f"{group}: {len(rows)} prompts, {_share((rows['kind'] == 'correct').sum(), len(rows))} correct"]
        if len(wrong):
            detail = []
            for kind, label in (("knowledge_present", "knowledge-present"), ("knowledge_absent", "knowledge-absent")):
                these = wrong[wrong["kind"] == kind]
                conf = f"mean confidence {these['confidence'].mean():.2f}" if len(these) else "none"
                detail.append(f"{_share(len(these), len(wrong))} {label} ({conf})")
            parts.append(f"of the {len(wrong)} wrong, " + " and ".join(detail))
        lines.append("; ".join(parts) + ".")
    return "\n".join(lines)


def _p(value: float) -> str:
    return f"p = {value:.3f}" if value < 0.01 else f"p = {value:.2f}"


def describe_repair(
    summary: Mapping[str, float], heads: Sequence[str], intervention: str = "patch", chosen: str = ""
) -> str:
    """A sentence from a :func:`~kc_utils.analysis.head_repair.repair_summary` of a
    :func:`~kc_utils.analysis.head_repair.repair` table.

    Says how often the correct answer is top-1 before, after the intervention on ``heads``, and after
    the random sets (mean ± std, how many), with the permutation p-value; the set "beats" the random
    sets when ``p < ALPHA`` (0.05) — or the baseline is said to be degenerate (std 0).

    Args:
        chosen: how the heads were chosen, shown after them (e.g. "chosen on the other 23 failures").
    """
    needed = ("top1_original", "top1_group", "top1_random_mean", "top1_random_std", "n_random", "p_value")
    missing = [k for k in needed if k not in summary]
    if missing:
        raise ValueError(f"not a repair_summary: it lacks {missing}")
    if not heads:
        raise ValueError("name the head set the summary belongs to")
    before, group = summary["top1_original"], summary["top1_group"]
    mean, std, n = summary["top1_random_mean"], summary["top1_random_std"], int(summary["n_random"])
    verb = {"patch": "patching", "mean": "mean-ablating", "zero": "zero-ablating"}.get(intervention, intervention)
    on = f"Of {summary['n_prompts']:.0f} held-out failures" if "n_prompts" in summary else "Of the prompts"
    text = (
        f"{on}, the correct answer is top-1 for {before:.0%} before any intervention; {verb} {', '.join(heads)}"
        f"{f' ({chosen})' if chosen else ''} makes it top-1 for {group:.0%}, against {mean:.0%} ± {std:.0%} for "
        f"{n} random sets of {len(heads)} head{'s' if len(heads) != 1 else ''}"
    )
    if n == 0 or math.isnan(mean):
        return text + ". There is no random baseline to compare with."
    text += f" ({_p(summary['p_value'])}, permutation over the random sets)."
    if std == 0:
        return text + (
            f" The random baseline is degenerate: every random set gives {mean:.0%}, so the comparison rests "
            "on a single value."
        )
    verdict = "beats the random sets" if summary["p_value"] < ALPHA else "does not beat the random sets"
    text += f" The set {verdict} at p < {ALPHA:g}."
    if 1 / (n + 1) >= ALPHA:
        text += (
            f" With {n} random sets the smallest p-value possible is 1/{n + 1} = {1 / (n + 1):.2f}, so no set of this "
            f"size can reach p < {ALPHA:g} here."
        )
    return text


def describe_untested_repair(relation: str, n_failures: int, n_facts: int) -> str:
    """Why no held-out repair is scored on ``relation``: ``n_failures`` knowledge-present failures among ``n_facts``
    facts are fewer than :data:`~kc_utils.analysis.head_repair.MIN_HOLDOUT_FAILURES`, and the knobs that add some.

    Example:
        >>> describe_untested_repair("country_language", 1, 48)[:60]
        '**Repair not tested on `country_language`**: 1 knowledge-pre'
    """
    if n_failures >= MIN_HOLDOUT_FAILURES:
        raise ValueError(f"{n_failures} failures are enough for a held-out repair (at least {MIN_HOLDOUT_FAILURES})")
    plural = "s" if n_failures != 1 else ""
    return (
        f"**Repair not tested on `{relation}`**: {n_failures} knowledge-present failure{plural} "
        f"among {n_facts} facts, and a held-out test needs at least {MIN_HOLDOUT_FAILURES} (heads chosen on half, "
        "scored on the other half). Raise `n_prompts` or `max_failures`, or choose a relation with more failures "
        '(`relation="auto"` picks the one with the most).'
    )


def describe_wrong_answers(kinds: pd.DataFrame, group_column: str = "group") -> str:
    """One sentence per group: what the wrong answers are (``wrong_kind`` of
    :func:`~kc_utils.analysis.failure_kinds.classify_and_name`).

    E.g. ``"known subjects: of 4 wrong answers, 3 of 4 (75%) are another attribute of the subject
    (most often person_native_language, 3), 1 of 4 (25%) an object of the asked relation for another
    subject and 0 of 4 (0%) neither."``
    """
    needed = {group_column, "wrong_kind", "wrong_relations"}
    if not needed <= set(kinds.columns):
        raise ValueError(f"the table lacks columns {sorted(needed - set(kinds.columns))}; use classify_and_name")
    lines = []
    for group, rows in kinds.groupby(group_column, sort=False):
        wrong = rows[rows["wrong_kind"] != "correct"]
        if wrong.empty:
            lines.append(f"{group}: no wrong answers.")
            continue
        same = wrong[wrong["wrong_kind"] == "same_subject"]
        which = ""
        if len(same):
            counts = same["wrong_relations"].value_counts()
            which = f" (most often {counts.index[0]}, {counts.iloc[0]})"
        n = len(wrong)
        lines.append(
            f"{group}: of {n} wrong answers, {_share(len(same), n)} are another attribute of the subject{which}, "
            f"{_share((wrong['wrong_kind'] == 'relation_object').sum(), n)} an object of the asked relation for "
            f"another subject and {_share((wrong['wrong_kind'] == 'other').sum(), n)} neither."
        )
    return "\n".join(lines)


def _layer(value: float) -> str:
    return "never" if math.isnan(value) else ("the embeddings" if value < 0 else f"block {value:.0f}")


def _top1(value: float) -> str:
    return "never becomes top-1" if math.isnan(value) else f"becomes top-1 after {_layer(value)}"


def describe_case(case: Mapping[str, Any], max_rank: int = 2) -> str:
    """Paragraph reading one case like the paper's Malaysia example, from
    :func:`~kc_utils.analysis.hallucination.case_summary`.

    ``max_rank``: an answer counts as built up at the subject when its best 0-based rank there is at most
    this; the paragraph shows ranks 1-based (rank 1 = top-1), like the figures.
    """
    needed = ("prompt", "correct", "wrong", "head", "head_dla_wrong", "head_dla_correct", "logit_diff")
    missing = [k for k in needed if k not in case]
    if missing:
        raise ValueError(f"not a case_summary: it lacks {missing}")
    c, w = case["correct"], case["wrong"]
    built = [a for a, key in ((c, "correct"), (w, "wrong")) if case[f"{key}_subject_rank"] <= max_rank]
    verdict = {
        2: "both attributes are built up at the subject",
        1: f"only {built[0]!r} is built up at the subject" if built else "",
        0: "neither is built up at the subject",
    }[len(built)]
    where = (
        f"At the subject, {c!r} reaches rank {case['correct_subject_rank'] + 1:.0f} (1 = top-1) after "
        f"{_layer(case['correct_subject_layer'])} and {w!r} rank {case['wrong_subject_rank'] + 1:.0f} after "
        f"{_layer(case['wrong_subject_layer'])}: {verdict} (within the top {max_rank + 1}). At the last position {c!r} "
        f"{_top1(case['correct_last_top1_layer'])} and {w!r} {_top1(case['wrong_last_top1_layer'])}."
    )
    head = (
        f"The head that favours {w!r} most is {case['head']}: it adds {case['head_dla_wrong']:+.2f} to the logit of "
        f"{w!r} and {case['head_dla_correct']:+.2f} to that of {c!r} ({case['head_share']:.0%} of the model's margin "
        f"of {case['logit_diff']:.2f} for the wrong answer), and puts {case['head_attn_subject']:.2f} of the last "
        f"token's attention on the subject (most on {case['head_top_key']!r})."
    )
    tokens = f" Its top tokens at the last position: {', '.join(case['top_tokens'])}." if case.get("top_tokens") else ""
    return f"For {case['prompt']!r} the model answers {w!r}, not {c!r}. {where} {head}{tokens}"


def describe_explained(explained: pd.DataFrame, ranked: pd.DataFrame, max_size: int) -> str:
    """How often one head, or at most ``max_size`` heads, explain the wrong answer
    (:func:`~kc_utils.analysis.wrong_answer_heads.explaining_heads`,
    :func:`~kc_utils.analysis.wrong_answer_heads.rank_heads`)."""
    for column in ("by_one_head", "by_small_set", "top_head"):
        if column not in explained:
            raise ValueError(f"not an explaining_heads table: it lacks {column!r}")
    if explained.empty or ranked.empty:
        raise ValueError("no failures to describe")
    n = len(explained)
    top = ranked.iloc[0]
    one, small = _share(explained["by_one_head"].sum(), n), _share(explained["by_small_set"].sum(), n)
    return (
        f"Over {n} knowledge-present failures, one head's direct contribution to logit(wrong) − logit(correct) is "
        f"larger than the model's margin in {one}, and at most {max_size} heads' in {small}. The head with the "
        f"largest mean contribution is {top['head']} ({top['mean_dla_diff']:+.2f} on average; the largest of all "
        f"heads in {top['top_share']:.0%} of the failures; {top['attn_subject']:.2f} of its attention on the subject)."
    )


def describe_survey(table: pd.DataFrame) -> str:
    """Across relations (:func:`~kc_utils.analysis.hallucination.failure_summary` rows): where knowledge-present
    failures occur, what repairs them on held-out failures (p-values), and which relations have too few failures
    to hold any out."""
    needed = {"relation", "n_present", "same_subject_share", "repaired", "random_mean", "random_std", "repair_heads"}
    needed |= {"p_value", "n_held_out"}
    if not needed <= set(table.columns):
        raise ValueError(f"not a failure_summary table: it lacks {sorted(needed - set(table.columns))}")
    with_failures = table[table["n_present"] > 0]
    if with_failures.empty:
        return f"None of the {len(table)} relations has a knowledge-present failure."
    scored = with_failures[with_failures["n_held_out"] > 0]
    beats = scored[scored["p_value"] < ALPHA]
    same = with_failures[with_failures["same_subject_share"] > 0.5]

    def one(r: Any) -> str:
        if r.n_held_out == 0:
            return f"{r.relation} ({r.n_present:.0f}; too few to hold out)"
        return (
            f"{r.relation} ({r.n_present:.0f}; {r.repair_heads} repairs {r.repaired:.0%} of {r.n_held_out:.0f} "
            f"held out vs {r.random_mean:.0%} ± {r.random_std:.0%}, {_p(r.p_value)})"
        )

    listed = ", ".join(one(r) for r in with_failures.itertuples())
    text = (
        f"{len(with_failures)} of {len(table)} relations have knowledge-present failures: {listed}. In "
        f"{len(same)} of them most wrong answers are another attribute of the subject "
        f"({', '.join(same['relation']) or 'none'}). Patching the single head with the largest mean contribution on "
        f"half the failures beats random heads on the other half (p < {ALPHA:g}) in {len(beats)} of the "
        f"{len(scored)} relations with enough failures to hold out ({', '.join(beats['relation']) or 'none'})."
    )
    if "n_random" in scored and len(scored) and (1 / (scored["n_random"] + 1) >= ALPHA).all():
        floor = scored[np.isclose(scored["p_value"], 1 / (scored["n_random"] + 1)) & (scored["repaired"] > 0)]
        n = int(scored["n_random"].max())
        text += (
            f" With at most {n} other heads to compare with, no single head can reach p < {ALPHA:g} (the smallest "
            f"p-value is 1/{n + 1}); the head repairs more than every other head in {len(floor)} of them "
            f"({', '.join(floor['relation']) or 'none'})."
        )
    return text


def describe_enrichment(curves: Mapping[str, pd.DataFrame], max_rank: int, layer: int = 0) -> str:
    """Subject enrichment per group from :func:`~kc_utils.analysis.failure_kinds.rank_curves` tables: the correct answer
    at the subject after a block."""
    if len(curves) < 1:
        raise ValueError("give at least one group's rank curves")
    parts = []
    for group, table in curves.items():
        rows = table[table["layer"] == layer]
        last = table[table["layer"] == table["layer"].max()]
        if rows.empty:
            raise ValueError(f"the curves of {group!r} have no layer {layer}")
        parts.append(
            f"{group}: {rows['subject_share'].iloc[0]:.0%} within the top {max_rank + 1} at the subject after "
            f"block {layer} (median rank {rows['subject_median_rank'].iloc[0] + 1:.0f}, 1 = top-1), "
            f"{last['last_share'].iloc[0]:.0%} at the last position after the final block (median rank "
            f"{last['last_median_rank'].iloc[0] + 1:.0f})"
        )
    return "The correct answer — " + "; ".join(parts) + "."


def describe_departures(
    n_layers: int,
    relation: str,
    unseen_template: str,
    train_template: str,
    kinds: pd.DataFrame,
    known_kinds: pd.DataFrame,
    survey: pd.DataFrame | None = None,
    paper_relation: str = "country_currency",
    organism: bool = True,
) -> str:
    """Where the model departs from GPT-2 medium, from the tables of the run.

    Args:
        kinds: the relation's classification in the template the failures come from
            (:func:`~kc_utils.analysis.failure_kinds.classify_and_name`).
        known_kinds: the same facts in the training (first) template.
        survey: :func:`~kc_utils.analysis.hallucination.failure_summary` rows; adds a sentence on ``paper_relation``
            (the paper's case).
        organism: the model is the organism (trained on the relation files, with held-out subjects); otherwise a
            pretrained model, described from its layer count and the tables only.
    """
    for table, name in ((kinds, "kinds"), (known_kinds, "known_kinds")):
        if "kind" not in table:
            raise ValueError(f"{name} lacks the 'kind' column; use classify_and_name")
    wrong = int((kinds["kind"] != "correct").sum())
    present = int((kinds["kind"] == "knowledge_present").sum())
    measured = (
        f"For {relation}, {_share(present, wrong)} wrong answers to {unseen_template!r} are knowledge-present, while "
        f"the same facts asked with {train_template!r} are answered {(known_kinds['kind'] == 'correct').mean():.0%} "
        f"correctly."
    )
    if organism:
        text = (
            f"The model has {n_layers} layers, not GPT-2 medium's 24, and was trained on the 21 relation files only. "
            f"Its knowledge-present failures do not come from web-scale noise: they come from a template it never "
            f"saw. {measured} Held-out subjects are the no-knowledge case by construction: they never occur in the "
            f"corpus."
        )
    else:
        layers = "as GPT-2 medium has" if n_layers == 24 else "not GPT-2 medium's 24"
        text = (
            f"The model has {n_layers} layers ({layers}) and is pretrained on web text, as GPT-2 is, so its "
            f"failures are of the paper's kind: no template or subject is unseen by construction. {measured}"
        )
    if survey is not None and paper_relation in set(survey["relation"]):
        row = survey[survey["relation"] == paper_relation].iloc[0]
        asked = "with a never-trained template as well" if organism else "in its last template"
        text += (
            f" The paper's own case, {paper_relation}, is asked here {asked}: "
            f"{_share(row['n_present'], row['n_wrong'])} of its wrong answers are knowledge-present"
        )
        if row["n_present"] > 0:
            text += (
                f", and {row['same_subject_share']:.0%} of those are another attribute of the subject (the paper's "
                "'Malaysian' is one)."
            )
        else:
            text += ", so none of them can be the paper's kind of failure (its 'Malaysian' is one)."
    return text
