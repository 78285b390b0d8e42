"""The one grammar of node and receiver names, parsed and formatted in one place.

=====================  ==========================================================
name                   meaning
=====================  ==========================================================
``input``              token (+ positional) embedding
``a3.h1``              attention head 1 of layer 3 (an upstream node)
``m2``                 the MLP of layer 2 (an upstream node and a receiver)
``logits``             the unembedding's input (a receiver)
``a3.h1<q>``           the query input of head ``a3.h1`` (likewise ``<k>``, ``<v>``)
``a5.g1<k>``           the key input of key/value group 1 of layer 5 (grouped-query attention)
``m3->a5.h1<q>``       an edge: upstream node, then receiver
=====================  ==========================================================

Everything else in the package (graph, lens, head analyses, figures) goes through
:func:`parse_node` and the formatters below instead of splitting strings itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from kc_utils.shape import ModelShape

__all__ = [
    "NodeName",
    "NodeNameError",
    "edge_name",
    "head_name",
    "heads_of",
    "kv_receiver_name",
    "mlp_name",
    "parse_edge",
    "parse_node",
    "receiver_name",
    "upstream_node_names",
]

NodeKind = Literal["input", "head", "mlp", "logits", "group"]

_PATTERN = re.compile(
    r"^(?:(?P<input>input)|(?P<logits>logits)|m(?P<mlp>\d+)|a(?P<layer>\d+)\.(?P<hg>[hg])(?P<index>\d+))"
    r"(?:<(?P<letter>[qkv])>)?$"
)


class NodeNameError(ValueError):
    """A string that is not a node, receiver or edge name of this grammar (or of this model)."""


@dataclass(frozen=True)
class NodeName:
    """A parsed name.

    Attributes:
        kind: ``input``, ``head`` (``a3.h1``), ``group`` (``a5.g1``, a key/value head), ``mlp`` or ``logits``.
        layer: the block, or ``None`` for ``input``/``logits``.
        index: the head or key/value group within the layer, else ``None``.
        letter: ``"q"``, ``"k"`` or ``"v"`` for an attention receiver, else ``None``.
    """

    kind: NodeKind
    layer: int | None = None
    index: int | None = None
    letter: str | None = None

    @property
    def node(self) -> str:
        """The node's name without the receiver letter (``a3.h1<q>`` → ``a3.h1``)."""
        if self.kind in ("input", "logits"):
            return self.kind
        if self.kind == "mlp":
            return mlp_name(int(self.layer))  # type: ignore[arg-type]
        letter = "h" if self.kind == "head" else "g"
        return f"a{self.layer}.{letter}{self.index}"

    def __str__(self) -> str:
        return self.node if self.letter is None else f"{self.node}<{self.letter}>"


def parse_node(name: str, shape: ModelShape | None = None) -> NodeName:
    """Parse a node or receiver name; with ``shape``, also check it exists in that model.

    Raises:
        NodeNameError: a malformed name, a ``<q/k/v>`` letter on a non-attention node, a ``<q>``
            on a key/value group, or (with ``shape``) a layer/head out of range.
    """
    match = _PATTERN.match(name) if isinstance(name, str) else None
    if match is None:
        raise NodeNameError(
            f"{name!r} is not a node name; use 'input', 'logits', 'm{{layer}}', 'a{{layer}}.h{{head}}' "
            "(optionally with '<q>', '<k>' or '<v>'), or 'a{layer}.g{group}<k|v>' under grouped-query attention"
        )
    letter = match.group("letter")
    if match.group("input") or match.group("logits"):
        kind: NodeKind = "input" if match.group("input") else "logits"
        parsed = NodeName(kind)
    elif match.group("mlp") is not None:
        parsed = NodeName("mlp", int(match.group("mlp")))
    else:
        kind = "head" if match.group("hg") == "h" else "group"
        parsed = NodeName(kind, int(match.group("layer")), int(match.group("index")), letter)
    if letter is not None and parsed.kind not in ("head", "group"):
        raise NodeNameError(f"{name!r}: only attention heads have <q>, <k> and <v> inputs")
    if parsed.kind == "group" and letter not in ("k", "v"):
        raise NodeNameError(f"{name!r}: a key/value group is a receiver; name its input, e.g. '{parsed.node}<k>'")
    if shape is not None:
        _check_in_range(name, parsed, shape)
    return parsed


