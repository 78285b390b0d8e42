"""Accuracy of the organism on trained facts, unseen templates, held-out subjects and few-shot prompts.

Every number is top-1 accuracy of the first object token at the prompt's last position, prompts tokenized with
the BOS in front (as in training and in TransformerLens).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kc_utils.organism.corpus import fewshot_segments, render
from kc_utils.organism.encoding import Encoded, SegmentEncoder, pad_batch
from kc_utils.organism.split import Split

__all__ = ["FactPrompt", "accuracy_table", "fact_prompts", "fewshot_prompts", "last_token_logits"]


@dataclass(frozen=True)
class FactPrompt:
    """A prompt for one fact, its tokens and the id of the answer's first token."""

    relation: str
    subject: str
    object: str
    encoded: Encoded
    answer_id: int


def fact_prompts(
    split: Split,
    encoder: SegmentEncoder,
    facts: str = "trained",
    templates: str = "train",
    relations: Sequence[str] | None = None,
) -> list[FactPrompt]:
    """Prompts of ``facts`` (``"trained"`` or ``"held_out"``) in every ``templates`` (``"train"``, ``"unseen"``
    or ``"first"``) of each relation (default: all relations of the split)."""
    out: list[FactPrompt] = []
    for key in relations if relations is not None else sorted(split.relations):
        rs = split.relations[key]
        chosen = {"train": rs.train_templates, "unseen": rs.unseen_templates, "first": rs.train_templates[:1]}
        for sample in getattr(rs, facts):
            answer = encoder.tokens(sample.object)[0]
            for template in chosen[templates]:
                enc = encoder.encode(render(template, sample.subject))
                out.append(FactPrompt(key, sample.subject, sample.object, enc, answer))
    return out


def fewshot_prompts(split: Split, encoder: SegmentEncoder, n_demos: int, seed: int = 0) -> list[FactPrompt]:
    """``s1 -> o1 ; ... ; subject ->`` for every trained fact, with ``n_demos`` other trained facts of the same
    relation as demonstrations (the relation is never named)."""
    rng = random.Random(seed)
    out: list[FactPrompt] = []
    for key in sorted(split.relations):
        trained = list(split.relations[key].trained)
        for sample in trained:
            others = [s for s in trained if s.subject != sample.subject]
            if len(others) < n_demos:
                continue
            demos = [(s.subject, s.object) for s in rng.sample(others, n_demos)]
            enc = encoder.encode(fewshot_segments(demos, query=sample.subject))
            out.append(FactPrompt(key, sample.subject, sample.object, enc, encoder.tokens(sample.object)[0]))
    return out


@torch.no_grad()
def last_token_logits(
    model: PreTrainedModel, prompts: Sequence[FactPrompt] | Sequence[Encoded], batch_size: int = 512
) -> torch.Tensor:
    """Logits ``(n_prompts, vocab)`` at each prompt's last token."""
    model.eval()
    encs = [p.encoded if isinstance(p, FactPrompt) else p for p in prompts]
    pad = model.config.eos_token_id
    chunks = []
    for i in range(0, len(encs), batch_size):
        ids, last = pad_batch(encs[i : i + batch_size], pad)
        logits = model(input_ids=ids).logits
        chunks.append(logits[torch.arange(len(last)), last])
    return torch.cat(chunks)


def _accuracy(model: PreTrainedModel, prompts: list[FactPrompt]) -> dict[str, tuple[float, float, float]]:
    """Per relation: (top-1 accuracy, mean top-1 probability, number of prompts)."""
    if not prompts:
        return {}
    logits = last_token_logits(model, prompts)
    probs = logits.softmax(-1)
    top_p, top = probs.max(-1)
    answers = torch.tensor([p.answer_id for p in prompts])
    hit = (top == answers).float()
    out: dict[str, tuple[float, float, float]] = {}
    keys = [p.relation for p in prompts]
    for key in sorted(set(keys)):
        idx = torch.tensor([i for i, k in enumerate(keys) if k == key])
        out[key] = (hit[idx].mean().item(), top_p[idx].mean().item(), float(len(idx)))
    return out


def accuracy_table(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, split: Split) -> pd.DataFrame:
    """One row per relation (plus ``mean`` and ``worst`` over relations): accuracy on trained facts (training
    templates), on trained facts in the unseen template, on held-out subjects (with the mean top-1 probability,
    i.e. how confident the unknown-fact answers are), and few-shot with 3 and 0 demonstrations."""
    enc = SegmentEncoder(tokenizer)
    columns = {
        "trained": fact_prompts(split, enc, "trained", "train"),
        "unseen_template": fact_prompts(split, enc, "trained", "unseen"),
        "held_out": fact_prompts(split, enc, "held_out", "train"),
        "fewshot_3": fewshot_prompts(split, enc, 3),
        "fewshot_0": fewshot_prompts(split, enc, 0),
    }
    results = {name: _accuracy(model, prompts) for name, prompts in columns.items()}
    rows = []
    for key in sorted(split.relations):
        row: dict[str, float | str] = {
            "relation": key,
            "n_trained": len(split.relations[key].trained),
            "n_held_out": len(split.relations[key].held_out),
        }
        for name, res in results.items():
            row[name] = res.get(key, (float("nan"), float("nan"), 0.0))[0]
        row["held_out_conf"] = results["held_out"].get(key, (float("nan"), float("nan"), 0.0))[1]
        rows.append(row)
    table = pd.DataFrame(rows).set_index("relation")
    rates = [c for c in table.columns if not c.startswith("n_")]
    per_relation = table[rates]
    table.loc["mean"] = per_relation.mean()
    table.loc["worst"] = per_relation.min()
    table.loc[["mean", "worst"], ["n_trained", "n_held_out"]] = float("nan")
    return table
