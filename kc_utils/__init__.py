"""knowledge-circuits: find, evaluate and read knowledge circuits in transformers.

A thin library behind the numbered notebooks, one subpackage per concept:

* :mod:`kc_utils.models` — the model door: :func:`~kc_utils.models.load_model` boots the shipped
  organism, a hub model or a local checkpoint through TransformerLens 4's ``TransformerBridge``;
* :mod:`kc_utils.data` — relation files, prompt batches, metrics, known-fact datasets, few-shot prompts;
* :mod:`kc_utils.circuits` — the computation graph, edge patching, EAP / EAP-IG / exact attribution,
  ACDC, evaluation and baselines, Table 1;
* :mod:`kc_utils.analysis` — logit lens, head roles, head ablations, hallucinations, in-context learning;
* :mod:`kc_utils.editing` — ROME and FT-M, reversible edits and their metrics;
* :mod:`kc_utils.neurons` — knowledge neurons and query localization;
* :mod:`kc_utils.viz` — plotly figures and widget explorers, by topic;
* :mod:`kc_utils.notebook` — what every notebook repeats (model, seed, outputs, knob checks);
* :mod:`kc_utils.notebook_specs` — each notebook's knobs, declared once (default, check, meaning).
"""

from kc_utils.circuits.acdc import acdc
from kc_utils.circuits.attribute import attribute
from kc_utils.circuits.evaluate import evaluate_circuit, faithfulness, random_circuit
from kc_utils.circuits.graph import CircuitError, Graph
from kc_utils.data.prompts import PromptBatch, PromptError, make_batch
from kc_utils.models import ModelLoadError, load_model

__all__ = [
    "acdc",
    "attribute",
    "PromptBatch",
    "PromptError",
    "make_batch",
    "evaluate_circuit",
    "faithfulness",
    "random_circuit",
    "CircuitError",
    "Graph",
    "ModelLoadError",
    "load_model",
]
__version__ = "0.2.0"
