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
* :mod:`kc_utils.notebook_specs` — each notebook's knobs, declared once (default, check, meaning);
* :mod:`kc_utils.find` — the front door: :func:`find_circuit` for a relation or facts you type.

The shortest path, from facts to a circuit, its table and a file others read::

    from kc_utils import Relation, find_circuit, load_model

    model = load_model("kc-organism")
    rel = Relation.from_facts([("Apple", "Cupertino"), ...], "{} has its headquarters in", name="hq")
    found = find_circuit(model, rel)
    found.table()
    found.to_eap_ig_json("hq.json")

:func:`circuit_explorer` (the widget) loads the plotting stack on first use.
"""

from typing import Any

from kc_utils.circuits.acdc import acdc
from kc_utils.circuits.attribute import attribute
from kc_utils.circuits.eap_ig import from_eap_ig_json, to_eap_ig_json
from kc_utils.circuits.evaluate import evaluate_circuit, faithfulness, random_circuit
from kc_utils.circuits.graph import CircuitError, Graph
from kc_utils.circuits.relation import RelationCircuit, find_relation_circuit
from kc_utils.data.facts import DefaultChoiceWarning, build_circuit_dataset
from kc_utils.data.prompts import PromptBatch, PromptError, make_batch
from kc_utils.data.relations import Relation, RelationFileError, load_relation
from kc_utils.find import FoundCircuit, find_circuit
from kc_utils.models import ModelLoadError, load_model
from kc_utils.version import __version__

__all__ = [
    "Relation",
    "find_circuit",
    "FoundCircuit",
    "load_model",
    "DefaultChoiceWarning",
    "RelationFileError",
    "load_relation",
    "build_circuit_dataset",
    "find_relation_circuit",
    "RelationCircuit",
    "circuit_explorer",
    "to_eap_ig_json",
    "from_eap_ig_json",
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
    "__version__",
]


def __getattr__(name: str) -> Any:
    """``kc_utils.circuit_explorer``, imported on first use (it needs plotly and ipywidgets)."""
    if name == "circuit_explorer":
        from kc_utils.viz.circuits import circuit_explorer

        return circuit_explorer
    raise AttributeError(f"module 'kc_utils' has no attribute {name!r}")
