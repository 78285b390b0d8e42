"""Command line: ``python -m kc_utils.organism train --out DIR`` and ``... evaluate --model DIR``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from kc_utils.organism import WEIGHTS_DIR, load_organism, load_split
from kc_utils.organism.recipe import RECIPES, SHIPPED_RECIPE


def _print_tables(directory: Path, probes: bool) -> None:
    from kc_utils.organism.evaluate import accuracy_table
    from kc_utils.organism.probes import probe_table

    model, tokenizer = load_organism(directory)
    split = load_split(directory)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print("\nAccuracy (top-1, first object token)")
        print(accuracy_table(model, tokenizer, split))
        if probes:
            table, summary = probe_table(model, tokenizer, split)
            print("\nMechanism probes (200 trained facts)")
            print(table)
            for key, value in summary.items():
                print(f"  {key:32s} {value:.3f}")


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m kc_utils.organism", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train from scratch with the shipped recipe, save, print accuracy")
    p_train.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    p_train.add_argument(
        "--recipe", choices=sorted(RECIPES), default=None, help="named recipe (default: the shipped one)"
    )
    p_train.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    p_train.add_argument("--steps", type=int, default=None, help="override the recipe's number of steps")
    p_train.add_argument("--probes", action="store_true", help="also print the mechanism probes")
    p_eval = sub.add_parser("evaluate", help="print the accuracy and mechanism-probe tables of a checkpoint")
    p_eval.add_argument("--model", type=Path, default=WEIGHTS_DIR, help=f"checkpoint folder (default {WEIGHTS_DIR})")
    args = parser.parse_args(argv)

    if args.command == "train":
        from dataclasses import replace

        from kc_utils.organism.train import save_checkpoint, train

        start = time.time()
        recipe = RECIPES[args.recipe] if args.recipe else SHIPPED_RECIPE
        recipe = replace(
            recipe,
            seed=recipe.seed if args.seed is None else args.seed,
            steps=recipe.steps if args.steps is None else args.steps,
        )
        result = train(recipe)
        save_checkpoint(result, args.out)
        print(f"trained in {result.seconds:.0f} s; saved to {args.out}")
        _print_tables(args.out, probes=args.probes)
        print(f"total {time.time() - start:.0f} s")
    else:
        _print_tables(args.model, probes=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
