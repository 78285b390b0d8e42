"""Each numbered notebook's knobs, declared once (:class:`kc_utils.notebook.NotebookSpec`), one module per notebook.

A knob is declared once, with its default, its check and what it means; from that one declaration

* the notebook's ``parameters`` cell is written (``tests/test_notebook_specs.py`` holds each cell to
  :meth:`~kc_utils.notebook.NotebookSpec.parameters_cell`; papermill and ``kc_utils.sweep`` still read the cell);
* one call, ``SPEC.check(globals())``, validates every knob before anything expensive;
* the Checks cell asks ``SPEC.changed(globals())`` whether this is the run it records.

=========================  ===================================================
module                     notebook
=========================  ===================================================
``knowledge_circuits``     ``01_knowledge_circuits`` (Table 1)
``head_roles``             ``02_head_roles``
``knowledge_editing``      ``03_knowledge_editing``
``hallucination``          ``04_hallucination``
``in_context_learning``    ``05_in_context_learning`` (Table 2)
``query_localization``     ``06_query_localization``
``multi_hop``              ``07_multi_hop``
``common``                 what they share: ``model_name``, ``device``, ``out_dir``, ``publish``; shared checks
=========================  ===================================================
"""

from __future__ import annotations

from kc_utils.notebook import NotebookSpec
from kc_utils.notebook_specs.hallucination import HALLUCINATION
from kc_utils.notebook_specs.head_roles import HEAD_ROLES
from kc_utils.notebook_specs.in_context_learning import IN_CONTEXT_LEARNING
from kc_utils.notebook_specs.knowledge_circuits import KNOWLEDGE_CIRCUITS
from kc_utils.notebook_specs.knowledge_editing import KNOWLEDGE_EDITING
from kc_utils.notebook_specs.multi_hop import MULTI_HOP
from kc_utils.notebook_specs.query_localization import QUERY_LOCALIZATION

__all__ = ["SPECS"]

#: ``{notebook: its spec}``, e.g. ``SPECS["04_hallucination"]``.
SPECS: dict[str, NotebookSpec] = {
    spec.notebook: spec
    for spec in (
        KNOWLEDGE_CIRCUITS,
        HEAD_ROLES,
        KNOWLEDGE_EDITING,
        HALLUCINATION,
        IN_CONTEXT_LEARNING,
        QUERY_LOCALIZATION,
        MULTI_HOP,
    )
}
