"""Few-shot prompts: k demonstrations of other facts of the same relation before the query.

Yao et al. (2024, §6) put a demonstration in front of the query ("The comparative form of small is
smaller. ...") and ask which heads join the knowledge circuit. This module builds such prompts and
records where every demonstration sits in the token sequence, so that attention to it can be read.

Two formats (:data:`FORMATS`):

* ``"arrow"`` — ``s1 -> o1 ; s2 -> o2 ; query ->``: exactly the few-shot documents the organism
  was trained on (:func:`kc_utils.organism.corpus.fewshot_segments`); with ``k = 0`` the prompt is
  ``query ->``.
* ``"sentence"`` — the relation's template written out for every demonstration and ended by a
  period, then the query in the same template: ``The capital of France is Paris . The capital of
  Japan is`` (the paper's layout). With ``k = 0`` it is the plain template prompt. The organism
  saw each template with one fact per document only; several sentences in a row are new to it.

Recipe for each query fact (deterministic in ``seed`` and the query's subject, so the same query
gets the same demonstrations and the same corrupt subject whatever the other queries are):

1. **Corrupt subject**: another fact of the pool whose prompt (with the same demonstrations) has
   the same number of tokens and whose answer starts with another token; ``None`` if none fits
   (patch ablation then falls back to the mean for that example, as in :mod:`kc_utils.data.facts`).
2. **Demonstrations**: ``k`` other facts of the pool, drawn without the query and, when the pool
   allows it, without the corrupt subject (so the corrupt answer is never shown in context).
3. **Spans**: the token range ``[start, end)`` of every demonstration (subject, arrow or template
   words, object), of each demonstration's object, of the query's subject and of the whole query,
   in the model's token positions (BOS included). They are found by tokenising prefixes of the
   prompt, which is exact for any tokenizer that does not merge across the spaces between parts
   (checked; a tokenizer that does raises :class:`~kc_utils.data.prompts.PromptError`).
4. **Shuffled twin**: the same prompt with the demonstrations' objects permuted so that no
   demonstration keeps its own object (with one demonstration: the object of another fact of the
   pool); the query and its answer are unchanged. It tests whether the *content* of the
   demonstrations matters or only their form.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kc_utils.data.prompts import PromptBatch, PromptError, make_batch
from kc_utils.data.relations import Sample
from kc_utils.models import continuation_first_token, tokenize

__all__ = [
    "FORMATS",
    "ARROW",
    "SEPARATOR",
    "SENTENCE_END",
    "FewShotPrompt",
    "CORRUPTIONS",
    "build_fewshot_prompts",
    "fewshot_batch",
    "shuffled_batch",
    "render_fewshot",
    "check_format",
]

#: The prompt formats: the organism's trained few-shot format, and the paper's sentences.
FORMATS = ("arrow", "sentence")
#: Between a subject and its object in the arrow format (as in the organism's corpus).
ARROW = "->"
#: Between two demonstrations in the arrow format.
SEPARATOR = ";"
#: After each demonstration sentence in the sentence format.
SENTENCE_END = "."

Span = tuple[int, int]


@dataclass(frozen=True)
class FewShotPrompt:
    """One query with ``k`` demonstrations, its token spans and its two corrupted twins.

    Attributes:
        subject, object: the query fact.
        demos: the demonstrations, in prompt order.
        prompt: the prompt text (the answer follows after a space).
        fmt: ``"arrow"`` or ``"sentence"``.
        demo_spans: ``[start, end)`` token positions of each whole demonstration (BOS is position 0;
            separators between demonstrations belong to none).
        demo_object_spans: ``[start, end)`` of each demonstration's object.
        query_subject_span: ``[start, end)`` of the query's subject.
        query_span: ``[start, end)`` of the whole query (subject to the last token).
        corrupt_subject, corrupt_object, corrupt_prompt: the twin with another query subject of the
            same token length and the same demonstrations (``None`` when no subject fits; the
            object is then still a counterfactual answer for the logit difference).
        shuffled_demos, shuffled_prompt: the twin whose demonstrations carry wrong objects
            (``None`` with ``k = 0``, or when it changes the token length).
        relation: the relation's key (as given to :func:`build_fewshot_prompts`).
        both_prompt: the shuffled demonstrations *and* the corrupt subject (``k = 0``: the corrupt
            prompt itself, so zero-shot and k-shot circuits found with it stay comparable; ``None``
            when either twin is missing).
    """

    subject: str
    object: str
    demos: tuple[Sample, ...]
    prompt: str
    fmt: str
    demo_spans: tuple[Span, ...]
    demo_object_spans: tuple[Span, ...]
    query_subject_span: Span
    query_span: Span
    corrupt_subject: str | None
    corrupt_object: str
    corrupt_prompt: str | None
    shuffled_demos: tuple[Sample, ...] | None
    shuffled_prompt: str | None
    both_prompt: str | None
    relation: str = ""

    @property
    def k(self) -> int:
        """Number of demonstrations."""
        return len(self.demos)

    @property
    def n_tokens(self) -> int:
        """Tokens of the prompt, BOS included (the query ends at the last one)."""
        return self.query_span[1]


def check_format(fmt: str) -> str:
    """``fmt`` if it is one of :data:`FORMATS`.

    Raises:
        ValueError: naming the format and the choices.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown prompt format {fmt!r}; use one of {list(FORMATS)}")
    return fmt


