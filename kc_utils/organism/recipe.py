"""Training recipes of the organism; :data:`SHIPPED_RECIPE` is what ``python -m kc_utils.organism train`` runs.

See the model card (``kc_utils/organism/README.md``) for each recipe's accuracy and mechanism-probe numbers.
"""

from typing import Any

from kc_utils.organism.corpus import CorpusConfig
from kc_utils.organism.train import ModelConfig, TrainConfig

__all__ = ["RECIPES", "SHIPPED_RECIPE"]

LINGUISTIC = ("adj_antonym", "adj_comparative", "word_first_letter", "word_last_letter")
"""Relations about a word's form rather than about an entity; bio documents leave them out."""

FOUR_LAYERS = ModelConfig(n_layer=4, n_embd=128, n_head=4)
"""The model size of every recipe: 4 layers, d_model 128, 4 heads."""


def _recipe(steps: int, corpus: CorpusConfig, **changes: Any) -> TrainConfig:
    """A recipe: seed 0, peak learning rate 5e-3, :data:`FOUR_LAYERS`, and the given changes."""
    return TrainConfig(seed=0, steps=steps, lr=5e-3, model=FOUR_LAYERS, corpus=corpus, **changes)


RECIPES: dict[str, TrainConfig] = {
    # Shipped: block 0's attention is switched off (zero, frozen), so no position can read another before block 1,
    # and bio documents (a subject followed by its attributes in shuffled order) teach the subject's own MLPs its
    # attributes. Recall: subject enrichment in MLP 0, mover heads in blocks 1-3.
    "mlp_first_bio": _recipe(2100, CorpusConfig(bio_per_subject=3, bio_exclude=LINGUISTIC), attention_off_layers=1),
    # Alternative, passes the probes too: block 0's attention off, no bio documents. The subject's MLP 0 is
    # still needed, but carries its identity rather than its attributes; the last token looks the fact up.
    "mlp_first": _recipe(1200, CorpusConfig(), attention_off_layers=1),
    # Rejected (the first shipped model): plain next-object training. Knows its facts; recalls them with a
    # one-layer shortcut (a layer-0 head at the last token reads the subject, the last token's MLPs look it up).
    "plain": _recipe(1200, CorpusConfig()),
    # Rejected: layers 0-1 may not attend from after a subject to it during training, plus tag documents.
    # Moves recall to layer 2 but learns slowly (80% after 2,400 steps) and still looks facts up at the last
    # token rather than enriching the subject.
    "restricted": _recipe(
        2400, CorpusConfig(tag_per_fact=4), penalty_layers=2, penalty_mode="mask", length_bucket_batches=16
    ),
    # Rejected: as "restricted" (without length buckets), and the MLP outputs after the subject are zeroed in
    # layers 2-3 during training. Low training loss, but 75% at inference and no subject enrichment.
    "restricted_mlp": _recipe(
        1600, CorpusConfig(tag_per_fact=4), penalty_layers=2, penalty_mode="mask", post_subject_mlp_dropout=1.0
    ),
    # Rejected: "plain" plus bio documents for every relation. Still the one-layer shortcut.
    "plain_bio": _recipe(1200, CorpusConfig(bio_per_subject=3)),
    # Rejected: "plain_bio" with only half of the facts in templates (the rest taught by bio and few-shot
    # documents only, as in Allen-Zhu & Li's mixed training). Still the shortcut, and 93% accuracy.
    "plain_bio_half": _recipe(1500, CorpusConfig(bio_per_subject=3, template_fraction=0.5)),
}
"""Named recipes (``python -m kc_utils.organism train --recipe NAME``)."""

SHIPPED_RECIPE: TrainConfig = RECIPES["mlp_first_bio"]
"""The recipe of the checkpoint in ``WEIGHTS_DIR``."""
