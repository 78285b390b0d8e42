"""How many edges a circuit keeps: fixed budgets, and the knee of the faithfulness curve.

A fixed fraction of the edges says little across models: 10% of the organism's 479 edges is
almost the whole model, while the paper keeps under 0.25% of GPT-2 medium's. The knee is the
scale-free alternative: the smallest top-n circuit whose normalised faithfulness (logit
difference, :func:`kc_utils.circuits.evaluate.normalised_faithfulness`) on Dval reaches a level
such as 0.7 or 0.9.

Budgets accepted by :func:`resolve_budget`:

==================  =====================================================================
value               meaning
==================  =====================================================================
``40``              40 edges (before pruning)
``0.01``            a fraction of all edges (a float in (0, 1))
``"knee"``          the smallest size reaching ``knee_level`` of the logit difference
``"auto"``          ``"knee"`` for graphs of at most :data:`KNEE_MAX_EDGES` edges, else
                    :data:`LARGE_GRAPH_BUDGET` edges (the paper's scale: 100–600 edges)
==================  =====================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from kc_utils.circuits.ablation import Ablation, AblationValues
from kc_utils.circuits.evaluate import evaluate_masks
from kc_utils.circuits.graph import CircuitError, Graph
from kc_utils.data.prompts import PromptBatch

__all__ = [
    "KNEE_MAX_EDGES",
    "LARGE_GRAPH_BUDGET",
    "SMALL_GRAPH_EDGES",
    "check_budget",
    "check_fixed_budget",
    "edge_budget",
    "fixed_budget",
    "knee",
    "size_grid",
    "size_curve",
]

#: Graphs up to this many edges get the knee by default ("auto"); larger ones a fixed count.
KNEE_MAX_EDGES = 20_000
#: The fixed budget "auto" gives a large graph (the paper keeps 100–600 edges of GPT-2 medium).
LARGE_GRAPH_BUDGET = 400
#: Graphs up to this many edges (the organism's 479) get a notebook's small fixed budget by default; larger ones
#: (Gemma-3-270M's 5,644, SmolLM2-135M's 70,651) :data:`LARGE_GRAPH_BUDGET`: 30 edges of Gemma-3 are 0.5% of its
#: graph, where its knee circuits keep about 12%.
SMALL_GRAPH_EDGES = 2_000


def check_budget(n_edges: Any, knee_level: float = 0.9) -> None:
    """Refuse a malformed budget before any computation (the notebooks call it first).

    Raises:
        ValueError: not a positive int, a fraction in (0, 1), ``"knee"`` or ``"auto"``; or a knee
            level outside (0, 1].
    """
    if isinstance(n_edges, str):
        if n_edges not in ("knee", "auto"):
            raise ValueError(f"n_edges={n_edges!r}: use an edge count, a fraction in (0, 1), 'knee' or 'auto'")
    elif isinstance(n_edges, bool) or not isinstance(n_edges, (int, float)):
        raise ValueError(f"n_edges must be a number, 'knee' or 'auto', got {n_edges!r}")
    elif not (0 < n_edges < 1 or (n_edges >= 1 and float(n_edges).is_integer())):
        raise ValueError(f"n_edges={n_edges!r}: use a positive whole number of edges or a fraction in (0, 1)")
    if not 0 < knee_level <= 1:
        raise ValueError(f"knee_level={knee_level!r} must lie in (0, 1]")


def edge_budget(n_edges: int | float, graph: Graph) -> int:
    """An edge count from an int, or from a fraction of all edges (a float in (0, 1)).

    Raises:
        CircuitError: a count below 1 or above the graph's number of edges.
    """
    if isinstance(n_edges, float) and 0 < n_edges < 1:
        return max(1, round(n_edges * graph.n_edges))
    count = int(n_edges)
    if count != n_edges or count < 1:
        raise CircuitError(f"n_edges must be a positive int or a fraction in (0, 1), got {n_edges!r}")
    if count > graph.n_edges:
        raise CircuitError(
            f"n_edges={count} but the model's graph has only {graph.n_edges} edges; "
            f"ask for at most {graph.n_edges}, a fraction, or 'knee'"
        )
    return count


def check_fixed_budget(n_edges: Any) -> None:
    """Refuse a malformed budget of a circuit drawn without a faithfulness curve (no ``"knee"``).

    Raises:
        ValueError: ``"knee"`` (it needs a curve of masked evaluations), or anything :func:`check_budget` refuses.
    """
    if n_edges == "knee":
        raise ValueError("n_edges='knee' needs a faithfulness curve, which this circuit has not; use 'auto' or a count")
    check_budget(n_edges)


def fixed_budget(n_edges: int | float | str, graph: Graph, small_graph_edges: int) -> int:
    """The edge count of a circuit drawn without a faithfulness curve.

    ``"auto"`` gives ``small_graph_edges`` on a graph of at most :data:`SMALL_GRAPH_EDGES` edges (a notebook's
    organism-scale default) and :data:`LARGE_GRAPH_BUDGET` on a larger one: 40 of a real model's 70,651 edges
    are all pruned away as dangling, while 400 is the paper's scale. Never more than the graph has.

    Raises:
        ValueError: a malformed budget (:func:`check_fixed_budget`).
        CircuitError: a count above the graph's number of edges (:func:`edge_budget`).
    """
    check_fixed_budget(n_edges)
    if n_edges == "auto":
        return min(graph.n_edges, small_graph_edges if graph.n_edges <= SMALL_GRAPH_EDGES else LARGE_GRAPH_BUDGET)
    return edge_budget(n_edges, graph)


def size_grid(total: int, largest: int | None = None, n_points: int | None = None) -> list[int]:
    """Edge counts to try.

    By default every count up to 12, then about 24 log-spaced counts up to ``largest`` (or ``total``). With
    ``n_points``, about that many log-spaced counts from 1 instead: on a graph of tens of thousands of edges, circuits
    of 1–12 edges all behave like the empty one, and each count costs a masked forward pass.
    """
    top = min(total, largest or total)
    if n_points is not None:
        if n_points < 2:
            raise ValueError(f"n_points must be at least 2, got {n_points}")
        return sorted({int(x) for x in np.unique(np.round(np.geomspace(1, max(top, 1), n_points))) if 1 <= x <= top})
    small = list(range(1, min(12, top) + 1))
    spread = np.unique(np.round(np.geomspace(13, max(top, 13), 24)).astype(int)) if top > 12 else []
    return sorted({*small, *(int(x) for x in spread if x <= top)})


def size_curve(
    model: Any,
    graph: Graph,
    batch: PromptBatch,
    counts: Sequence[int],
    ablation: Ablation | AblationValues = "patch",
    metrics: Sequence[str] = ("logit_diff", "hit@10", "hit@1"),
    from_input: bool = True,
    batch_size: int | None = None,
) -> pd.DataFrame:
    """Metrics of the top-n circuit for each ``n`` in ``counts`` (scored ``graph``), with the faithfulness.

    Sizes whose pruned circuit is empty are left out. Returns one row per size: ``asked``,
    ``n_edges`` (after pruning), each metric, and ``faithfulness`` (normalised logit difference,
    between the empty circuit, 0, and the full model, 1).
    """
    circuits, asked = [], []
    for n in counts:
        try:
            circuits.append(graph.copy().top_n(int(n), from_input=from_input))
        except CircuitError:
            continue
        asked.append(int(n))
    full = graph.real_edges.clone()
    empty = full & False
    values = evaluate_masks(
        model, graph, batch, [full, empty] + [c.in_graph for c in circuits], metrics, ablation, batch_size=batch_size
    )
    whole, none = values[0], values[1]
    rows = []
    for n, circuit, value in zip(asked, circuits, values[2:]):
        row = {"asked": n, "n_edges": circuit.n_edges_in_graph, **value}
        if "logit_diff" in value:
            span = whole["logit_diff"] - none["logit_diff"]
            row["faithfulness"] = (value["logit_diff"] - none["logit_diff"]) / span if abs(span) > 1e-12 else np.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["full"], table.attrs["empty"] = whole, none
    return table


def knee(curve: pd.DataFrame, level: float) -> pd.Series | None:
    """The smallest circuit of a :func:`size_curve` whose faithfulness reaches ``level`` (``None`` if none)."""
    if "faithfulness" not in curve or curve.empty:
        return None
    reached = curve[curve["faithfulness"] >= level].sort_values(["n_edges", "asked"], kind="stable")
    return None if reached.empty else reached.iloc[0]