def _parts(demos: Sequence[Sample], subject: str, fmt: str, template: str | None) -> list[tuple[str, str]]:
    """The prompt as ``(text, role)`` pieces joined by single spaces.

    Roles: ``demo_subject``, ``demo_link`` (arrow or template words), ``demo_object``, ``separator``,
    ``query_before`` (template words before the subject), ``query_subject``, ``query_after``.
    """
    parts: list[tuple[str, str]] = []
    if fmt == "arrow":
        for i, d in enumerate(demos):
            if i:
                parts.append((SEPARATOR, "separator"))
            parts += [(d.subject, "demo_subject"), (ARROW, "demo_link"), (d.object, "demo_object")]
        if demos:
            parts.append((SEPARATOR, "separator"))
        parts += [(subject, "query_subject"), (ARROW, "query_after")]
        return parts
    if template is None or template.count("{}") != 1:
        raise ValueError(f"the sentence format needs a template with one '{{}}', got {template!r}")
    before, after = (t.strip() for t in template.split("{}"))
    for d in demos:
        parts += [(before, "demo_before"), (d.subject, "demo_subject"), (after, "demo_link")]
        parts += [(d.object, "demo_object"), (SENTENCE_END, "separator")]
    parts += [(before, "query_before"), (subject, "query_subject"), (after, "query_after")]
    return [(text, role) for text, role in parts if text]


def render_fewshot(demos: Sequence[Sample], subject: str, fmt: str = "arrow", template: str | None = None) -> str:
    """The prompt text for ``subject`` after ``demos`` (no answer).

    >>> render_fewshot([Sample("Japan", "Tokyo")], "France")
    'Japan -> Tokyo ; France ->'
    """
    check_format(fmt)
    return " ".join(text for text, _ in _parts(demos, subject, fmt, template))


def _spans(model: Any, demos: Sequence[Sample], subject: str, fmt: str, template: str | None) -> dict[str, Any]:
    """Token spans of the pieces of :func:`_parts`, from the token counts of the prompt's prefixes."""
    parts = _parts(demos, subject, fmt, template)
    full = tokenize(model, [" ".join(text for text, _ in parts)])[0]
    bounds = [len(tokenize(model, [""])[0])]
    for i in range(1, len(parts) + 1):
        prefix = tokenize(model, [" ".join(text for text, _ in parts[:i])])[0]
        if full[: len(prefix)] != prefix:
            raise PromptError(
                f"the tokenizer merges tokens across the pieces of {' '.join(t for t, _ in parts)!r}, so demonstration "
                "spans cannot be located; use a tokenizer that splits at spaces (GPT-2 BPE, word level)"
            )
        bounds.append(len(prefix))
    roles = [role for _, role in parts]
    demo_spans, object_spans, start = [], [], None
    for i, role in enumerate(roles):
        if role in ("demo_before", "demo_subject") and start is None:
            start = bounds[i]
        if role == "demo_object":
            object_spans.append((bounds[i], bounds[i + 1]))
            demo_spans.append((start, bounds[i + 1]))
            start = None
    first_query = min(i for i, r in enumerate(roles) if r.startswith("query"))
    subject_index = roles.index("query_subject")
    return {
        "n_tokens": len(full),
        "demo_spans": tuple(demo_spans),
        "demo_object_spans": tuple(object_spans),
        "query_subject_span": (bounds[subject_index], bounds[subject_index + 1]),
        "query_span": (bounds[first_query], len(full)),
    }


