"""Whether a shipped real model's prompts should start with BOS: top-1 / top-10 of the first answer token, both ways.

Run with ``.venv/bin/python benchmarks/bos_choice.py gemma-3-270m`` (not part of CI; 15 minutes for the first 60
facts of 8 relations on 2 heavily shared cores).
For each relation, every fact of the relation file is asked with the file's first template; the answer is the
first token of ``" " + object`` after the prompt (:func:`kc_utils.models.continuation_first_token`; facts whose
answer merges into the prompt are left out and counted). The same booted model is asked twice, with BOS prepended
and without (the choice :func:`kc_utils.models.bos_token_id` reads, switched per run), and the rank of the answer
token at the last prompt position gives top-1 and top-10. The table goes to ``benchmarks/bos_choice_<model>.md``
(``..._first<N>.md`` with ``--n-facts N``) and the raw numbers to the ``.json`` beside it.
``PackagedModel.prepend_bos`` records the choice.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RELATIONS = (
    "country_capital_city",
    "country_language",
    "company_hq",
    "landmark_in_country",
    "person_native_language",
    "country_currency",
    "product_by_company",
    "adj_antonym",
)


def measure(model_name: str, relations: tuple[str, ...], n_facts: int | None, batch_size: int) -> dict:
    from kc_utils import models
    from kc_utils.data.metrics import rank
    from kc_utils.data.prompts import make_batch
    from kc_utils.data.relations import load_relation

    start = time.perf_counter()
    # the decomposition check is beside the point here (it refuses post-norm families until the engine handles them)
    model = models.load_model(model_name, device="cpu", check_decomposition=False)
    boot_s = time.perf_counter() - start
    chosen = models.bos_token_id(model) is not None
    rows = {}
    for key in relations:
        relation = load_relation(key)
        template = relation.prompt_templates[0]
        samples = relation.samples[:n_facts] if n_facts else relation.samples
        prompts, answers, dropped = [], [], 0
        for sample in samples:
            prompt = template.format(sample.subject)
            if models.continuation_first_token(model, prompt, sample.object) is None:
                dropped += 1
                continue
            prompts.append(prompt)
            answers.append(sample.object)
        row: dict = {"template": template, "facts": len(prompts), "dropped": dropped}
        for bos in (False, True):
            setattr(model, models.PREPEND_BOS_ATTRIBUTE, bos)
            ranks = []
            for i in range(0, len(prompts), batch_size):
                batch = make_batch(model, prompts[i : i + batch_size], answers[i : i + batch_size])
                with torch.no_grad():
                    ranks += rank(model(batch.clean), batch).tolist()
            tag = "bos" if bos else "no_bos"
            row[f"{tag}_top1"] = sum(r < 1 for r in ranks) / len(ranks)
            row[f"{tag}_top10"] = sum(r < 10 for r in ranks) / len(ranks)
        rows[key] = row
        print(key, row, flush=True)
    setattr(model, models.PREPEND_BOS_ATTRIBUTE, chosen)
    return {
        "model": model_name,
        "chosen_prepend_bos": chosen,
        "n_facts": n_facts,
        "torch_threads": torch.get_num_threads(),
        "boot_s": round(boot_s, 1),
        "total_s": round(time.perf_counter() - start, 1),
        "machine": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
        "relations": rows,
    }


def table(result: dict) -> str:
    lines = [
        "| relation | facts | no BOS top-1 | no BOS top-10 | BOS top-1 | BOS top-10 |",
        "|---|---|---|---|---|---|",
    ]
    rows = result["relations"]
    for key, row in rows.items():
        lines.append(
            f"| {key} | {row['facts']} | {row['no_bos_top1']:.2f} | {row['no_bos_top10']:.2f} | "
            f"{row['bos_top1']:.2f} | {row['bos_top10']:.2f} |"
        )
    mean = {
        k: sum(r[k] for r in rows.values()) / len(rows)
        for k in ("no_bos_top1", "no_bos_top10", "bos_top1", "bos_top10")
    }
    lines.append(
        f"| mean of {len(rows)} | | {mean['no_bos_top1']:.2f} | {mean['no_bos_top10']:.2f} | "
        f"{mean['bos_top1']:.2f} | {mean['bos_top10']:.2f} |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a name in kc_utils.gguf.PACKAGED_MODELS (gemma-3-270m, smollm2-135m)")
    parser.add_argument("--relations", nargs="+", default=list(RELATIONS))
    parser.add_argument("--n-facts", type=int, default=None, help="the first N facts of each file (default: all)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    result = measure(args.model, tuple(args.relations), args.n_facts, args.batch_size)
    stem = HERE / (f"bos_choice_{args.model}" + (f"_first{args.n_facts}" if args.n_facts else ""))
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    facts = "every fact" if args.n_facts is None else f"the first {args.n_facts} facts"
    text = (
        f"# BOS or not: {args.model}\n\n"
        f"Written by `benchmarks/bos_choice.py {args.model}{f' --n-facts {args.n_facts}' if args.n_facts else ''}` on {result['date']} ({result['torch_threads']} torch "
        f"threads, {result['total_s']} s). Top-1 / top-10 of the first answer token, the first template of each "
        f"relation, {facts} of its file; the same float32 model asked without and with BOS. The shipped choice "
        f"(`PackagedModel.prepend_bos`): **{'BOS' if result['chosen_prepend_bos'] else 'no BOS'}**.\n\n"
        f"{table(result)}\n"
    )
    stem.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
