"""What the notebooks' specs share: the knobs that say where a run goes, and checks several notebooks use."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kc_utils.circuits.budget import check_fixed_budget
from kc_utils.data.relations import list_relations
from kc_utils.notebook import ANY, Knob

__all__ = ["MODEL_NAME", "fixed_budget", "output_knobs", "relation_names"]

#: The first knob of every notebook: any model :func:`kc_utils.models.load_model` boots.
MODEL_NAME = Knob(
    "model_name",
    "kc-organism",
    None,
    "kc-organism (shipped, offline), smollm2-135m (real, offline), gpt2-medium, a hub id, a local checkpoint folder "
    "or a .gguf file",
)


def output_knobs(notebook: str) -> tuple[Knob, Knob, Knob]:
    """``device``, ``out_dir`` and ``publish``, the last knobs of every notebook; none changes what its Checks
    record (:func:`kc_utils.notebook.start` reads them)."""
    return (
        Knob("device", "auto", None, "auto (CUDA, then MPS, then CPU), cpu, cuda or mps", recorded=ANY),
        Knob(
            "out_dir",
            None,
            None,
            f"None: runs/{notebook}/ (or figures/ when publish); else a folder for every output",
            recorded=ANY,
        ),
        Knob(
            "publish",
            False,
            None,
            "True only from make publish: refresh the versioned tables in figures/",
            recorded=ANY,
        ),
    )


def fixed_budget(value: Any, name: str, knobs: Mapping[str, Any]) -> None:
    """An edge budget without a knee: :func:`kc_utils.circuits.budget.check_fixed_budget`."""
    check_fixed_budget(value)


def relation_names(knobs: Mapping[str, Any]) -> list[str]:
    """Every relation file's name (the choices of a ``relation`` knob)."""
    return list_relations()
