"""Data and tasks: relation files, prompt batches, metrics and known-fact datasets.

* :mod:`~kc_utils.data.relations` — LRE-schema relation files and their validating loader;
* :mod:`~kc_utils.data.prompts` — tokenised clean/corrupt prompt batches (:class:`PromptBatch`);
* :mod:`~kc_utils.data.metrics` — per-example metrics (logit difference, log-prob, rank, Hit@k);
* :mod:`~kc_utils.data.facts` — facts a model knows, same-length corrupt twins, the Dval/Dtest split;
* :mod:`~kc_utils.data.multihop` — two-hop facts of two chained relations, their three prompts and twins.
"""
