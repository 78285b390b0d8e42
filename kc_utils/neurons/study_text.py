"""Sentences the notebook states, built from the tables shown beside them (never typed by hand).

Every function reads only its table(s) and the settings named in its arguments, so a sentence
cannot disagree with the numbers above it; each is tested on a hand-made table.
"""

from __future__ import annotations

import pandas as pd

__all__ = [
    "PAPER_INCONSISTENT_SHARE",
    "attention_sentence",
    "consistency_sentence",
    "departure_sentence",
    "intervention_sentence",
    "modification_sentence",
]

#: Chen et al. (2025): share of inconsistent facts (K_I) in LLaMA3-8B.
PAPER_INCONSISTENT_SHARE = 0.77

#: LLaMA3-8B: 32 layers of 14,336 MLP neurons.
PAPER_LAYERS, PAPER_NEURONS_PER_LAYER = 32, 14_336


def consistency_sentence(
    summary: pd.DataFrame, relation: str, static_threshold: float, otsu: float, overall: pd.DataFrame | None = None
) -> str:
    """The share of inconsistent facts of ``relation`` (and over all relations) beside the paper's 77%.

    Args:
        summary: :func:`kc_utils.neurons.consistency.consistency_summary` rows (one must be ``relation``).
        otsu: Otsu's threshold used for the labels.
        overall: a summary over many relations (optional), whose facts are pooled.
    """
    row = summary.set_index("relation").loc[relation]
    text = (
        f"Of the {int(row['n_facts'])} facts of `{relation}`, each asked in {int(row['n_queries'])} ways, "
        f"**{row['inconsistent_static']:.0%}** are inconsistent by the static threshold (CS < {static_threshold:.2f}) "
        f"and **{row['inconsistent_otsu']:.0%}** by Otsu's threshold (CS < {otsu:.2f}); the consistency score "
        f"ranges over {row['cs_min']:.2f}–{row['cs_max']:.2f} (mean {row['cs_mean']:.2f})."
    )
    if overall is not None and len(overall):
        n = overall["n_facts"].sum()
        static = (overall["inconsistent_static"] * overall["n_facts"]).sum() / n
        by_otsu = (overall["inconsistent_otsu"] * overall["n_facts"]).sum() / n
        text += (
            f" Over {len(overall)} relations ({int(n)} facts): **{static:.0%}** (static) and **{by_otsu:.0%}** (Otsu)."
        )
    text += f" Chen et al. report {PAPER_INCONSISTENT_SHARE:.0%} inconsistent facts in LLaMA3-8B."
    return text


#: Below this |Δ|, an effect is called negligible (a comparison at its floor).
FLOOR = 0.05


def intervention_sentence(summary: pd.DataFrame) -> str:
    """Δp on the source query vs its paraphrases vs random sets, for suppression (×0) and enhancement (×2).

    ``summary`` is :func:`kc_utils.neurons.interventions.intervention_summary`. When no source Δp
    reaches :data:`FLOOR`, the sentence says the comparison is at its floor (and why, when
    ``p_before_mean`` shows saturated answers).
    """
    table = summary.set_index(["factor", "kind"])
    parts = []
    for factor, verb in ((0.0, "Suppressing"), (2.0, "Enhancing")):
        if (factor, "source") not in table.index:
            continue
        source = table.loc[(factor, "source")]
        para = table.loc[(factor, "paraphrase")]
        ratio = abs(source["delta_mean"]) / max(abs(para["delta_mean"]), 1e-12)
        part = (
            f"{verb} a query's knowledge neurons (×{factor:g}) changes p(answer) by {source['delta_mean']:+.3f} "
            f"± {source['delta_std']:.3f} on that query and by {para['delta_mean']:+.3f} ± {para['delta_std']:.3f} "
            f"on its paraphrases ({ratio:.1f}× {'more' if ratio >= 1 else 'less'} on the source)"
        )
        if "logprob_mean" in table.columns:
            part += f"; in log p(answer), {source['logprob_mean']:+.3f} against {para['logprob_mean']:+.3f}"
        if (factor, "random") in table.index:
            rand = table.loc[(factor, "random")]
            part += f"; random sets of the same size: {rand['delta_mean']:+.3f} ± {rand['delta_std']:.3f}"
        parts.append(part + ".")
    sources = summary[summary["kind"] == "source"]
    if len(sources) and (sources["delta_mean"].abs() < FLOOR).all():
        why = ""
        if "p_before_mean" in sources.columns:
            why = f": the answers start at p = {sources['p_before_mean'].mean():.3f} on average, so Δp has little room"
        parts.append(
            f"Every mean change is below {FLOOR}, so this comparison is at its floor on this model{why}; "
            "the source-vs-paraphrase ratio should be read with that in mind."
        )
    return " ".join(parts)


