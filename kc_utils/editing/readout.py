"""Reading one edit: top answers, the logit lens at the subject and at the last token, head DLA, and the
circuit before and after (Yao et al. 2024, §5).

Each function reads the model *as it is now*; a notebook calls it before the edit and inside the edit's
``with`` block, and compares the two tables. The circuit is attributed with EAP-IG on the edit prompt against
a corrupt prompt with another subject of the same token length (:func:`edit_circuit`);
:func:`circuit_diff` lists the edges added, removed and re-weighted between two circuits;
:func:`node_share` says how much of a circuit's attribution passes through one node (the edited MLP).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from kc_utils import models
from kc_utils.analysis.lens import direct_logit_attribution, residual_by_layer, subject_positions
from kc_utils.circuits.attribute import attribute
from kc_utils.circuits.graph import Graph
from kc_utils.circuits.nodes import mlp_name, parse_edge, parse_node
from kc_utils.data.metrics import rank_of
from kc_utils.data.prompts import make_batch

__all__ = [
    "attention_free_layers",
    "case_table",
    "circuit_diff",
    "edit_circuit",
    "head_dla",
    "leak_circuit_table",
    "lens_at_subject_and_last",
    "mlp_node",
    "node_share",
    "top_k_answers",
]


def top_k_answers(model: Any, prompt: str, k: int = 5) -> pd.DataFrame:
    """The ``k`` most likely next tokens after ``prompt``: columns ``rank``, ``token``, ``prob``."""
    tokens = torch.tensor(models.tokenize(model, [prompt]), device=models.model_device(model))
    with torch.no_grad():
        probs = models.last_logits(model, tokens, [tokens.shape[1] - 1])[0].float().softmax(-1)
    top = probs.topk(k)
    return pd.DataFrame(
        {
            "rank": range(k),
            "token": [s.strip() for s in models.token_strings(model, top.indices.tolist())],
            "prob": top.values.cpu().numpy(),
        }
    )


def lens_at_subject_and_last(model: Any, prompt: str, subject: str, objects: dict[str, int]) -> pd.DataFrame:
    """Logit lens of each object token at the subject's last token and at the prompt's last token.

    Args:
        objects: label → token id, e.g. ``{"new": id_sony, "old": id_apple}``.

    Returns:
        One row per block × position × object: ``layer`` (``-1`` = embeddings, then after block ``0 …``),
        ``position`` (``"subject last"`` / ``"last"``), ``object``, ``token``, ``rank`` (0 = top-1) and ``prob``.
    """
    tokens = torch.tensor(models.tokenize(model, [prompt]), device=models.model_device(model))
    positions = {"subject last": max(subject_positions(model, prompt, subject)), "last": tokens.shape[1] - 1}
    stack = residual_by_layer(model, tokens)  # [layer+1, 1, p, d]
    records = []
    with torch.no_grad():
        for index in range(stack.shape[0]):
            logits = models.unembed(model, stack[index][0]).float()  # [p, v]
            probs = logits.softmax(-1)
            for where, pos in positions.items():
                for label, token in objects.items():
                    target = torch.tensor(token, device=logits.device)
                    records.append(
                        {
                            "layer": index - 1,
                            "position": where,
                            "object": label,
                            "token": models.token_strings(model, [token])[0].strip(),
                            "rank": int(rank_of(logits[pos], target)),
                            "prob": float(probs[pos, token]),
                        }
                    )
    return pd.DataFrame.from_records(records)


def head_dla(model: Any, prompt: str, answer: str) -> pd.DataFrame:
    """Direct logit attribution of every head (and MLP) to ``answer``'s logit at the last position, sorted
    from the largest contribution: columns ``component``, ``kind``, ``layer``, ``head``, ``logit``."""
    batch = make_batch(model, [prompt], [answer])
    table = direct_logit_attribution(model, batch)
    table = table[table["kind"].isin(["head", "mlp"])]
    return table.drop(columns=["prompt_index"]).sort_values("logit", ascending=False, ignore_index=True)


def edit_circuit(
    model: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    corrupt_prompts: Sequence[str],
    corrupt_answers: Sequence[str],
    n_edges: int,
    ig_steps: int = 5,
) -> Graph:
    """The top-``n_edges`` circuit of the prompts (EAP-IG, patch ablation, logit difference answer − corrupt
    answer), scores kept on the graph so :func:`circuit_diff` can compare re-weighting."""
    batch = make_batch(model, list(prompts), list(answers), list(corrupt_prompts), list(corrupt_answers))
    graph = attribute(
        model, Graph.from_model(model), batch, metric="logit_diff", method="eap-ig", ig_steps=ig_steps, progress=False
    )
    return graph.top_n(n_edges)


def circuit_diff(before: Graph, after: Graph, n: int | None = None) -> pd.DataFrame:
    """Edges of either circuit with their scores before and after and their status: ``added`` (only after),
    ``removed`` (only before) or ``kept``; sorted by the absolute score change, the first ``n`` (all if
    ``None``). Columns: ``edge``, ``upstream``, ``receiver``, ``score_before``, ``score_after``, ``change``,
    ``status``."""
    if before.upstream_names != after.upstream_names or before.receiver_names != after.receiver_names:
        raise ValueError("the two circuits belong to different model shapes")
    union = (before.in_graph | after.in_graph).nonzero().tolist()
    records = []
    for u, r in union:
        was, now = bool(before.in_graph[u, r]), bool(after.in_graph[u, r])
        name = before.edge_name_at((u, r))
        up, rx = parse_edge(name)
        records.append(
            {
                "edge": name,
                "upstream": up,
                "receiver": rx,
                "score_before": float(before.scores[u, r]),
                "score_after": float(after.scores[u, r]),
                "status": "kept" if was and now else ("added" if now else "removed"),
            }
        )
    table = pd.DataFrame.from_records(
        records, columns=["edge", "upstream", "receiver", "score_before", "score_after", "status"]
    )
    table["change"] = table["score_after"] - table["score_before"]
    table = table.reindex(table["change"].abs().sort_values(ascending=False).index).reset_index(drop=True)
    return table if n is None else table.head(n)


def node_share(graph: Graph, node: str) -> dict[str, float]:
    """How much of the graph's attribution passes through ``node`` (e.g. ``"m0"``).

    Returns:
        ``share``: the node's edges' (in and out) absolute scores over all edges' absolute scores;
        ``in_circuit``: 1 if an edge of the current circuit touches the node;
        ``edges_in_circuit``: how many circuit edges touch it.
    """
    parse_node(node)
    scores = graph.scores.abs() * graph.real_edges
    touches = torch.zeros_like(graph.real_edges)
    if node in graph.upstream_index:
        touches[graph.upstream_index[node], :] = True
    for r, name in enumerate(graph.receiver_names):
        if parse_node(name).node == node:
            touches[:, r] = True
    total = float(scores.sum())
    return {
        "share": float(scores[touches].sum()) / total if total else float("nan"),
        "in_circuit": float(bool((graph.in_graph & touches).any())),
        "edges_in_circuit": float((graph.in_graph & touches).sum()),
    }


def mlp_node(layer: int) -> str:
    """The circuit node name of MLP ``layer`` (``m0``)."""
    return mlp_name(layer)


def attention_free_layers(model: Any, prompt: str = "the") -> list[int]:
    """Layers whose attention heads all write exactly zero on ``prompt`` (the organism's block 0)."""
    tokens = torch.tensor(models.tokenize(model, [prompt]), device=models.model_device(model))
    n_layers = models.model_shape(model).n_layers
    names = [models.head_result_hook(layer) for layer in range(n_layers)]
    with torch.no_grad():
        cache = models.cache_activations(model, tokens, names)
    return [layer for layer, name in enumerate(names) if not bool(cache[name].any())]


def case_table(
    stages: dict[str, tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]], new_token: str, old_token: str
) -> pd.DataFrame:
    """One row per stage from its ``(top_k_answers, lens_at_subject_and_last, head_dla)`` tables.

    The lens table must hold objects labelled ``"new"`` and ``"old"``; the DLA table is of the new object.

    Returns:
        Columns ``stage``, ``top1``, ``p_new``, ``p_old`` (at the model's output), ``new_top1_layer_last`` (first
        block after which the new object is top-1 at the last position, NaN if never),
        ``new_best_rank_subject`` (its best rank at the subject's last token over the blocks), ``top_head`` and
        ``top_head_logit`` (the head with the largest direct logit for the new object).
    """
    records = []
    for stage, (top, lens, dla) in stages.items():
        final = lens["layer"].max()
        at_end = lens[(lens["layer"] == final) & (lens["position"] == "last")].set_index("object")
        last_new = lens[(lens["position"] == "last") & (lens["object"] == "new")]
        top1_layers = last_new[last_new["rank"] == 0]["layer"]
        subject_new = lens[(lens["position"] == "subject last") & (lens["object"] == "new")]
        heads = dla[dla["kind"] == "head"].sort_values("logit", ascending=False)
        records.append(
            {
                "stage": stage,
                "top1": top.iloc[0]["token"],
                "p_new": float(at_end.loc["new", "prob"]),
                "p_old": float(at_end.loc["old", "prob"]),
                "new_top1_layer_last": float(top1_layers.min()) if len(top1_layers) else float("nan"),
                "new_best_rank_subject": int(subject_new["rank"].min()),
                "top_head": heads.iloc[0]["component"],
                "top_head_logit": float(heads.iloc[0]["logit"]),
                "new_object": new_token,
                "old_object": old_token,
            }
        )
    return pd.DataFrame.from_records(records)


