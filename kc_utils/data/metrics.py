"""Per-example metrics read at each prompt's answer position.

Every metric maps ``(logits Float[b, p, vocab], batch)`` to ``Float[b]``. Attribution and
faithfulness use the batch mean. Names accepted wherever a metric is asked for:

==================  ==========================================================  =============
name                value                                                       higher is
==================  ==========================================================  =============
``logit_diff``      logit(answer) − logit(corrupt answer)                       better
``logprob``         log p(answer)                                               better
``prob``            p(answer)                                                   better
``rank``            rank of the answer among all tokens (0 = top-1)             worse
``hit@k``           1 if the answer ranks in the top k (e.g. ``hit@10``)         better
==================  ==========================================================  =============
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from kc_utils.data.prompts import PromptBatch

Metric = Callable[[Tensor, PromptBatch], Tensor]


def answer_logits(logits: Float[Tensor, "b p v"], batch: PromptBatch) -> Float[Tensor, "b v"]:
    """Logits at each example's last prompt position."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, batch.last_pos]


def logit_diff(logits: Tensor, batch: PromptBatch) -> Tensor:
    """logit(answer) − logit(corrupt answer)."""
    if bool((batch.corrupt_answer < 0).any()):
        raise ValueError(
            "the logit_diff metric needs a corrupt answer for every example; build the batch with "
            "corrupt_answers, or use metric='logprob'"
        )
    final = answer_logits(logits, batch)
    return final.gather(1, batch.answer[:, None])[:, 0] - final.gather(1, batch.corrupt_answer[:, None])[:, 0]


def logprob(logits: Tensor, batch: PromptBatch) -> Tensor:
    """log p(answer)."""
    final = answer_logits(logits, batch).float().log_softmax(-1)
    return final.gather(1, batch.answer[:, None])[:, 0]


def prob(logits: Tensor, batch: PromptBatch) -> Tensor:
    """p(answer)."""
    return logprob(logits, batch).exp()


def rank_of(logits: Float[Tensor, "... v"], target: Int[Tensor, ...]) -> Int[Tensor, ...]:
    """The one definition of rank: tokens with a strictly higher logit than ``target`` (0 = top-1).

    Ties count in the target's favour. ``logits`` ``[..., vocab]``, ``target`` ``[...]`` token ids.
    """
    target_logit = logits.gather(-1, target[..., None])
    # counted in int32 (a vocabulary is far below 2**31): 1.6x faster than the default int64 sum of a bool tensor
    return (logits > target_logit).sum(-1, dtype=torch.int32).long()


def rank(logits: Tensor, batch: PromptBatch) -> Tensor:
    """Rank of the answer among all tokens at each example's last position (0 = top-1), as float."""
    return rank_of(answer_logits(logits, batch), batch.answer).float()


def hit_at(k: int) -> Metric:
    """Metric that is 1 where the answer ranks in the top ``k``."""

    def hit(logits: Tensor, batch: PromptBatch) -> Tensor:
        return (rank(logits, batch) < k).float()

    hit.__name__ = f"hit@{k}"
    return hit


_NAMED: dict[str, Metric] = {"logit_diff": logit_diff, "logprob": logprob, "prob": prob, "rank": rank}


def reads_last_position_only(metric: Metric) -> bool:
    """Whether ``metric`` reads nothing but each prompt's last position, so that a caller may unembed that position
    alone (logits ``[b, 1, vocab]``, read with :meth:`~kc_utils.data.prompts.PromptBatch.at_last_position`).

    True for this module's metrics, by name through :func:`get_metric` or as callables; a caller's own metric may
    read any position.

    Example:
        >>> reads_last_position_only(get_metric("hit@10"))  # doctest: +SKIP
        True
    """
    return getattr(metric, "__module__", None) == __name__


def get_metric(metric: str | Metric) -> Metric:
    """A metric by name (see the module table) or a callable passed through."""
    if callable(metric):
        return metric
    if metric in _NAMED:
        return _NAMED[metric]
    if metric.startswith("hit@") and metric[4:].isdigit():
        return hit_at(int(metric[4:]))
    raise ValueError(f"unknown metric {metric!r}; use one of {sorted(_NAMED)} or 'hit@k'")