def attention_sentence(
    summary: pd.DataFrame, neuron_layers: list[int] | None = None, attention_layers: list[int] | None = None
) -> str:
    """What scaling the attention to the most-attended positions does, all attention layers together.

    ``summary`` is :func:`kc_utils.neurons.interventions.attention_summary`. Given the layers holding
    knowledge neurons and the attention layers scaled, it says when no scaled attention can reach the
    neurons (attention of block ``L`` feeds MLPs ``L`` and later).
    """
    table = summary.set_index(["scaled", "factor", "keys"])
    parts = []
    for factor, verb in ((0.0, "Cutting"), (2.0, "Doubling")):
        if ("all", factor, "top") not in table.index:
            continue
        top = table.loc[("all", factor, "top")]
        part = (
            f"{verb} each head's attention to its most-attended position moves the knowledge neurons' mean "
            f"activation by {top['kn_change_mean']:+.0%} and p(answer) by {top['delta_p_mean']:+.3f}"
        )
        if ("all", factor, "random") in table.index:
            rand = table.loc[("all", factor, "random")]
            part += f" (random positions: {rand['kn_change_mean']:+.0%} and {rand['delta_p_mean']:+.3f})"
        parts.append(part + ".")
    if neuron_layers and attention_layers and max(neuron_layers) < min(attention_layers):
        parts.append(
            f"Every knowledge neuron here lies in layer(s) {sorted(set(neuron_layers))}, before the first attention "
            f"layer scaled ({min(attention_layers)}), so no scaled attention can reach them at this position."
        )
    return " ".join(parts)


def modification_sentence(summary: pd.DataFrame) -> str:
    """CAS vs query-local vs global for each task, from :func:`kc_utils.neurons.modification.modification_summary`."""
    parts = []
    for task in summary["task"].drop_duplicates():
        rows = summary[summary["task"] == task].set_index("method")
        best_gen = rows["generalisation"].idxmax()
        cas, local = rows.loc["CAS"], rows.loc["query-local"]
        parts.append(
            f"**{task.capitalize()}**: the best generalisation comes from the {best_gen} set "
            f"({rows.loc[best_gen, 'generalisation']:.3f}); CAS reaches {cas['generalisation']:.3f} "
            f"against {local['generalisation']:.3f} for the query-local set "
            f"({cas['generalisation'] - local['generalisation']:+.3f}), with reliability {cas['reliability']:.3f} vs "
            f"{local['reliability']:.3f} and locality {cas['locality']:.3f} vs {local['locality']:.3f} "
            f"({cas['n_neurons']:.1f} vs {local['n_neurons']:.1f} neurons)."
        )
        if rows["reliability"].abs().max() < FLOOR and rows["generalisation"].abs().max() < FLOOR:
            parts.append(
                f"No set moves the {task} metrics by {FLOOR} or more: at these sizes the {task} comparison is at "
                "its floor on this model, and its ranking is not evidence for or against CAS."
            )
    return " ".join(parts)


def departure_sentence(
    n_layers: int,
    d_mlp: int,
    summary: pd.DataFrame,
    relation: str,
    position: str,
    n_templates: int,
    trained_templates: bool = True,
) -> str:
    """Where this model departs from LLaMA3-8B, with this run's measured overlap range.

    Args:
        n_templates: the relation's queries; trained_templates: whether the model was trained on
            (most of) them, as the organism was.
    """
    row = summary.set_index("relation").loc[relation]
    total, paper_total = n_layers * d_mlp, PAPER_LAYERS * PAPER_NEURONS_PER_LAYER
    scale = f"{paper_total / total:,.0f}× more" if paper_total >= total else f"{total / paper_total:,.1f}× fewer"
    queries = (
        f"Its facts were taught in fixed templates, and its {n_templates} queries are those templates (one never "
        f"trained on) rather than ParaRel's free paraphrases, so they differ by a few template words"
        if trained_templates
        else f"Its {n_templates} queries are the relation's templates rather than ParaRel's paraphrases"
    )
    return (
        f"This model has {n_layers} layers of {d_mlp:,} MLP neurons ({total:,} in all) against LLaMA3-8B's "
        f"{PAPER_LAYERS} × {PAPER_NEURONS_PER_LAYER:,} = {paper_total:,} ({scale}). {queries}. A query has "
        f"{row['neurons_per_query']:.1f} knowledge neurons on average. Read at the `{position}` position, the "
        f"queries' neuron sets overlap {row['cs_min']:.2f}–{row['cs_max']:.2f} (mean pairwise intersection over "
        f"union), so a share of inconsistent facts here describes these templates on this model, "
        f"not LLaMA3-8B's storage."
    )
