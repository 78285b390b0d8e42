"""knowledge-circuits: find, evaluate and read knowledge circuits in transformers.

A thin library behind the numbered notebooks. The main entry points:

* :func:`kc_utils.models.load_model` — the shipped organism, a hub model or a local checkpoint,
  booted through TransformerLens 4's ``TransformerBridge``;
* :class:`kc_utils.circuits.graph.Graph` — the computation graph and circuit selection;
* :func:`kc_utils.attribute.attribute` — EAP, EAP-IG and exact edge scores;
* :mod:`kc_utils.circuits.evaluate` — circuits run with ablated edges, faithfulness, random baselines.
"""

from kc_utils.circuits.attribute import attribute
from kc_utils.circuits.evaluate import evaluate_circuit, faithfulness, faithfulness_curve, random_circuit
from kc_utils.circuits.graph import CircuitError, Graph
from kc_utils.data.prompts import PromptBatch, PromptError, make_batch
from kc_utils.models import ModelLoadError, load_model

__all__ = [
    "attribute",
    "PromptBatch",
    "PromptError",
    "make_batch",
    "evaluate_circuit",
    "faithfulness",
    "faithfulness_curve",
    "random_circuit",
    "CircuitError",
    "Graph",
    "ModelLoadError",
    "load_model",
]
__version__ = "0.1.0"
