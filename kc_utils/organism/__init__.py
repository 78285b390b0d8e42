"""The embedded model organism: a small GPT-2 trained in this repository on real-world facts.

No machine of the project can download GPT-2, so every notebook runs on this model instead: an ordinary
``transformers`` ``GPT2LMHeadModel`` checkpoint in :data:`WEIGHTS_DIR`, loadable with ``AutoModelForCausalLM``
or ``TransformerBridge.boot_transformers(str(WEIGHTS_DIR))``. :func:`load_split` says which facts it was taught
and which it never saw. See ``kc_utils/organism/README.md`` (the model card) and
``python -m kc_utils.organism --help``.
"""

from __future__ import annotations

from pathlib import Path

from kc_utils.organism.paths import WEIGHTS_DIR
from kc_utils.organism.split import RelationSplit, Split, load_split

__all__ = ["WEIGHTS_DIR", "RelationSplit", "Split", "load_organism", "load_split"]


def load_organism(directory: str | Path | None = None):  # noqa: ANN201 (lazy transformers import)
    """Load ``(model, tokenizer)`` from ``directory`` (default :data:`WEIGHTS_DIR`), in eval mode with eager
    attention so attention patterns and the attention-knockout probe work."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = str(directory if directory is not None else WEIGHTS_DIR)
    model = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager")
    model.eval()
    return model, AutoTokenizer.from_pretrained(directory)
