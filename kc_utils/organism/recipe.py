"""Training recipes of the organism; :data:`SHIPPED_RECIPE` is what ``python -m kc_utils.organism train`` runs.

See the model card (``kc_utils/organism/README.md``) for each recipe's accuracy and mechanism-probe numbers.
"""

from kc_utils.organism.corpus import CorpusConfig
from kc_utils.organism.train import ModelConfig, TrainConfig

__all__ = ["RECIPES", "SHIPPED_RECIPE"]

RECIPES: dict[str, TrainConfig] = {
    # Shipped: plain next-object training. Knows its facts; recalls them with a one-layer shortcut.
    "plain": TrainConfig(
        seed=0,
        steps=1200,
        lr=5e-3,
        model=ModelConfig(n_layer=4, n_embd=128, n_head=4),
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
        model=ModelConfig(n_layer=4, n_embd=128, n_head=4),
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
        model=ModelConfig(n_layer=4, n_embd=128, n_head=4),
        corpus=CorpusConfig(tag_per_fact=4),
    ),
}
"""Named recipes (``python -m kc_utils.organism train --recipe NAME``)."""

SHIPPED_RECIPE: TrainConfig = RECIPES["plain"]
"""The recipe of the checkpoint in ``WEIGHTS_DIR``."""
