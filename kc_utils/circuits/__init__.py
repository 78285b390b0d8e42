"""Circuits: the computation graph, node names, edge patching, attribution, evaluation, Table 1.

* :mod:`~kc_utils.circuits.nodes` — the grammar of node, receiver and edge names;
* :mod:`~kc_utils.circuits.graph` — the graph as dense tensors; circuit selection and pruning;
* :mod:`~kc_utils.circuits.ablation` — what an ablated edge carries, computed once per reference set;
* :mod:`~kc_utils.circuits.patching` — every edge of a circuit patched in one forward pass;
* :mod:`~kc_utils.circuits.attribute` — EAP, EAP-IG and exact edge scores;
* :mod:`~kc_utils.circuits.evaluate` — circuits run with ablated edges, faithfulness, baselines;
* :mod:`~kc_utils.circuits.relation` — one relation's circuit end to end: found, scored, with baselines;
* :mod:`~kc_utils.circuits.table1` — the paper's Table 1: its relations, layout and transfer between relations;
* :mod:`~kc_utils.circuits.overlap` — node and edge overlap of circuits, against random circuits;
* :mod:`~kc_utils.circuits.eap_ig` — circuits written and read in EAP-IG's graph JSON.

Nothing here imports :mod:`kc_utils.models`' loading code into the graph: the graph knows only a
:class:`~kc_utils.shape.ModelShape` (an import-linter contract checks it).
"""