def _shuffled(demos: Sequence[Sample], pool: Sequence[Sample], rng: random.Random) -> tuple[Sample, ...] | None:
    """The demonstrations with wrong objects: a derangement of their objects (one demo: another fact's)."""
    if not demos:
        return None
    objects = [d.object for d in demos]
    if len(set(objects)) > 1:
        for _ in range(100):
            order = rng.sample(range(len(demos)), len(demos))
            if all(objects[j] != objects[i] for i, j in enumerate(order)):
                return tuple(Sample(d.subject, objects[j]) for d, j in zip(demos, order))
    others = sorted({s.object for s in pool} - set(objects))
    if not others:
        return None
    return tuple(Sample(d.subject, rng.choice(others)) for d in demos)


def build_fewshot_prompts(
    model: Any,
    queries: Sequence[Sample],
    k: int,
    fmt: str = "arrow",
    template: str | None = None,
    pool: Sequence[Sample] | None = None,
    seed: int = 0,
    relation: str = "",
) -> list[FewShotPrompt]:
    """One :class:`FewShotPrompt` per query fact, with ``k`` demonstrations drawn from ``pool``.

    Args:
        queries: the facts asked about.
        k: demonstrations per prompt (0 = zero-shot: ``query ->`` or the plain template prompt).
        fmt: ``"arrow"`` or ``"sentence"``.
        template: the relation's template (``"The capital of {} is"``); needed for ``"sentence"``.
        pool: facts the demonstrations and corrupt subjects come from (default: ``queries``).
        seed: seed of every random choice (combined with each query's subject).
        relation: the relation's key, kept in each prompt and named in error messages.

    Raises:
        ValueError: an unknown format, ``k < 0``, or ``k`` larger than the pool allows (the query
            itself is never a demonstration).
        PromptError: a tokenizer that merges across the prompt's pieces.
    """
    check_format(fmt)
    name = relation or "the relation"
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k (demonstrations per prompt) must be a whole number >= 0, got {k!r}")
    pool = list(dict.fromkeys(pool if pool is not None else queries))
    if k > len(pool) - 1:
        raise ValueError(
            f"k={k} demonstrations need at least {k + 1} facts of {name} (the query and {k} others), "
            f"but it has {len(pool)}; use k <= {max(len(pool) - 1, 0)}"
        )
    if fmt == "sentence" and template is None:
        raise ValueError("the sentence format needs the relation's template, e.g. template='The capital of {} is'")
    first_token = {s.object: continuation_first_token(model, "", s.object) for s in [*pool, *queries]}
    # the query alone (no demonstrations): subjects with as many tokens give prompts of one length
    query_length = {
        s.subject: len(tokenize(model, [render_fewshot([], s.subject, fmt, template)])[0]) for s in [*pool, *queries]
    }
    out = []
    for query in queries:
        rng = random.Random(f"{seed}-{query.subject}")
        others = [s for s in pool if s.subject != query.subject]
        if len(others) < k:
            raise ValueError(
                f"k={k} demonstrations for {query.subject!r} need {k} other facts of {name}; "
                f"only {len(others)} are left; use k <= {len(others)}"
            )
        counterfactual = [s for s in others if first_token[s.object] != first_token[query.object]]
        if not counterfactual:
            raise PromptError(f"{name}: every fact shares the answer of {query.subject!r}; no counterfactual exists")
        rng.shuffle(counterfactual)
        same_length = [s for s in counterfactual if query_length[s.subject] == query_length[query.subject]]
        twin = same_length[0] if same_length else counterfactual[0]
        demo_pool = [s for s in others if s.subject != twin.subject]
        demos = tuple(rng.sample(demo_pool if len(demo_pool) >= k else others, k))
        spans = _spans(model, demos, query.subject, fmt, template)
        corrupt = twin if same_length else None
        if corrupt is not None:
            text = render_fewshot(demos, corrupt.subject, fmt, template)
            if len(tokenize(model, [text])[0]) != spans["n_tokens"]:
                corrupt = None
        shuffled = _shuffled(demos, pool, rng)
        shuffled_prompt = None if shuffled is None else render_fewshot(shuffled, query.subject, fmt, template)
        if shuffled_prompt is not None and len(tokenize(model, [shuffled_prompt])[0]) != spans["n_tokens"]:
            shuffled, shuffled_prompt = None, None
        both_prompt = None
        if corrupt is not None and k == 0:
            both_prompt = render_fewshot(demos, corrupt.subject, fmt, template)
        elif corrupt is not None and shuffled is not None:
            both_prompt = render_fewshot(shuffled, corrupt.subject, fmt, template)
            if len(tokenize(model, [both_prompt])[0]) != spans["n_tokens"]:
                both_prompt = None
        out.append(
            FewShotPrompt(
                subject=query.subject,
                object=query.object,
                demos=demos,
                prompt=render_fewshot(demos, query.subject, fmt, template),
                fmt=fmt,
                demo_spans=spans["demo_spans"],
                demo_object_spans=spans["demo_object_spans"],
                query_subject_span=spans["query_subject_span"],
                query_span=spans["query_span"],
                corrupt_subject=None if corrupt is None else corrupt.subject,
                corrupt_object=twin.object,
                corrupt_prompt=None if corrupt is None else render_fewshot(demos, corrupt.subject, fmt, template),
                shuffled_demos=shuffled,
                shuffled_prompt=shuffled_prompt,
                both_prompt=both_prompt,
                relation=relation,
            )
        )
    return out


