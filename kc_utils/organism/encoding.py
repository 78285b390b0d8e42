"""Token ids, token roles and subject spans of documents and prompts.

Both the training corpus and the evaluation prompts are built from :class:`~kc_utils.organism.corpus.Segment`
s. Because the tokenizer splits at every word boundary, tokenizing segment by segment gives exactly the tokens
of the whole text, with each token's role known.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from kc_utils.organism.corpus import Segment

__all__ = ["Encoded", "SegmentEncoder", "pad_batch"]


@dataclass(frozen=True)
class Encoded:
    """A tokenized document or prompt.

    Attributes:
        ids: token ids, starting with the BOS.
        roles: per token, ``"bos"``, ``"context"``, ``"subject"`` or ``"object"``.
        subject_spans: ``(start, end)`` token ranges (end exclusive) of every subject.
    """

    ids: tuple[int, ...]
    roles: tuple[str, ...]
    subject_spans: tuple[tuple[int, int], ...]


class SegmentEncoder:
    """Tokenizes segments with a cache (the corpus repeats the same few thousand strings)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.bos_id: int = tokenizer.bos_token_id
        self._cache: dict[str, tuple[int, ...]] = {}

    def tokens(self, text: str) -> tuple[int, ...]:
        """Token ids of ``text`` without special tokens."""
        if text not in self._cache:
            self._cache[text] = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self._cache[text]

    def encode(self, segments: Sequence[Segment]) -> Encoded:
        """BOS followed by the segments' tokens."""
        ids: list[int] = [self.bos_id]
        roles: list[str] = ["bos"]
        spans: list[tuple[int, int]] = []
        for seg in segments:
            toks = self.tokens(seg.text)
            if seg.role == "subject":
                spans.append((len(ids), len(ids) + len(toks)))
            ids += toks
            roles += [seg.role] * len(toks)
        return Encoded(tuple(ids), tuple(roles), tuple(spans))


def pad_batch(items: Sequence[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to a ``(batch, pos)`` id tensor; also return each item's last real position."""
    width = max(len(e.ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    for i, e in enumerate(items):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
    last = torch.tensor([len(e.ids) - 1 for e in items])
    return ids, last
