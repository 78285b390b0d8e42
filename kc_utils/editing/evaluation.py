"""Batch evaluation of edits with EasyEdit's metric names, and where an edit lives.

For one request on a relation of the organism's split, the probes are (every one read as the top-1 token at
the prompt's last position, ``kc_utils.data.metrics.rank_of`` = 0):

===========================  ===================================================================================
metric                       value
===========================  ===================================================================================
``reliability``              the edit prompt answers the new object
``generalisation``           share of the relation's *other training templates* that answer the new object
``generalisation_unseen``    share of the relation's never-trained templates that answer the new object
``locality_relation``        share of other subjects of the same relation whose top-1 is unchanged
``locality_subject``         share of the same subject's facts in other relations whose top-1 is unchanged
``leak``                     share of those other subjects (true object ≠ new object) whose top-1 *becomes* the
                             new object, minus the share whose top-1 was already the new object before the edit
===========================  ===================================================================================

:class:`EditEvaluator` tokenises every probe of every request once and runs the unedited model over them in
batches (the "before" answers, and MLP outputs on the edit prompts for :meth:`EditEvaluator.location`); after
each edit one forward pass over that request's probes gives all six metrics.

**Where the edit lives** (:meth:`EditEvaluator.location`): on the edited model, put back the edited MLP's
*original* output at the subject's positions, or at the last position, and read whether the new object is
still top-1. Restoring at every position undoes the edit exactly (the layers below are unchanged), so the two
partial restorations say through which position the edit acts.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from kc_utils import models
from kc_utils.analysis.lens import subject_positions
from kc_utils.data.metrics import rank_of
from kc_utils.editing.request import EditError, EditRequest, PreparedRequest, prepare_request, single_token
from kc_utils.organism.split import Split

__all__ = [
    "EDIT_RELATION_ORDER",
    "METRICS",
    "EditEvaluator",
    "ProbeSet",
    "build_probes",
    "corrupt_twin",
    "counterfactual_requests",
    "pick_edit_relation",
]

METRICS = (
    "reliability",
    "generalisation",
    "generalisation_unseen",
    "locality_relation",
    "locality_subject",
    "leak",
)

_KINDS = ("edit", "train_template", "unseen_template", "same_relation", "same_subject")


@dataclass(frozen=True)
class ProbeSet:
    """The prompts that evaluate one request.

    Attributes:
        request: the edit.
        prompts: probe prompts.
        kinds: one of ``edit``, ``train_template``, ``unseen_template``, ``same_relation``, ``same_subject`` each.
        leak_eligible: per prompt, a ``same_relation`` probe whose true object is not the new object.
        subjects: the subject of each prompt.
    """

    request: EditRequest
    prompts: tuple[str, ...]
    kinds: tuple[str, ...]
    leak_eligible: tuple[bool, ...]
    subjects: tuple[str, ...] = ()


def corrupt_twin(model: Any, split: Split, relation: str, subject: str, answer: str, seed: int = 0) -> tuple[str, str]:
    """A corrupt prompt for circuit attribution: another trained subject of ``relation`` whose prompt (first
    training template) has the same token length and whose object's first token differs from ``answer``'s.

    Returns:
        ``(corrupt prompt, its object)``.

    Raises:
        EditError: when no such subject exists.
    """
    from kc_utils.data.facts import pair_corrupt
    from kc_utils.data.relations import Sample

    rs = split.relations[relation]
    twin = pair_corrupt(model, rs.train_templates[0], [Sample(subject, answer)], list(rs.trained), seed)[0]
    if twin.corrupt_prompt is None:
        raise EditError(
            f"no subject of {relation} has as many tokens as {subject!r} in {rs.train_templates[0]!r}: patching "
            "needs a same-length corrupt prompt; pick another case"
        )
    return twin.corrupt_prompt, twin.corrupt_object


def counterfactual_requests(
    model: Any, split: Split, relation: str, n: int, seed: int = 0, template_index: int = 0
) -> list[EditRequest]:
    """``n`` edits of a relation's trained facts: each known fact moved to another object of the relation.

    A fact qualifies when the model answers it (top-1) in training template ``template_index`` and its new
    object is a single token; the new object is drawn uniformly from the relation's other single-token objects.

    Raises:
        EditError: an unknown relation, or fewer than ``n`` qualifying facts.
    """
    if relation not in split.relations:
        raise EditError(f"unknown relation {relation!r}; the split has {sorted(split.relations)}")
    rs = split.relations[relation]
    template = rs.train_templates[template_index]
    objects: dict[str, int] = {}
    for sample in rs.trained:
        try:
            objects[sample.object] = single_token(model, template.replace("{}", sample.subject), sample.object)
        except EditError:
            continue
    facts = [s for s in rs.trained if s.object in objects]
    prompts = [template.replace("{}", s.subject) for s in facts]
    known = []
    for start in range(0, len(prompts), 64):
        chunk = prompts[start : start + 64]
        tokens, last = _pad(model, chunk)
        with torch.no_grad(), models.without_edge_hooks(model):
            top = models.last_logits(model, tokens, last).argmax(-1)
        known += [int(t) == objects[f.object] for t, f in zip(top, facts[start : start + 64])]
    facts = [f for f, ok in zip(facts, known) if ok]
    if len(facts) < n:
        raise EditError(
            f"{relation}: only {len(facts)} known facts with a single-token object, fewer than n_edits={n}; "
            "lower n_edits or pick another relation"
        )
    rng = random.Random(seed)
    chosen = rng.sample(facts, n)
    names = sorted(objects)
    return [
        EditRequest.from_template(
            template, s.subject, rng.choice([o for o in names if o != s.object]), s.object, relation
        )
        for s in chosen
    ]


#: :func:`pick_edit_relation`'s order: the paper's case first, then relations whose objects are single words in
#: most tokenizers (country → language, capital, currency; company → city; adjective → antonym).
EDIT_RELATION_ORDER = (
    "product_by_company",
    "country_language",
    "country_capital_city",
    "company_hq",
    "country_currency",
    "adj_antonym",
)


def pick_edit_relation(
    model: Any, model_name: str, n: int, seed: int = 0, order: Sequence[str] = EDIT_RELATION_ORDER
) -> tuple[str, dict[str, str]]:
    """The first relation of ``order`` with ``n`` counterfactual edits on this model (:func:`counterfactual_requests`).

    Returns:
        ``(relation, skipped)``: the relation, and each relation tried before it with the reason it was passed over.

    Raises:
        EditError: no relation of ``order`` has ``n`` edits (the message lists every reason).
    """
    from kc_utils.data.split import relation_split

    split = relation_split(model_name, list(order))
    skipped: dict[str, str] = {}
    for key in order:
        if key not in split.relations:
            skipped[key] = f"{key} is not a relation of {model_name}'s facts"
            continue
        try:
            counterfactual_requests(model, split, key, n, seed)
        except EditError as error:
            skipped[key] = str(error)
            continue
        return key, skipped
    raise EditError(f"no relation has n_edits={n} edits on {model_name}: " + "; ".join(skipped.values()))


def build_probes(split: Split, request: EditRequest, n_neighbours: int = 10, seed: int = 0) -> ProbeSet:
    """The probes of one request (module table); neighbours are drawn with ``seed`` from the relation's other
    trained subjects and written in the edit prompt's template.

    Raises:
        EditError: a request without a relation of the split, or whose prompt is not one of its templates.
    """
    if request.relation not in split.relations:
        raise EditError(f"request {request.describe()!r} names relation {request.relation!r}, not in the split")
    rs = split.relations[request.relation]
    templates = [t for t in rs.train_templates if t.replace("{}", request.subject) == request.prompt]
    if not templates:
        raise EditError(f"the edit prompt {request.prompt!r} is none of {request.relation}'s training templates")
    template = templates[0]
    prompts: list[tuple[str, str, bool]] = [(request.prompt, "edit", False)]
    prompts += [
        (t.replace("{}", request.subject), "train_template", False) for t in rs.train_templates if t != template
    ]
    prompts += [(t.replace("{}", request.subject), "unseen_template", False) for t in rs.unseen_templates]
    subjects = [request.subject] * len(prompts)
    others = sorted(
        {s.subject: s for s in rs.trained if s.subject != request.subject}.values(), key=lambda s: s.subject
    )
    rng = random.Random(f"{seed}-{request.subject}")
    for s in rng.sample(others, min(n_neighbours, len(others))):
        prompts.append((template.replace("{}", s.subject), "same_relation", s.object != request.target_new))
        subjects.append(s.subject)
    for key in sorted(split.relations):
        if key == request.relation:
            continue
        for s in split.relations[key].trained:
            if s.subject == request.subject:
                prompts.append(
                    (split.relations[key].train_templates[0].replace("{}", s.subject), "same_subject", False)
                )
                break
    return ProbeSet(
        request=request,
        prompts=tuple(p for p, _, _ in prompts),
        kinds=tuple(k for _, k, _ in prompts),
        leak_eligible=tuple(e for _, _, e in prompts),
        subjects=tuple(subjects),
    )


def _pad(model: Any, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = models.tokenize(model, prompts)
    width = max(len(r) for r in ids)
    pad = model.tokenizer.pad_token_id
    device = models.model_device(model)
    tokens = torch.tensor([r + [pad] * (width - len(r)) for r in ids], device=device)
    return tokens, torch.tensor([len(r) - 1 for r in ids], device=device)


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


class EditEvaluator:
    """The probes of many requests, tokenised once, with the unedited model's answers.

    Args:
        model: the unedited model.
        probes: one :class:`ProbeSet` per request.
        batch_size: prompts per forward pass of the "before" run.
        layers: MLP layers whose original outputs on the edit prompts :meth:`location` may need. At these
            layers the streams entering the block are recorded too (probes and edit prompts), so that
            :meth:`evaluate` with ``edited_layer`` and :meth:`location` run only the blocks from the edit up
            (:func:`~kc_utils.models.logits_from_layer`): the same logits, since the blocks below are unedited.
    """

    def __init__(
        self,
        model: Any,
        probes: Sequence[ProbeSet],
        batch_size: int = 128,
        layers: Sequence[int] = (),
        progress: bool = False,
    ) -> None:
        self.model = model
        self.probes = list(probes)
        self.prepared: list[PreparedRequest] = [prepare_request(model, p.request) for p in self.probes]
        self.before: list[torch.Tensor] = []
        flat = [(i, p) for i, ps in enumerate(self.probes) for p in ps.prompts]
        tops: list[int] = []
        starts = range(0, len(flat), batch_size)
        for start in tqdm(starts, desc="answers before the edits", disable=not progress, leave=False):
            chunk = [p for _, p in flat[start : start + batch_size]]
            tokens, last = _pad(model, chunk)
            with torch.no_grad(), models.without_edge_hooks(model):
                tops += models.last_logits(model, tokens, last).argmax(-1).tolist()
        offset = 0
        for ps in self.probes:
            self.before.append(torch.tensor(tops[offset : offset + len(ps.prompts)]))
            offset += len(ps.prompts)
        self.original_mlp: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        # layer -> per request: the streams entering that block on the probes [n, p, d] and the edit prompt [p, d]
        self.entering: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {layer: [] for layer in layers}
        self.subject_positions = [subject_positions(model, p.request.prompt, p.request.subject) for p in self.probes]
        if layers:
            names = [models.mlp_out_hook(layer) for layer in layers]
            streams = [models.resid_pre_hook(layer) for layer in layers]
            for prepared, ps in zip(self.prepared, self.probes):
                tokens = torch.tensor([prepared.tokens], device=models.model_device(model))
                probe_tokens, _ = _pad(model, ps.prompts)
                with torch.no_grad(), models.without_edge_hooks(model):
                    cache = models.cache_activations(model, tokens, names + streams)
                    probe_cache = models.cache_activations(model, probe_tokens, streams)
                for layer, name, stream in zip(layers, names, streams):
                    self.original_mlp[layer].append(cache[name][0])
                    self.entering[layer].append((probe_cache[stream], cache[stream][0]))

    def __len__(self) -> int:
        return len(self.probes)

    def evaluate(self, index: int, edited_layer: int | None = None) -> dict[str, float]:
        """The six metrics of request ``index`` on the model as it is now (after its edit).

        Args:
            edited_layer: the one MLP layer the model's edit changed, if it is one of the evaluator's ``layers``:
                the probes' pass then resumes there from the recorded unedited streams (the same metrics).
        """
        ps, target = self.probes[index], self.prepared[index].target
        tokens, last = _pad(self.model, ps.prompts)
        with torch.no_grad(), models.without_edge_hooks(self.model):
            if edited_layer in self.entering:
                rows = torch.arange(len(tokens), device=tokens.device)
                entering = self.entering[edited_layer][index][0]
                final = models.logits_from_layer(self.model, edited_layer, entering, tokens, rows, last)
            else:
                final = models.last_logits(self.model, tokens, last)
        target_ids = torch.full((len(ps.prompts),), target, device=final.device)
        is_new = (rank_of(final, target_ids) == 0).cpu().tolist()
        after = final.argmax(-1).cpu()
        kept = (after == self.before[index]).tolist()
        was_new = (self.before[index] == target).tolist()

        def share(kind: str, values: list[bool]) -> float:
            return _mean([float(v) for v, k in zip(values, ps.kinds) if k == kind])

        eligible = [e for e in ps.leak_eligible]
        leak_after = _mean([float(v) for v, e in zip(is_new, eligible) if e])
        leak_before = _mean([float(v) for v, e in zip(was_new, eligible) if e])
        return {
            "reliability": share("edit", is_new),
            "generalisation": share("train_template", is_new),
            "generalisation_unseen": share("unseen_template", is_new),
            "locality_relation": share("same_relation", kept),
            "locality_subject": share("same_subject", kept),
            "leak": leak_after - leak_before,
        }

    def leaking_subjects(self, index: int) -> tuple[list[str], list[str]]:
        """The same-relation neighbours of request ``index`` (subjects, true object ≠ new object) whose top-1 is
        the new object on the model as it is now (after the edit), and those whose top-1 is not."""
        ps, target = self.probes[index], self.prepared[index].target
        chosen = [(s, p) for s, p, e in zip(ps.subjects, ps.prompts, ps.leak_eligible) if e]
        if not chosen:
            return [], []
        tokens, last = _pad(self.model, [p for _, p in chosen])
        with torch.no_grad(), models.without_edge_hooks(self.model):
            top = models.last_logits(self.model, tokens, last).argmax(-1).tolist()
        return [s for (s, _), t in zip(chosen, top) if t == target], [
            s for (s, _), t in zip(chosen, top) if t != target
        ]

    def location(self, index: int, layer: int) -> dict[str, float]:
        """Where the edit of request ``index`` at MLP ``layer`` acts (model as it is now, edited at ``layer`` alone:
        the pass resumes there from the unedited stream).

        Returns:
            ``p_new`` and ``new_top1`` with nothing restored, with the MLP's original output restored at the
            subject's positions (``*_subject_restored``), and at the last position (``*_last_restored``).
        """
        if layer not in self.original_mlp:
            raise EditError(f"layer {layer} was not cached: build the EditEvaluator with layers including {layer}")
        prepared = self.prepared[index]
        original = self.original_mlp[layer][index]
        subject = torch.tensor(self.subject_positions[index], device=original.device)
        last = len(prepared.tokens) - 1
        tokens = torch.tensor([prepared.tokens] * 3, device=models.model_device(self.model))

        def restore(out: torch.Tensor, hook: Any) -> torch.Tensor:
            out = out.clone()
            out[1, subject] = original[subject].to(out.dtype)
            out[2, last] = original[last].to(out.dtype)
            return out

        entering = self.entering[layer][index][1].expand(3, -1, -1)
        rows, lasts = torch.arange(3, device=tokens.device), torch.full((3,), last, device=tokens.device)
        with torch.no_grad(), models.without_edge_hooks(self.model):
            final = models.logits_from_layer(
                self.model, layer, entering, tokens, rows, lasts, [(models.mlp_out_hook(layer), restore)]
            )
        probs = final.float().softmax(-1)[:, prepared.target].cpu()
        top = (final.argmax(-1) == prepared.target).float().cpu()
        return {
            "p_new": float(probs[0]),
            "new_top1": float(top[0]),
            "p_new_subject_restored": float(probs[1]),
            "new_top1_subject_restored": float(top[1]),
            "p_new_last_restored": float(probs[2]),
            "new_top1_last_restored": float(top[2]),
        }