def _check_in_range(name: str, parsed: NodeName, shape: ModelShape) -> None:
    if parsed.layer is not None and parsed.layer >= shape.n_layers:
        raise NodeNameError(f"{name!r}: this model has {shape.n_layers} layers (0 … {shape.n_layers - 1})")
    if parsed.kind == "head" and parsed.index is not None and parsed.index >= shape.n_heads:
        raise NodeNameError(f"{name!r}: this model has {shape.n_heads} heads per layer (0 … {shape.n_heads - 1})")
    if parsed.kind == "group":
        if not shape.grouped:
            raise NodeNameError(f"{name!r}: this model has no grouped-query attention; name heads 'a{parsed.layer}.h…'")
        if parsed.index is not None and parsed.index >= shape.n_kv_heads:
            raise NodeNameError(f"{name!r}: this model has {shape.n_kv_heads} key/value heads per layer")
    if parsed.kind == "head" and parsed.letter in ("k", "v") and shape.grouped:
        raise NodeNameError(
            f"{name!r}: under grouped-query attention keys and values belong to groups; "
            f"use 'a{parsed.layer}.g{parsed.index // shape.heads_per_kv}<{parsed.letter}>'"  # type: ignore[operator]
        )


def head_name(layer: int, head: int) -> str:
    """``a{layer}.h{head}``."""
    return f"a{layer}.h{head}"


def mlp_name(layer: int) -> str:
    """``m{layer}``."""
    return f"m{layer}"


def receiver_name(layer: int, head: int, letter: str) -> str:
    """The query/key/value input of a head: ``a{layer}.h{head}<{letter}>``."""
    return f"{head_name(layer, head)}<{letter}>"


def kv_receiver_name(shape: ModelShape, layer: int, kv_head: int, letter: str) -> str:
    """The key or value receiver of key/value head ``kv_head``: ``a5.h1<k>``, or ``a5.g1<k>`` under GQA."""
    kind = "g" if shape.grouped else "h"
    return f"a{layer}.{kind}{kv_head}<{letter}>"


def edge_name(upstream: str, receiver: str) -> str:
    """``upstream->receiver``."""
    return f"{upstream}->{receiver}"


def parse_edge(name: str) -> tuple[str, str]:
    """``"m3->a5.h1<q>"`` → ``("m3", "a5.h1<q>")``.

    Raises:
        NodeNameError: not two names joined by ``->``.
    """
    parts = name.split("->") if isinstance(name, str) else []
    if len(parts) != 2:
        raise NodeNameError(f"{name!r} is not an edge name like 'm3->a5.h1<q>'")
    parse_node(parts[0])
    parse_node(parts[1])
    return parts[0], parts[1]


def heads_of(name: str, shape: ModelShape) -> list[str]:
    """The head (upstream) nodes a node or receiver stands for.

    ``a3.h1<q>`` → ``["a3.h1"]``; a key/value group ``a5.g1<k>`` → the query heads sharing it;
    ``m2``/``input``/``logits`` → ``[name]`` unchanged (they are their own node).
    """
    parsed = parse_node(name, shape)
    if parsed.kind != "group":
        return [parsed.node]
    k = shape.heads_per_kv
    return [head_name(int(parsed.layer), int(parsed.index) * k + j) for j in range(k)]  # type: ignore[arg-type]


def upstream_node_names(shape: ModelShape) -> list[str]:
    """Upstream nodes in graph order: ``input, a0.h0 … a0.h{H-1}, m0, a1.h0 …``."""
    names = ["input"]
    for layer in range(shape.n_layers):
        names += [head_name(layer, h) for h in range(shape.n_heads)] + [mlp_name(layer)]
    return names
