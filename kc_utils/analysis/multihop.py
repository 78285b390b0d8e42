"""Two-hop questions read inside the model: the bridge entity, the first hop's movers, bridge patching.

Three readings of a two-hop prompt (*"The official language of the country where Eiffel Tower is
located is"* → French, bridge France; :mod:`kc_utils.data.multihop`):

1. **Is the bridge readable?** (:func:`bridge_lens`) The logit lens (:func:`kc_utils.analysis.lens.logit_lens`)
   with the bridge's first token as target: its rank after every block at the last position and at
   the best position of the first hop's subject. The control is the same reading for the bridge of
   another fact (the corrupt twin's bridge, Italy): a bridge "formed" in the middle layers ranks far
   better than the control there.
2. **Does the two-hop circuit contain the first hop's movers?** (:func:`mover_containment`) The
   first hop's mover heads (:func:`kc_utils.analysis.heads.head_roles`, roles ``mover`` and ``mix``)
   looked up in the two-hop circuit, beside the share of all writing heads that circuit holds (chance).
3. **Does the answer follow the bridge?** (:func:`restore_components`, :func:`bridge_patching`) Run
   the corrupted two-hop prompt (Colosseum: bridge Italy, answer Italian) and restore, from the
   clean run (Eiffel Tower), the outputs of a set of components — heads (``hook_result``) and MLPs
   (``hook_mlp_out``) at every position. If the first hop's circuit carries the bridge, restoring it
   brings the clean answer back (French): ``follow`` is the share of prompts whose top-1 becomes the
   clean answer and ``recovery`` the logit difference ``logit(clean answer) − logit(corrupt answer)``
   normalised between the corrupted run (0) and the clean run (1). Random component sets of the same
   size, drawn from the same pool, give the baseline (mean ± std). A circuit that holds a large share
   of the model's components restores much at random too, so :func:`bridge_patching_by_size` also
   restores only its strongest components (:func:`strongest_components`, by circuit weight) at
   several sizes, each against random sets of that size.

Restoring ``input`` and every head and MLP gives the clean run exactly, restoring nothing the
corrupted run (tested); several sets are evaluated in one forward pass by repeating the batch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from kc_utils import models
from kc_utils.analysis.lens import logit_lens
from kc_utils.circuits import nodes
from kc_utils.circuits.compare import node_weights
from kc_utils.circuits.graph import Graph
from kc_utils.data.metrics import rank_of
from kc_utils.data.prompts import PromptBatch

__all__ = [
    "bridge_lens",
    "bridge_lens_summary",
    "bridge_patching",
    "bridge_patching_by_size",
    "bridge_patching_summary",
    "check_patch_sizes",
    "component_names",
    "mover_containment",
    "patching_sizes",
    "random_component_sets",
    "restore_components",
    "strongest_components",
]


# ----------------------------------------------------------------------------- the bridge in the logit lens
def bridge_lens(
    model: Any,
    batch: PromptBatch,
    subjects: Sequence[str],
    bridge_tokens: Sequence[int],
    control_tokens: Sequence[int],
) -> pd.DataFrame:
    """The logit lens on two-hop prompts with the bridge, and a control entity, as targets.

    Args:
        batch: the two-hop prompts.
        subjects: the first hop's subject in each prompt.
        bridge_tokens: the bridge's first token per prompt (``" France"``).
        control_tokens: another entity of the bridge's type per prompt (the twin's bridge, ``" Italy"``).

    Returns:
        One row per prompt × layer (``layer`` −1 = embeddings): ``prompt_index``, ``layer``,
        ``bridge_rank``, ``bridge_subject_rank`` (best over the subject's positions), ``control_rank``,
        ``control_subject_rank`` (ranks: 0 = top-1).
    """
    if not (len(batch) == len(subjects) == len(bridge_tokens) == len(control_tokens)):
        raise ValueError("give one subject, one bridge token and one control token per prompt")
    tables = {}
    for name, tokens in (("bridge", bridge_tokens), ("control", control_tokens)):
        lens = logit_lens(model, batch, subjects, torch.tensor(list(tokens)))
        tables[name] = lens.rename(columns={"rank": f"{name}_rank", "subject_rank": f"{name}_subject_rank"})
    keep = ["prompt_index", "layer"]
    out = tables["bridge"][[*keep, "prompt", "bridge_rank", "bridge_subject_rank"]].merge(
        tables["control"][[*keep, "control_rank", "control_subject_rank"]], on=keep
    )
    return out.sort_values(keep, ignore_index=True)


def bridge_lens_summary(lens: pd.DataFrame, top: int = 10) -> pd.DataFrame:
    """Per layer: median ranks of the bridge and the control, and the share of prompts with each in the top ``top``.

    Columns: ``layer``, ``n_prompts``; for ``where`` in ``last`` and ``subject``: ``bridge_{where}_median``,
    ``control_{where}_median``, ``bridge_{where}_top``, ``control_{where}_top`` (shares).
    """
    needed = {"layer", "bridge_rank", "bridge_subject_rank", "control_rank", "control_subject_rank"}
    if not needed <= set(lens.columns):
        raise ValueError(f"not a bridge_lens table: it lacks {sorted(needed - set(lens.columns))}")
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    rows = []
    for layer, group in lens.groupby("layer", sort=True):
        row: dict[str, float] = {"layer": int(layer), "n_prompts": int(len(group))}
        for where, suffix in (("last", "rank"), ("subject", "subject_rank")):
            for who in ("bridge", "control"):
                ranks = group[f"{who}_{suffix}"]
                row[f"{who}_{where}_median"] = float(ranks.median())
                row[f"{who}_{where}_top"] = float((ranks < top).mean())
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- movers of the first hop
def mover_containment(movers: Sequence[str], circuit_heads: Sequence[str], pool: Sequence[str]) -> dict[str, Any]:
    """Which of the first hop's movers the two-hop circuit holds, beside chance.

    Args:
        movers: the first hop's mover heads.
        circuit_heads: the heads of the two-hop circuit.
        pool: the heads a circuit can hold (e.g. the writing heads).

    Returns:
        ``n_movers``, ``movers_in_circuit`` (count), ``movers_share``, ``chance`` (share of the pool
        in the circuit), ``movers`` and ``missing`` (space-separated names).
    """
    pool_set, in_circuit = set(pool), set(circuit_heads)
    outside = [m for m in movers if m not in pool_set]
    if outside:
        raise ValueError(f"movers {outside} are not in the pool of heads; pass a pool that holds them")
    held = [m for m in movers if m in in_circuit]
    return {
        "n_movers": len(movers),
        "movers_in_circuit": len(held),
        "movers_share": len(held) / len(movers) if movers else float("nan"),
        "chance": len(in_circuit & pool_set) / len(pool_set) if pool_set else float("nan"),
        "movers": " ".join(movers),
        "missing": " ".join(m for m in movers if m not in in_circuit),
    }


# ----------------------------------------------------------------------------- restoring components
def component_names(graph: Graph, heads: Sequence[str] | None = None) -> list[str]:
    """Heads and MLPs a component set may hold, in graph order: ``heads`` (default all) and every MLP."""
    allowed = set(heads) if heads is not None else None
    return [
        n
        for n in graph.upstream_names
        if n != "input" and (nodes.parse_node(n).kind == "mlp" or allowed is None or n in allowed)
    ]


def random_component_sets(pool: Sequence[str], size: int, n: int, seed: int = 0) -> list[list[str]]:
    """``n`` random subsets of ``pool`` with ``size`` components each (pool order kept; seeded).

    Raises:
        ValueError: ``size`` or ``n`` below 1, or a pool smaller than ``size``.
    """
    if size < 1 or n < 1:
        raise ValueError(f"size and n must be at least 1, got size={size}, n={n}")
    pool = list(dict.fromkeys(pool))
    if len(pool) < size:
        raise ValueError(f"cannot draw {size} components from a pool of {len(pool)}")
    order = {c: i for i, c in enumerate(pool)}
    rng = random.Random(seed)
    return [sorted(rng.sample(pool, size), key=order.__getitem__) for _ in range(n)]


def _parse_components(model: Any, components: Sequence[str]) -> list[tuple[str, int, int]]:
    shape = models.model_shape(model)
    parsed = []
    for name in components:
        try:
            node = nodes.parse_node(name)
        except ValueError:
            raise ValueError(f"{name!r} is not a component name like 'a3.h1', 'm2' or 'input'") from None
        if node.kind == "input":
            parsed.append(("input", -1, -1))
        elif node.kind in ("head", "mlp") and 0 <= int(node.layer) < shape.n_layers:
            if node.kind == "head" and not 0 <= int(node.index) < shape.n_heads:
                raise ValueError(f"{name!r}: the model has {shape.n_heads} heads per layer")
            parsed.append((node.kind, int(node.layer), int(node.index) if node.kind == "head" else -1))
        else:
            raise ValueError(f"{name!r} is not a head, MLP or the input of this {shape.n_layers}-layer model")
    return parsed


def restore_components(
    model: Any,
    batch: PromptBatch,
    sets: Sequence[Sequence[str]],
    sets_per_pass: int = 8,
) -> Float[Tensor, "s b v"]:
    """Last-position logits of the **corrupted** prompts with each set's components restored from the clean run.

    A component is a head (``a3.h1``: its ``hook_result`` output), an MLP (``m2``: ``hook_mlp_out``) or
    ``input`` (the embeddings, ``blocks.0.hook_in``); its output is replaced by the clean run's at every
    position. Everything else is computed on the corrupted prompt, downstream of the restored outputs.

    Args:
        batch: clean prompts with same-length corrupted twins (``batch.corrupt``).
        sets: component sets (an empty set = the corrupted run).
        sets_per_pass: sets per forward pass (memory grows with it).

    Returns:
        ``[n_sets, b, vocab]``.

    Raises:
        ValueError: a batch without corrupted prompts, an unknown component, or no sets.
    """
    if batch.corrupt is None:
        raise ValueError("restoring components needs corrupted prompts; build the batch with corrupt_prompts")
    if not sets:
        raise ValueError("no component sets to evaluate")
    if sets_per_pass < 1:
        raise ValueError(f"sets_per_pass must be at least 1, got {sets_per_pass}")
    parsed = [_parse_components(model, s) for s in sets]
    n_heads = models.model_shape(model).n_heads
    head_layers = sorted({layer for s in parsed for kind, layer, _ in s if kind == "head"})
    mlp_layers = sorted({layer for s in parsed for kind, layer, _ in s if kind == "mlp"})
    wants_input = any(kind == "input" for s in parsed for kind, _, _ in s)
    names = [models.head_result_hook(layer) for layer in head_layers] + [
        models.mlp_out_hook(layer) for layer in mlp_layers
    ]
    names += [models.INPUT_HOOK] if wants_input else []
    with torch.no_grad(), models.only_head_results(model):
        clean = models.cache_activations(model, batch.clean, names)
    device, b = batch.clean.device, len(batch)
    out = []
    for start in range(0, len(parsed), sets_per_pass):
        chunk = parsed[start : start + sets_per_pass]
        s = len(chunk)
        head_mask = {layer: torch.zeros(s, n_heads, dtype=torch.bool, device=device) for layer in head_layers}
        mlp_mask = {layer: torch.zeros(s, dtype=torch.bool, device=device) for layer in mlp_layers}
        input_mask = torch.zeros(s, dtype=torch.bool, device=device)
        for i, components in enumerate(chunk):
            for kind, layer, head in components:
                if kind == "head":
                    head_mask[layer][i, head] = True
                elif kind == "mlp":
                    mlp_mask[layer][i] = True
                else:
                    input_mask[i] = True

        def head_hook(name: str, mask: Tensor):
            def hook(result: Tensor, hook: Any) -> Tensor:  # [s*b, p, h, d]
                shaped = result.reshape(s, b, *result.shape[1:])
                where = mask[:, None, None, :, None]
                return torch.where(where, clean[name].to(result.dtype)[None], shaped).reshape(result.shape)

            return hook

        def stream_hook(name: str, mask: Tensor):
            def hook(act: Tensor, hook: Any) -> Tensor:  # [s*b, p, d]
                shaped = act.reshape(s, b, *act.shape[1:])
                where = mask[:, None, None, None]
                return torch.where(where, clean[name].to(act.dtype)[None], shaped).reshape(act.shape)

            return hook

        hooks = [
            (models.head_result_hook(lay), head_hook(models.head_result_hook(lay), head_mask[lay]))
            for lay in head_layers
        ]
        hooks += [
            (models.mlp_out_hook(lay), stream_hook(models.mlp_out_hook(lay), mlp_mask[lay])) for lay in mlp_layers
        ]
        if wants_input:
            hooks.append((models.INPUT_HOOK, stream_hook(models.INPUT_HOOK, input_mask)))
        with torch.no_grad(), models.only_head_results(model):  # no pass here reads an edge's input
            logits = models.last_logits(model, batch.corrupt.repeat(s, 1), batch.last_pos.repeat(s), hooks)
        out.append(logits.reshape(s, b, -1))
    return torch.cat(out)


def _set_row(kind: str, draw: int | None, components: Sequence[str], logits: Tensor, batch: PromptBatch) -> dict:
    final = logits.float()
    answer = final.gather(1, batch.answer[:, None])[:, 0]
    corrupt = final.gather(1, batch.corrupt_answer[:, None])[:, 0]
    return {
        "set": kind,
        "draw": draw,
        "components": " ".join(components),
        "n_components": len(components),
        "follow": float((rank_of(final, batch.answer) == 0).float().mean()),
        "stay": float((rank_of(final, batch.corrupt_answer) == 0).float().mean()),
        "logit_diff": float((answer - corrupt).mean()),
    }


def bridge_patching(
    model: Any,
    batch: PromptBatch,
    components: Sequence[str],
    pool: Sequence[str],
    n_random: int = 20,
    seed: int = 0,
) -> pd.DataFrame:
    """Restore a component set (and ``n_random`` random sets of its size from ``pool``) on the corrupted prompts.

    Args:
        batch: the two-hop prompts (clean: the fact; corrupt: a subject whose bridge differs) with
            both answers.
        components: the set to restore, e.g. the first hop's circuit nodes.
        pool: components the random sets are drawn from (they may share components with the set).

    Returns:
        One row per set: ``set`` (``corrupt`` = nothing restored, ``clean`` = input and every
        component, ``group``, ``random``), ``draw``, ``components``, ``n_components``, ``follow``
        (share of prompts whose top-1 is the clean answer), ``stay`` (top-1 is the corrupt answer),
        ``logit_diff`` (mean clean-minus-corrupt answer logit) and ``recovery`` (the logit difference
        between the corrupt run, 0, and the clean run, 1), ``overlap`` (components shared with the group).

    Raises:
        ValueError: an empty set, a batch without corrupt answers, a set outside the pool.
    """
    if not components:
        raise ValueError("the component set is empty; pass at least one head or MLP such as 'm0'")
    if bool((batch.corrupt_answer < 0).any()):
        raise ValueError("bridge patching needs the corrupt prompts' answers; build the batch with corrupt_answers")
    outside = [c for c in components if c not in set(pool)]
    if outside:
        raise ValueError(f"components {outside} are not in the pool; draw random sets from a pool that holds the set")
    draws = random_component_sets(pool, len(components), n_random, seed)
    everything = ["input", *dict.fromkeys(pool)]
    sets = [("corrupt", None, []), ("clean", None, everything), ("group", None, list(components))]
    sets += [("random", i, d) for i, d in enumerate(draws)]
    logits = restore_components(model, batch, [c for _, _, c in sets])
    rows = [_set_row(kind, draw, comps, lg, batch) for (kind, draw, comps), lg in zip(sets, logits)]
    table = pd.DataFrame(rows)
    low, high = table.loc[0, "logit_diff"], table.loc[1, "logit_diff"]
    table["recovery"] = (table["logit_diff"] - low) / (high - low) if abs(high - low) > 1e-9 else np.nan
    group = set(components)
    table["overlap"] = [len(group & set(c.split())) for c in table["components"]]
    return table


def bridge_patching_summary(table: pd.DataFrame) -> dict[str, float]:
    """One line of a :func:`bridge_patching` table: the group against random sets.

    Returns:
        For ``follow`` and ``recovery``: ``<m>_corrupt``, ``<m>_clean``, ``<m>_group``,
        ``<m>_random_mean``, ``<m>_random_std``; ``follow_random_at_least_group`` (share of random
        sets doing at least as well as the group); ``n_components``, ``n_random``, ``mean_overlap``.
    """
    for column in ("set", "follow", "recovery", "n_components", "overlap"):
        if column not in table:
            raise ValueError(f"the bridge-patching table has no {column!r} column (see bridge_patching)")
    group = table[table["set"] == "group"]
    if len(group) != 1:
        raise ValueError(f"the bridge-patching table needs exactly one 'group' row, found {len(group)}")
    randoms = table[table["set"] == "random"]
    out: dict[str, float] = {}
    for m in ("follow", "recovery"):
        for kind in ("corrupt", "clean", "group"):
            values = table.loc[table["set"] == kind, m]
            out[f"{m}_{kind}"] = float(values.iloc[0]) if len(values) else float("nan")
        out[f"{m}_random_mean"] = float(randoms[m].mean()) if len(randoms) else float("nan")
        out[f"{m}_random_std"] = float(np.std(randoms[m])) if len(randoms) else float("nan")
    g = out["follow_group"]
    out["follow_random_at_least_group"] = float((randoms["follow"] >= g - 1e-9).mean()) if len(randoms) else np.nan
    out["n_components"] = float(group["n_components"].iloc[0])
    out["n_random"] = float(len(randoms))
    out["mean_overlap"] = float(randoms["overlap"].mean()) if len(randoms) else float("nan")
    return out


def strongest_components(graph: Graph, components: Sequence[str], size: int) -> list[str]:
    """The ``size`` components of ``components`` with the largest circuit weight, in graph order.

    The weight is :func:`kc_utils.circuits.compare.node_weights` (the summed ``|score|`` of the
    node's circuit edges out); ties go to the earlier node.

    Raises:
        ValueError: ``size`` below 1 or above ``len(components)``, or a component not in the circuit.
    """
    components = list(dict.fromkeys(components))
    if not 1 <= size <= len(components):
        raise ValueError(f"size must be between 1 and the {len(components)} components, got {size}")
    weights = node_weights(graph)
    outside = [c for c in components if c not in weights]
    if outside:
        raise ValueError(f"components {outside} are not in the circuit, so they have no circuit weight")
    order = {c: i for i, c in enumerate(components)}
    ranked = sorted(components, key=lambda c: (-weights[c], order[c]))[:size]
    return sorted(ranked, key=order.__getitem__)


def check_patch_sizes(sizes: str | Sequence[int]) -> None:
    """Refuse a ``patch_sizes`` knob that is neither ``auto`` nor a non-empty list of positive integers.

    Raises:
        ValueError: naming the value and the forms allowed.
    """
    if isinstance(sizes, str):
        if sizes != "auto":
            raise ValueError(f"patch_sizes must be 'auto' or a list of integers, got {sizes!r}")
        return
    bad = [k for k in sizes if isinstance(k, bool) or not isinstance(k, int) or k < 1]
    if bad or not len(sizes):
        raise ValueError(f"patch_sizes must be 'auto' or a non-empty list of positive integers, got {list(sizes)!r}")


def patching_sizes(n_components: int, sizes: str | Sequence[int] = "auto") -> list[int]:
    """Set sizes for :func:`bridge_patching_by_size`: ``auto`` is an eighth, a quarter, half and all of
    ``n_components`` (rounded, at least 1, duplicates once); else ``sizes`` checked and sorted.

    Raises:
        ValueError: no component, a malformed ``sizes`` (:func:`check_patch_sizes`), or a size above
            ``n_components``.
    """
    if n_components < 1:
        raise ValueError("the circuit has no component to restore")
    check_patch_sizes(sizes)
    if isinstance(sizes, str):
        return sorted({max(1, round(n_components * f)) for f in (1 / 8, 1 / 4, 1 / 2)} | {n_components})
    too_large = [k for k in sizes if k > n_components]
    if too_large:
        raise ValueError(
            f"patch_sizes {too_large} exceed the first hop's {n_components} circuit components; pass sizes up to "
            f"{n_components} or 'auto'"
        )
    return sorted(set(sizes))


def bridge_patching_by_size(
    model: Any,
    batch: PromptBatch,
    graph: Graph,
    components: Sequence[str],
    pool: Sequence[str],
    sizes: Sequence[int],
    n_random: int = 20,
    seed: int = 0,
) -> pd.DataFrame:
    """:func:`bridge_patching_summary` of the ``k`` strongest ``components`` of ``graph``, for each ``k``.

    Returns:
        One row per size, with the summary's columns and ``size``, ``share_of_pool`` (``k / len(pool)``)
        and ``components`` (the restored set). Every size draws its own random sets (same seed).
    """
    rows = []
    for k in sizes:
        chosen = strongest_components(graph, components, k)
        summary = bridge_patching_summary(bridge_patching(model, batch, chosen, pool, n_random=n_random, seed=seed))
        rows.append({"size": k, "share_of_pool": k / len(set(pool)), **summary, "components": " ".join(chosen)})
    return pd.DataFrame(rows)
