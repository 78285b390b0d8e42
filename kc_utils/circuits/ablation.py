"""What an ablated edge carries, computed once over a whole reference set.

An edge outside the circuit carries its upstream node's *ablated* output ``ẑ_u`` instead of
``z_u``. Three kinds (auto-circuit's ``AblationType``, EAP-IG's intervention data):

==========  ===================================================================================
kind        ``ẑ_u``
==========  ===================================================================================
``patch``   ``u``'s output on the corrupted prompt (same token length as the clean one); a fact
            with no corrupt twin (``batch.mean_fallback``) gets the ``mean`` value instead
``zero``    zeros
``mean``    ``u``'s output averaged over every real (non-pad) token of a reference set (default:
            the whole clean batch), the same vector at every position
==========  ===================================================================================

:func:`prepare_ablation` computes whatever a kind needs (the reference mean) **once**, before any
batch loop, and returns an :class:`AblationValues`; every chunk then asks it for its own
``[up, b, p, d]`` tensor. Results therefore never depend on ``batch_size`` (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from kc_utils import models
from kc_utils.circuits.graph import Graph
from kc_utils.circuits.patching import collect_outputs
from kc_utils.data.prompts import PromptBatch

__all__ = ["ABLATIONS", "Ablation", "AblationValues", "ablated_outputs", "prepare_ablation", "token_mean"]

Ablation = Literal["patch", "zero", "mean"]
ABLATIONS: tuple[str, ...] = ("patch", "zero", "mean")


@dataclass(frozen=True)
class AblationValues:
    """An ablation ready to use on any chunk of the batch it was prepared for.

    Attributes:
        kind: ``"patch"``, ``"zero"`` or ``"mean"``.
        mean: ``Float[up, d]`` — each upstream node's mean output over the reference set (for
            ``mean``, and for ``patch`` when some fact has no corrupt twin); else ``None``.
    """

    kind: Ablation
    mean: Float[Tensor, "up d"] | None = None

    def outputs(self, model: Any, graph: Graph, chunk: PromptBatch) -> Float[Tensor, "up b p d"]:
        """The ablated outputs ``ẑ`` for ``chunk``, shaped ``[up, b, p, d]``."""
        b, p = chunk.clean.shape
        dtype = models.model_dtype(model)
        if self.kind == "zero":
            return torch.zeros(graph.n_upstream, b, p, graph.shape.d_model, device=chunk.clean.device, dtype=dtype)
        if self.kind == "mean":
            assert self.mean is not None
            return self.mean.to(chunk.clean.device)[:, None, None, :].expand(-1, b, p, -1).contiguous()
        if chunk.corrupt is None:
            raise ValueError(
                "ablation='patch' needs corrupted prompts; build the batch with corrupt_prompts, "
                "or use ablation='mean' or 'zero'"
            )
        outputs = collect_outputs(model, graph, chunk.corrupt)
        if chunk.mean_fallback is not None and bool(chunk.mean_fallback.any()):
            if self.mean is None:
                raise ValueError("this patch ablation was prepared for a batch without mean fallbacks")
            outputs[:, chunk.mean_fallback] = self.mean.to(outputs.device)[:, None, None, :]
        return outputs


def token_mean(
    model: Any, graph: Graph, reference: PromptBatch, batch_size: int | None = None
) -> Float[Tensor, "up d"]:
    """Each upstream node's output averaged over every real token of ``reference`` (chunked, exact)."""
    if len(reference) == 0:
        raise ValueError("the mean-ablation reference set is empty")
    total: Tensor | None = None
    count = 0.0
    for chunk in reference.split(batch_size):
        outputs = collect_outputs(model, graph, chunk.clean)
        mask = chunk.padding_mask.to(outputs.dtype)
        part = torch.einsum("ubpd,bp->ud", outputs.double(), mask.double())
        total = part if total is None else total + part
        count += float(mask.sum())
    assert total is not None
    return (total / count).to(models.model_dtype(model))


def prepare_ablation(
    model: Any,
    graph: Graph,
    ablation: Ablation | AblationValues,
    batch: PromptBatch,
    mean_reference: PromptBatch | None = None,
    batch_size: int | None = None,
) -> AblationValues:
    """Compute what ``ablation`` needs once, over the whole of ``mean_reference`` (default ``batch``).

    An :class:`AblationValues` passes through unchanged, so callers may prepare it themselves and
    share it between attribution and evaluation.

    Raises:
        ValueError: an unknown kind, or ``patch`` for a batch without corrupted prompts.
    """
    if isinstance(ablation, AblationValues):
        return ablation
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; use one of {ABLATIONS}")
    reference = mean_reference if mean_reference is not None else batch
    if ablation == "zero":
        return AblationValues("zero")
    if ablation == "mean":
        return AblationValues("mean", token_mean(model, graph, reference, batch_size))
    if batch.corrupt is None:
        raise ValueError(
            "ablation='patch' needs corrupted prompts; build the batch with corrupt_prompts, "
            "or use ablation='mean' or 'zero'"
        )
    needs_mean = batch.mean_fallback is not None and bool(batch.mean_fallback.any())
    return AblationValues("patch", token_mean(model, graph, reference, batch_size) if needs_mean else None)


def ablated_outputs(
    model: Any,
    graph: Graph,
    batch: PromptBatch,
    ablation: Ablation | AblationValues,
    mean_reference: PromptBatch | None = None,
) -> Float[Tensor, "up b p d"]:
    """The ablated outputs ``ẑ`` for the whole of ``batch`` in one go (prepare, then apply)."""
    return prepare_ablation(model, graph, ablation, batch, mean_reference).outputs(model, graph, batch)
