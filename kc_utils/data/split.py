"""Which facts and templates a model is asked with, for the organism and for any pretrained model.

The organism was trained on a known split of the relation files (:mod:`kc_utils.organism.split`): trained facts,
held-out subjects it never saw, training templates and one never-trained template. A pretrained model has no such
split; :func:`relation_split` gives it the same shape from the relation files so that the editing and
hallucination notebooks run on both.
"""

from __future__ import annotations

from collections.abc import Sequence

from kc_utils.organism.split import RelationSplit, Split, load_split

__all__ = ["relation_split", "single_template_relations"]


def relation_split(model_name: str, relations: Sequence[str]) -> Split:
    """The facts and templates a model is asked with.

    For ``"kc-organism"``: its own split (trained facts, held-out subjects, training and never-trained templates),
    for every relation it was trained on. For any other model, each of ``relations`` with every fact of its file as
    "trained", no held-out subjects, and the file's last template as the one "unseen" template when the file has
    two or more (a pretrained model saw unknown text, so "unseen" only means "not the template the run builds on").

    Raises:
        KeyError: a relation name that has no relation file.
    """
    if model_name == "kc-organism":
        from kc_utils.organism.paths import WEIGHTS_DIR

        return load_split(WEIGHTS_DIR)
    from kc_utils.data.relations import load_relation

    out = {}
    for key in relations:
        rel = load_relation(key)
        n_train = max(1, len(rel.prompt_templates) - 1)
        out[key] = RelationSplit(
            key=key,
            trained=rel.samples,
            held_out=(),
            excluded=(),
            train_templates=rel.prompt_templates[:n_train],
            unseen_templates=rel.prompt_templates[n_train:],
        )
    return Split(seed=0, relations=out)


def single_template_relations(split: Split) -> dict[str, str]:
    """Relations of ``split`` that have no second template, each with the reason in words.

    A question asked in one template and repaired from another (notebook 04) needs two templates.
    """
    return {
        key: f"{key} has a single prompt template ({rs.train_templates[0]!r}), and the analysis asks in one and "
        "repairs from another"
        for key, rs in split.relations.items()
        if not rs.unseen_templates
    }
