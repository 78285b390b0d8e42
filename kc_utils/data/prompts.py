"""Tokenised prompt batches: clean prompts, their corrupted twins and the answers.

Padding convention: **right padding**. Attention is causal, so a pad token after the prompt never
influences the prompt's own positions, and the answer is read at each example's last prompt
position (``last_pos``). Results on a padded batch therefore equal those of each prompt run alone
(tested), with no attention mask needed — for learned and rotary positions alike.

Answers: the model is scored on the **first token** of ``" " + answer`` after the prompt (for
"Paris" that is the single token " Paris"; for "Ringgit" under GPT-2's BPE it is " Ring"). This is
the paper's convention; multi-token answers are judged by their first token only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from kc_utils.models import continuation_first_token, model_device, tokenize


class PromptError(ValueError):
    """A prompt set that cannot be used; the message names the example and the fix."""


@dataclass(frozen=True)
class PromptBatch:
    """A batch of prompts ready for the model.

    Attributes:
        clean: ``Int[b, p]`` right-padded token ids of the clean prompts.
        corrupt: ``Int[b, p]`` corrupted prompts with the same token length as their clean
            twin, or ``None`` (then only zero/mean ablation is possible).
        last_pos: ``Int[b]`` index of each prompt's last token (where the answer is predicted).
        answer: ``Int[b]`` first token of each clean answer.
        corrupt_answer: ``Int[b]`` first token of each corrupt answer (``-1`` where unknown).
        prompts: the clean prompt strings.
        answers: the clean answer strings.
        mean_fallback: ``Bool[b]`` examples without a corrupt twin: under patch ablation their
            ablated activations are the batch mean (see :mod:`kc_utils.circuits.ablation`).
    """

    clean: Int[Tensor, "b p"]
    corrupt: Int[Tensor, "b p"] | None
    last_pos: Int[Tensor, "b"]
    answer: Int[Tensor, "b"]
    corrupt_answer: Int[Tensor, "b"]
    prompts: tuple[str, ...]
    answers: tuple[str, ...]
    mean_fallback: Tensor | None = None

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    @property
    def padding_mask(self) -> Tensor:
        """``Bool[b, p]``: True on real (non-pad) tokens."""
        positions = torch.arange(self.clean.shape[1], device=self.clean.device)
        return positions[None, :] <= self.last_pos[:, None]

    def split(self, batch_size: int | None) -> Iterator[PromptBatch]:
        """Consecutive sub-batches of at most ``batch_size`` examples (one when ``None``)."""
        if batch_size is None or batch_size >= len(self):
            yield self
            return
        for start in range(0, len(self), batch_size):
            yield self.select(slice(start, start + batch_size))

    def select(self, index: slice | Sequence[int] | Tensor) -> PromptBatch:
        """The examples at ``index``, trimmed to their longest prompt."""
        if isinstance(index, slice):
            idx = torch.arange(len(self))[index]
        else:
            idx = torch.as_tensor(index, dtype=torch.long)
        last_pos = self.last_pos[idx]
        width = int(last_pos.max()) + 1
        return replace(
            self,
            clean=self.clean[idx, :width],
            corrupt=None if self.corrupt is None else self.corrupt[idx, :width],
            last_pos=last_pos,
            answer=self.answer[idx],
            corrupt_answer=self.corrupt_answer[idx],
            prompts=tuple(self.prompts[i] for i in idx.tolist()),
            answers=tuple(self.answers[i] for i in idx.tolist()),
            mean_fallback=None if self.mean_fallback is None else self.mean_fallback[idx],
        )

    def at_last_position(self) -> PromptBatch:
        """The batch as a metric sees it on logits kept at each prompt's last position alone (``[b, 1, vocab]``,
        as :func:`~kc_utils.circuits.patching.run_masked` returns them with ``last_pos``): ``last_pos`` is 0.
        Only for the metrics of :mod:`kc_utils.data.metrics`, which read nothing but that position."""
        return replace(self, last_pos=torch.zeros_like(self.last_pos))

    def to(self, device: torch.device | str) -> PromptBatch:
        return replace(
            self,
            clean=self.clean.to(device),
            corrupt=None if self.corrupt is None else self.corrupt.to(device),
            last_pos=self.last_pos.to(device),
            answer=self.answer.to(device),
            corrupt_answer=self.corrupt_answer.to(device),
            mean_fallback=None if self.mean_fallback is None else self.mean_fallback.to(device),
        )


def _pad(rows: list[list[int]], pad_id: int) -> Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], dtype=torch.long)


def answer_token(model: Any, prompt: str, answer: str) -> int:
    """First token of ``" " + answer`` after ``prompt``.

    Raises:
        PromptError: when the tokenizer cannot represent it (e.g. a word missing from a
            word-level vocabulary).
    """
    token = continuation_first_token(model, prompt, answer)
    if token is None:
        raise PromptError(
            f"the answer {answer!r} of prompt {prompt!r} has no token of its own in this model's "
            "vocabulary (unknown word, or merged into the prompt's last token). Drop this fact or "
            "use a model whose tokenizer covers it."
        )
    return token


def make_batch(
    model: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    corrupt_prompts: Sequence[str | None] | None = None,
    corrupt_answers: Sequence[str | None] | None = None,
) -> PromptBatch:
    """Tokenise prompts (BOS prepended, right-padded) and their answers onto the model's device.

    Args:
        prompts: clean prompts, e.g. ``"The capital of France is"``.
        answers: their answers, e.g. ``"Paris"`` (first token counts).
        corrupt_prompts: the same prompts with another subject of the same token length; ``None``
            for an example without a twin (patch ablation then uses the batch mean for it).
        corrupt_answers: the corrupt prompts' answers (needed for the logit-difference metric).

    Raises:
        PromptError: empty input, mismatched lengths, a corrupt prompt of another token length,
            or an answer without a token.
    """
    if len(prompts) == 0:
        raise PromptError("no prompts given: the dataset is empty (did the known-fact filter drop everything?)")
    if len(answers) != len(prompts):
        raise PromptError(f"{len(prompts)} prompts but {len(answers)} answers; give one answer per prompt")
    clean_ids = tokenize(model, prompts)
    answer_ids = [answer_token(model, p, a) for p, a in zip(prompts, answers)]
    corrupt_tensor = None
    fallback = None
    corrupt_answer_ids = [-1] * len(prompts)
    if corrupt_prompts is not None:
        if len(corrupt_prompts) != len(prompts):
            raise PromptError(
                f"{len(prompts)} clean prompts but {len(corrupt_prompts)} corrupt prompts; "
                "pair each clean prompt with one corrupt prompt"
            )
        fallback = torch.tensor([c is None for c in corrupt_prompts], dtype=torch.bool)
        corrupt_ids = [
            clean if text is None else tokenize(model, [text])[0] for clean, text in zip(clean_ids, corrupt_prompts)
        ]
        for i, (c, k) in enumerate(zip(clean_ids, corrupt_ids)):
            if len(c) != len(k):
                raise PromptError(
                    f"example {i}: the corrupt prompt {corrupt_prompts[i]!r} has {len(k)} tokens but the "
                    f"clean prompt {prompts[i]!r} has {len(c)}. Patching needs equal lengths: pick a "
                    "corrupt subject with the same number of tokens, or use ablation='mean'/'zero'."
                )
        corrupt_tensor = _pad(corrupt_ids, model.tokenizer.pad_token_id)
        if corrupt_answers is not None:
            if len(corrupt_answers) != len(prompts):
                raise PromptError("give one corrupt answer per corrupt prompt")
            corrupt_answer_ids = [
                -1 if a is None else answer_token(model, p if c is None else c, a)
                for p, c, a in zip(prompts, corrupt_prompts, corrupt_answers)
            ]
    device = model_device(model)
    return PromptBatch(
        clean=_pad(clean_ids, model.tokenizer.pad_token_id),
        corrupt=corrupt_tensor,
        last_pos=torch.tensor([len(c) - 1 for c in clean_ids], dtype=torch.long),
        answer=torch.tensor(answer_ids, dtype=torch.long),
        corrupt_answer=torch.tensor(corrupt_answer_ids, dtype=torch.long),
        prompts=tuple(prompts),
        answers=tuple(answers),
        mean_fallback=fallback,
    ).to(device)
