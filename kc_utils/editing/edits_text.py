"""Sentences built from the tables notebook 03 shows, so no number in its text is typed by hand.

Each function reads one table (the columns its docstring names) and returns plain text; each is tested on a
hand-made table whose sentence is known.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

__all__ = [
    "describe_case",
    "describe_covariance",
    "describe_departure",
    "describe_departures",
    "describe_leak_circuits",
    "describe_location",
    "describe_paper_reading",
    "describe_rome_layers",
    "describe_sweep",
]

_NAMES = {"rome": "ROME", "ft-m": "FT-M"}


def _name(method: str) -> str:
    return _NAMES.get(method, method)


def _pct(x: float) -> str:
    return "n/a" if pd.isna(x) else f"{100 * x:.0f}%"


def _best_layer(method: str, best: pd.Series) -> str:
    return (
        f"{_name(method)} works best at layer {int(best['layer'])} (reliability {_pct(best['reliability_mean'])}, "
        f"generalisation {_pct(best['generalisation_mean'])} on the other training templates and "
        f"{_pct(best['generalisation_unseen_mean'])} on the unseen one; locality "
        f"{_pct(best['locality_relation_mean'])} for other subjects and {_pct(best['locality_subject_mean'])} for "
        f"the subject's other facts; leak {100 * best['leak_mean']:+.0f} points over {int(best['n_edits'])} edits)."
    )


def describe_sweep(summary: pd.DataFrame, works_at: float = 0.5) -> str:
    """Read a :func:`~kc_utils.editing.layer_sweep.summarise_sweep` table (``method``, ``layer``, ``n_edits`` and
    ``<metric>_mean`` for the six metrics): per method, the best layer by reliability and its numbers (when several
    layers tie, where among them it generalises most and leaks least), the layers where it fails (reliability
    below ``works_at``), and which method leaks more on average."""
    sentences = []
    leaks = {}
    for method, rows in summary.groupby("method", sort=False):
        best = rows.loc[rows["reliability_mean"].idxmax()]
        failing = rows[rows["reliability_mean"] < works_at]["layer"].tolist()
        layers = ", ".join(str(int(x)) for x in rows["layer"])
        if (rows["reliability_mean"] == 0).all():
            sentences.append(f"{_name(method)} changes no answer at any layer swept ({layers}; {_edits(rows)}).")
            continue
        if best["reliability_mean"] < works_at:
            sentences.append(
                f"{_name(method)} works at no layer swept (reliability below {_pct(works_at)} at layers {layers}; "
                f"the highest, {_pct(best['reliability_mean'])}, at layer {int(best['layer'])}; {_edits(rows)})."
            )
            continue
        top = rows[rows["reliability_mean"] == best["reliability_mean"]]
        if len(top) > 1:  # equally reliable at several layers: say where each of the others is best
            general = top.loc[top["generalisation_mean"].idxmax()]
            tight = top.loc[top["leak_mean"].idxmin()]
            text = (
                f"{_name(method)} is equally reliable ({_pct(best['reliability_mean'])}) at layers "
                f"{_layers(top['layer'])}; among them it generalises most at layer {int(general['layer'])} "
                f"({_pct(general['generalisation_mean'])} on the other training templates, "
                f"{_pct(general['generalisation_unseen_mean'])} on the unseen one) and leaks least at layer "
                f"{int(tight['layer'])} ({100 * tight['leak_mean']:+.0f} points, locality "
                f"{_pct(tight['locality_relation_mean'])} for other subjects; {int(best['n_edits'])} edits)."
            )
        else:
            text = _best_layer(method, best)
        if failing:
            text += f" It fails (reliability below {_pct(works_at)}) at layer{'s' if len(failing) > 1 else ''} " + (
                ", ".join(str(int(x)) for x in failing) + "."
            )
        sentences.append(text)
        leaks[method] = float(rows.loc[rows["reliability_mean"] >= works_at, "leak_mean"].mean())
    working = {m: v for m, v in leaks.items() if not pd.isna(v)}
    if len(working) == 2:
        (a, la), (b, lb) = sorted(working.items(), key=lambda kv: -kv[1])
        if la == lb:
            sentences.append(f"Where they work, {_name(a)} and {_name(b)} leak equally ({100 * la:+.0f} points).")
        else:
            sentences.append(
                f"Where they work, {_name(a)} leaks more than {_name(b)} ({100 * la:+.0f} vs {100 * lb:+.0f} points "
                "of unrelated subjects answering the new object, mean over layers)."
            )
    return " ".join(sentences)


def _edits(rows: pd.DataFrame) -> str:
    counts = sorted({int(n) for n in rows["n_edits"]})
    return f"{counts[0]} edits per layer" if len(counts) == 1 else f"{counts[0]}–{counts[-1]} edits per layer"


def describe_location(location: pd.DataFrame, attention_free_layers: Sequence[int] = (), decisive: float = 0.5) -> str:
    """Read a :func:`~kc_utils.editing.layer_sweep.location_table` (``method``, ``layer``, ``n_working``,
    ``undone_by_subject``, ``undone_by_last``): per method and layer, which restoration undoes the edit, and
    the structural reason at layers whose attention is off (``attention_free_layers``)."""
    sentences = []
    for method, rows in location.groupby("method", sort=False):
        parts = []
        for _, row in rows.iterrows():
            layer = int(row["layer"])
            if row["n_working"] == 0:
                parts.append(f"layer {layer}: no edit works")
                continue
            where = []
            if row["undone_by_subject"] >= decisive:
                where.append("the subject")
            if row["undone_by_last"] >= decisive:
                where.append("the last position")
            verdict = " and ".join(where) if where else "neither position alone"
            parts.append(
                f"layer {layer}: restoring at the subject undoes {_pct(row['undone_by_subject'])}, at the last "
                f"position {_pct(row['undone_by_last'])} of {int(row['n_working'])} working edits (it lives at "
                f"{verdict})"
            )
        sentences.append(f"{_name(method)} — " + "; ".join(parts) + ".")
    for layer in attention_free_layers:
        sentences.append(
            f"Block {layer} has no attention, so at layer {layer} the last token's MLP cannot see the subject: an "
            "edit there can only act through the subject's positions, and a direct write at the last token (the "
            "paper's FT-M reading) can only appear at a later layer."
        )
    return " ".join(sentences)


def describe_case(case: pd.DataFrame) -> str:
    """Read a :func:`~kc_utils.editing.readout.case_table` (one row per ``stage`` ``before``/``after`` with
    ``top1``, ``p_new``, ``p_old``, ``new_top1_layer_last``, ``new_best_rank_subject``, ``top_head``,
    ``top_head_logit``)."""
    before = case.set_index("stage").loc["before"]
    after = case.set_index("stage").loc["after"]

    def first(layer: float) -> str:
        return "never" if pd.isna(layer) or layer < -1 else f"after block {int(layer)}"

    return (
        f"Before the edit the model answers {before['top1']} (p(old) = {before['p_old']:.2f}, p(new) = "
        f"{before['p_new']:.2f}); after it, {after['top1']} (p(new) = {after['p_new']:.2f}, p(old) = "
        f"{after['p_old']:.2f}). At the last position the new object becomes top-1 "
        f"{first(after['new_top1_layer_last'])} "
        f"(before the edit: {first(before['new_top1_layer_last'])}); at the subject's last token its best rank over "
        f"the blocks is {int(after['new_best_rank_subject'])} (before: {int(before['new_best_rank_subject'])}). "
        f"The head that writes the new object most directly after the edit is {after['top_head']} "
        f"(direct logit {after['top_head_logit']:+.2f}; before: {before['top_head']}, {before['top_head_logit']:+.2f})."
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def describe_leak_circuits(table: pd.DataFrame, node: str) -> str:
    """Read a :func:`~kc_utils.editing.layer_sweep.summarise_leak_circuits` table (one row per ``group``
    ``leaking``/``not leaking`` with ``n``, ``n_edits``, ``share`` and ``in_circuit``) for the edited ``node``."""
    rows = table.set_index("group")
    if "leaking" not in rows.index or rows.loc["leaking", "n"] == 0:
        return f"No unrelated subject leaked under these edits, so there is no leaking circuit to read through {node}."
    leak = rows.loc["leaking"]
    text = (
        f"For the {_count(int(leak['n']), 'subject')} that leak (under {_count(int(leak['n_edits']), 'edit')}), the "
        f"edited {node} carries "
        f"{_pct(leak['share'])} of their circuit's attribution and is in their top circuit for "
        f"{_pct(leak['in_circuit'])} of the edits"
    )
    if "not leaking" in rows.index and rows.loc["not leaking", "n"] > 0:
        other = rows.loc["not leaking"]
        text += (
            f"; for {_count(int(other['n']), 'subject')} of the same edits that "
            f"{'does' if int(other['n']) == 1 else 'do'} not leak, {_pct(other['share'])}, in the top "
            f"circuit for {_pct(other['in_circuit'])}"
        )
    return text + "."


def describe_departure(n_layers: int, attention_free_layers: Sequence[int], paper_layers: int = 24) -> str:
    """Where the model departs from the paper's GPT-2 medium, from the model's own shape and measured attention."""
    text = f"This model has {n_layers} layers against GPT-2 medium's {paper_layers}"
    if n_layers == paper_layers and not attention_free_layers:
        return "This model has the paper's depth; its layers are compared with the paper's directly."
    if attention_free_layers:
        listed = ", ".join(str(x) for x in attention_free_layers)
        text += (
            f", and block{'s' if len(attention_free_layers) > 1 else ''} {listed} "
            f"{'have' if len(attention_free_layers) > 1 else 'has'} no attention (measured: its heads write exactly 0)"
        )
    return (
        text + ". Its last layer is the only one after which nothing reads the subject's position, so a subject-side "
        "edit there cannot reach the answer; the paper's layer 0 is the closest analogue of this model's layer 0."
    )


def _layers(values: Sequence[float]) -> str:
    items = [str(int(x)) for x in values]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _pcts(values: Sequence[float]) -> str:
    return ", ".join(_pct(x) for x in values)


def describe_rome_layers(
    summary: pd.DataFrame, labels: dict[str, str], key_templates: dict[str, bool], works_at: float = 0.5
) -> str:
    """Layer by layer, where each ROME variant works, from a
    :func:`~kc_utils.editing.layer_sweep.summarise_sweep` table.

    Args:
        labels: method → how to name it (``{"rome": "The authors' ROME", "rome-templates": "..."}``); methods of
            the table not named here are left out.
        key_templates: method → whether its key averages over the relation's other templates (then only the
            held-out template measures generalisation to templates the key never saw).
    """
    sentences = []
    for method, label in labels.items():
        rows = summary[summary["method"] == method].sort_values("layer")
        if rows.empty:
            continue
        working = rows[rows["reliability_mean"] >= works_at]
        failing = rows[rows["reliability_mean"] < works_at]
        if working.empty:
            sentences.append(
                f"{label}: no edit works at any visited layer ({_layers(rows['layer'])}; reliability at most "
                f"{_pct(rows['reliability_mean'].max())})."
            )
            continue
        text = (
            f"{label}: edits work (reliability ≥ {_pct(works_at)}) at layer{'s' if len(working) > 1 else ''} "
            f"{_layers(working['layer'])} ({_pcts(working['reliability_mean'])})"
        )
        if not failing.empty:
            text += (
                f" and fail at layer{'s' if len(failing) > 1 else ''} {_layers(failing['layer'])} "
                f"({_pcts(failing['reliability_mean'])})"
            )
        text += (
            f". On the held-out template, which its key never saw, generalisation is "
            f"{_pcts(working['generalisation_unseen_mean'])}"
        )
        if key_templates.get(method, False):
            text += (
                f"; on the relation's other templates {_pcts(working['generalisation_mean'])}, in-sample (its key "
                "and value are averaged over them)"
            )
        else:
            text += f", and on the relation's other templates (unseen too) {_pcts(working['generalisation_mean'])}"
        sentences.append(text + ".")
    return " ".join(sentences)


def describe_departures(table: pd.DataFrame, noise: float = 0.05) -> str:
    """Read a :func:`~kc_utils.editing.layer_sweep.departure_table`: for each departure, the layer where it moves the
    edits most from the default (the largest change in reliability, generalisation to the other templates, to the
    held-out template, or leak) and what it does there. A departure can leave reliability alone and still change how
    far an edit spreads, so every measure is read; changes within ``noise`` read as none."""
    sentences = []
    base = table[table["departure"] == "default"].set_index("layer")
    measures = [c for c in ("reliability", "generalisation", "generalisation_unseen", "leak") if c in table]
    for name, rows in table[table["departure"] != "default"].groupby("departure", sort=False):
        rows = rows.set_index("layer")
        changes = (rows[measures] - base.loc[rows.index, measures]).abs().max(axis=1)  # [layers]
        what = rows["what"].iloc[0]
        if changes.max() <= noise:
            sentences.append(f"{name} ({what}): within {_pct(noise)} of the default in every measure at every layer.")
            continue
        layer = int(changes.idxmax())
        before, after = base.loc[layer], rows.loc[layer]
        others = []
        if "generalisation" in measures:
            others.append(f"other templates {_pct(before['generalisation'])} → {_pct(after['generalisation'])}")
        others += [
            f"held-out template {_pct(before['generalisation_unseen'])} → {_pct(after['generalisation_unseen'])}",
            f"leak {100 * before['leak']:+.0f} → {100 * after['leak']:+.0f} points",
        ]
        change = after["reliability"] - before["reliability"]
        if abs(change) > noise:
            text = (
                f"reliability {100 * change:+.0f} points at layer {layer} ({_pct(before['reliability'])} → "
                f"{_pct(after['reliability'])}; {', '.join(others)})"
            )
        else:
            text = f"reliability unchanged at layer {layer} ({_pct(after['reliability'])}), but {', '.join(others)}"
        sentences.append(f"{name} ({what}): {text}.")
    return " ".join(sentences)


def describe_covariance(table: pd.DataFrame) -> str:
    """Read a :func:`~kc_utils.editing.layer_sweep.covariance_effect` table (``source``, ``layer``, ``reliability``,
    ``locality_relation``, ``leak``, ``update_cosine``): how much the choice of ``C``'s text changes the edits,
    against the first source."""
    sources = list(dict.fromkeys(table["source"]))
    first = table[table["source"] == sources[0]].set_index("layer")
    parts = []
    for source in sources[1:]:
        rows = table[table["source"] == source].set_index("layer")
        change = (rows["reliability"] - first["reliability"]).abs()
        layer = int(change.idxmax())
        parts.append(
            f"with C from {source}, ΔW has cosine {rows['update_cosine'].min():.2f}–{rows['update_cosine'].max():.2f} "
            f"with the {sources[0]} one and reliability moves by at most {100 * change.max():.0f} points (layer "
            f"{layer}: {_pct(first.loc[layer, 'reliability'])} → {_pct(rows.loc[layer, 'reliability'])}; leak "
            f"{100 * first.loc[layer, 'leak']:+.0f} → {100 * rows.loc[layer, 'leak']:+.0f} points)"
        )
    if not parts:
        return f"Only one source of C ({sources[0]}) was measured."
    return f"The same k̄, k_e and v* written with C from {sources[0]} or another text: " + "; ".join(parts) + "."


def describe_paper_reading(
    location: pd.DataFrame, summary: pd.DataFrame, rome_method: str = "rome", works_at: float = 0.5
) -> str:
    """The paper's reading of ROME and FT-M (Yao et al. §5) against a
    :func:`~kc_utils.editing.layer_sweep.location_table` and a :func:`~kc_utils.editing.layer_sweep.summarise_sweep`
    table: where the working edits live, layer by layer."""
    loc = location.set_index(["method", "layer"])
    rel = summary.set_index(["method", "layer"])["reliability_mean"]
    sentences = []
    rome = [
        (int(layer), row)
        for (method, layer), row in loc.iterrows()
        if method == rome_method and row["n_working"] > 0 and rel.loc[(method, layer)] >= works_at
    ]
    if not rome:
        sentences.append(
            "The paper reads ROME as writing the new fact at the subject's last token; here no layer has enough "
            "working ROME edits to test that."
        )
    else:
        at_subject = [layer for layer, row in rome if row["undone_by_subject"] >= 0.5 > row["undone_by_last"]]
        elsewhere = [layer for layer, _ in rome if layer not in at_subject]
        text = (
            "The paper reads ROME as writing the new fact at the subject's last token, from where a mover head "
            "carries it to the last position. "
        )
        if at_subject:
            shares = _pcts([loc.loc[(rome_method, x), "undone_by_subject"] for x in at_subject])
            text += (
                f"Here that holds at layer{'s' if len(at_subject) > 1 else ''} {_layers(at_subject)}: restoring the "
                f"edited MLP's output at the subject undoes {shares} of the working edits, at the last position "
                f"{_pcts([loc.loc[(rome_method, x), 'undone_by_last'] for x in at_subject])}"
            )
        if elsewhere:
            text += ("; it does not" if at_subject else "Here it does not hold") + (
                f" at layer{'s' if len(elsewhere) > 1 else ''} {_layers(elsewhere)}"
            )
        sentences.append(text + ".")
    ftm = [(int(layer), row) for (method, layer), row in loc.iterrows() if method == "ft-m" and row["n_working"] > 0]
    last = [layer for layer, row in ftm if row["undone_by_last"] >= 0.5]
    if ftm:
        text = "The paper's FT-M makes the edited MLP write the target straight into the last token's stream: "
        if last:
            text += (
                f"here FT-M's edits live at the last position at layer{'s' if len(last) > 1 else ''} {_layers(last)}"
            )
            others = [layer for layer, _ in ftm if layer not in last]
            if others:
                text += f", and not at layer{'s' if len(others) > 1 else ''} {_layers(others)}"
        else:
            text += "here no FT-M edit lives at the last position"
        sentences.append(text + ".")
    return " ".join(sentences)