#: The corrupted twins :func:`fewshot_batch` can pair with the prompts (see :class:`FewShotPrompt`).
CORRUPTIONS = ("subject", "shuffled", "both")


def fewshot_batch(model: Any, prompts: Sequence[FewShotPrompt], corruption: str | None = "subject") -> PromptBatch:
    """A :class:`PromptBatch` of few-shot prompts and one kind of corrupted twin.

    Args:
        corruption: ``"subject"`` (another query subject, same demonstrations; its answer is the
            corrupt answer), ``"shuffled"`` (the demonstrations' objects shuffled, same query: the
            corrupt answer is the clean one, so use a metric such as ``"logprob"``, not the logit
            difference), ``"both"`` (shuffled demonstrations and another query subject; with
            ``k = 0`` the same as ``"subject"``), or ``None`` (clean prompts only). A prompt
            without that twin gets ``None`` (mean ablation for it under patching).

    Raises:
        ValueError: an unknown corruption.
        PromptError: no prompts.
    """
    if corruption not in (*CORRUPTIONS, None):
        raise ValueError(f"unknown corruption {corruption!r}; use one of {list(CORRUPTIONS)} or None")
    if not prompts:
        raise PromptError("no few-shot prompts given")
    answers = [p.object for p in prompts]
    if corruption is None:
        return make_batch(model, [p.prompt for p in prompts], answers)
    if corruption == "shuffled":
        twins, twin_answers = [p.shuffled_prompt for p in prompts], answers
    else:
        twins = [p.corrupt_prompt if corruption == "subject" else p.both_prompt for p in prompts]
        twin_answers = [p.corrupt_object for p in prompts]
    return make_batch(model, [p.prompt for p in prompts], answers, twins, twin_answers)


def shuffled_batch(model: Any, prompts: Sequence[FewShotPrompt]) -> PromptBatch:
    """The shuffled twins as the prompts (answers unchanged): accuracy when the demonstrations are wrong.

    Raises:
        ValueError: a prompt without a shuffled twin (k = 0, or shuffling changed its token length).
    """
    missing = [p.subject for p in prompts if p.shuffled_prompt is None]
    if missing:
        raise ValueError(
            f"{len(missing)} prompts have no shuffled twin (k = 0, or shuffling changed the token length), "
            f"e.g. {missing[0]!r}; keep only prompts with p.shuffled_prompt"
        )
    return make_batch(model, [p.shuffled_prompt for p in prompts], [p.object for p in prompts])
