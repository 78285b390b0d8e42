"""Analyses of components: logit lens and direct logit attribution, head roles, head ablations.

* :mod:`~kc_utils.analysis.lens` — the residual stream read through the unembedding;
* :mod:`~kc_utils.analysis.heads` — attention and output scores per head, and head roles;
* :mod:`~kc_utils.analysis.head_ablation` — heads ablated one at a time or as a group, against
  random head sets of the same size; head outputs patched from a corrupted run;
* :mod:`~kc_utils.analysis.multihop` — two-hop prompts: the bridge in the logit lens, movers, bridge patching.
"""