def leak_circuit_table(
    model: Any,
    groups: dict[str, Sequence[tuple[str, str, str, str]]],
    node: str,
    n_edges: int,
    ig_steps: int = 5,
) -> pd.DataFrame:
    """How much the circuit of each group of prompts passes through ``node`` (the edited MLP).

    Args:
        groups: group name → ``(prompt, answer, corrupt prompt, corrupt answer)`` rows (e.g. ``"leaking"``:
            subjects whose answer became the new object, with that answer).

    Returns:
        One row per group: ``group``, ``n``, and :func:`node_share`'s ``share``, ``in_circuit``,
        ``edges_in_circuit`` for the group's top-``n_edges`` circuit (NaN for an empty group).
    """
    records = []
    for name, rows in groups.items():
        if not rows:
            records.append(
                {
                    "group": name,
                    "n": 0,
                    "share": float("nan"),
                    "in_circuit": float("nan"),
                    "edges_in_circuit": float("nan"),
                }
            )
            continue
        prompts, answers, corrupt, corrupt_answers = (list(x) for x in zip(*rows))
        graph = edit_circuit(model, prompts, answers, corrupt, corrupt_answers, n_edges, ig_steps)
        records.append({"group": name, "n": len(rows), **node_share(graph, node)})
    return pd.DataFrame.from_records(records)
