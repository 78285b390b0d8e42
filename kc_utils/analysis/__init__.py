"""Analyses of components: logit lens and direct logit attribution, head roles, head ablations, hallucinations,
in-context learning, two-hop questions. Prose built from their tables lives in the ``*_text`` modules.

* :mod:`~kc_utils.analysis.lens` — the residual stream read through the unembedding: logit lens, projections, DLA;
* :mod:`~kc_utils.analysis.heads` — attention and output scores per head, and head roles (mover, relation, mix);
* :mod:`~kc_utils.analysis.head_roles_text` — notebook 02's sentences on head roles;
* :mod:`~kc_utils.analysis.head_ablation` — heads ablated one at a time; head outputs patched from a corrupted run;
* :mod:`~kc_utils.analysis.head_groups` — a head set ablated or patched together, against random sets of its size;
* :mod:`~kc_utils.analysis.wrong_answers` — what a wrong answer is (another attribute of the subject, or not);
* :mod:`~kc_utils.analysis.failure_kinds` — prompts classified correct / knowledge present / absent by the lens;
* :mod:`~kc_utils.analysis.wrong_answer_heads` — the wrong-answer circuit and each head's logit attribution;
* :mod:`~kc_utils.analysis.head_repair` — repairs by patching or ablating heads, with permutation p-values;
* :mod:`~kc_utils.analysis.hallucination` — one relation's hallucinations end to end, and one case's numbers;
* :mod:`~kc_utils.analysis.hallucination_text` — notebook 04's sentences on hallucinations;
* :mod:`~kc_utils.analysis.failing_relation` — which relation has the most knowledge-present failures;
* :mod:`~kc_utils.analysis.icl` — in-context learning: accuracy by k, attention to demonstrations, Table 2;
* :mod:`~kc_utils.analysis.icl_text` — notebook 05's sentences on in-context learning;
* :mod:`~kc_utils.analysis.multihop` — two-hop prompts: the bridge in the logit lens, movers, bridge patching;
* :mod:`~kc_utils.analysis.multihop_text` — notebook 07's sentences on two-hop questions.
"""
