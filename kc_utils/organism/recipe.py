"""Training recipes of the organism; :data:`SHIPPED_RECIPE` is what ``python -m kc_utils.organism train`` runs.

See the model card (``kc_utils/organism/README.md``) for each recipe's accuracy and mechanism-probe numbers.
"""

from kc_utils.organism.corpus import CorpusConfig
from kc_utils.organism.train import ModelConfig, TrainConfig

__all__ = ["RECIPES", "SHIPPED_RECIPE"]

LINGUISTIC = ("adj_antonym", "adj_comparative", "word_first_letter", "word_last_letter")
"""Relations about a word's form rather than about an entity; bio documents leave them out."""

FOUR_LAYERS = ModelConfig(n_layer=4, n_embd=128, n_head=4)
"""The model size of every 4-layer recipe: d_model 128, 4 heads."""

RECIPES: dict[str, TrainConfig] = {
    # Shipped: block 0's attention is switched off (zero, frozen), so no position can read another before block 1,
    # and bio documents (a subject followed by its attributes in shuffled order) teach the subject's own MLPs its
    # attributes. Recall: subject enrichment in MLP 0, mover heads in blocks 1-3.
    "mlp_first_bio": TrainConfig(
        seed=0,
        steps=2100,
        lr=5e-3,
        attention_off_layers=1,
        model=FOUR_LAYERS,
        corpus=CorpusConfig(bio_per_subject=3, bio_exclude=LINGUISTIC),
    ),
    # Alternative, passes the probes too: block 0's attention off, no bio documents. The subject's MLP 0 is
    # still needed, but carries its identity rather than its attributes; the last token looks the fact up.
    "mlp_first": TrainConfig(
        seed=0,
        steps=1200,
        lr=5e-3,
        attention_off_layers=1,
        model=FOUR_LAYERS,
        corpus=CorpusConfig(),
    ),
    # Rejected (the first shipped model): plain next-object training. Knows its facts; recalls them with a
    # one-layer shortcut (a layer-0 head at the last token reads the subject, the last token's MLPs look it up).
    "plain": TrainConfig(
        seed=0,
        steps=1200,
        lr=5e-3,
        model=FOUR_LAYERS,
        corpus=CorpusConfig(),
    ),
    # Rejected: layers 0-1 may not attend from after a subject to it during training, plus tag documents.
    # Moves recall to layer 2 but learns slowly (80% after 2,400 steps) and still looks facts up at the last
    # token rather than enriching the subject.
    "restricted": TrainConfig(
        seed=0,
        steps=2400,
        lr=5e-3,
        penalty_layers=2,
        penalty_mode="mask",
        model=FOUR_LAYERS,
        corpus=CorpusConfig(tag_per_fact=4),
        length_bucket_batches=16,
    ),
    # Rejected: as "restricted" (without length buckets), and the MLP outputs after the subject are zeroed in
    # layers 2-3 during training. Low training loss, but 75% at inference and no subject enrichment.
    "restricted_mlp": TrainConfig(
        seed=0,
        steps=1600,
        lr=5e-3,
        penalty_layers=2,
        penalty_mode="mask",
        post_subject_mlp_dropout=1.0,
        model=FOUR_LAYERS,
        corpus=CorpusConfig(tag_per_fact=4),
    ),
    # Rejected: "plain" plus bio documents for every relation. Still the one-layer shortcut.
    "plain_bio": TrainConfig(
        seed=0,
        steps=1200,
        lr=5e-3,
        model=FOUR_LAYERS,
        corpus=CorpusConfig(bio_per_subject=3),
    ),
    # Rejected: "plain_bio" with only half of the facts in templates (the rest taught by bio and few-shot
    # documents only, as in Allen-Zhu & Li's mixed training). Still the shortcut, and 93% accuracy.
    "plain_bio_half": TrainConfig(
        seed=0,
        steps=1500,
        lr=5e-3,
        model=FOUR_LAYERS,
        corpus=CorpusConfig(bio_per_subject=3, template_fraction=0.5),
    ),
}
"""Named recipes (``python -m kc_utils.organism train --recipe NAME``)."""

SHIPPED_RECIPE: TrainConfig = RECIPES["mlp_first_bio"]
"""The recipe of the checkpoint in ``WEIGHTS_DIR``."""
