"""Stroke augmentation on the 16 real classes: the CPU recipe with and without it at 1x, 2x and 4x its compute,
against the plain reference at the same compute; the table goes into docs/RESULTS.md (augment section).

The recipe is configs/cpu_16class.yaml (resnet34 48 px, one cosine period fitted to its epochs, EMA, TTA); its
compute is scaled by its epochs (6, 12, 24) with the period following them. The plain reference
(experiments/plain_baseline.py) gets the epochs that match each budget (4, 8, 16: the compute that fit 20 minutes
here, twice and four times that). Runs, scoring and pairing are experiments/recipes.py's: predict.py --tta on
Kaggle's 1,005 labelled test rows of the 16 classes, differences paired by drawing (and seed), finished runs
reused.

    python -m experiments.augment --seeds 0 --presets "1:light,medium;2:medium;4:medium"
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time

import numpy as np

from experiments.common import REPO, machine, paired, per_drawing_ap, write_section
from experiments.recipes import Lab, plain_reference

BUDGETS = {1: (6, 4), 2: (12, 8), 4: (24, 16)}  # compute multiple -> (recipe epochs, plain epochs)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[-1])
    p.add_argument("--data-root", default=str(REPO.parent / "shared/data/quickdraw"), help="the real drawings")
    p.add_argument("--work", default="runs/recipes", help="stores, runs and predictions (default runs/recipes, "
                   "shared with experiments/recipes.py)")
    p.add_argument("--seeds", default="0", help="comma list of seeds (default 0)")
    p.add_argument("--presets", default="1:light,medium;2:medium;4:medium",
                   help="per budget, the augment presets (or name=value strengths) tried beside none: "
                   "'BUDGET:P1,P2;BUDGET:P3' (default 1:light,medium;2:medium;4:medium)")
    p.add_argument("--recipe", default="configs/cpu_16class.yaml", help="the recipe's config")
    p.add_argument("--lock", default=None, help="flock this file around each heavy step (default: none)")
    p.add_argument("--results", default="docs/RESULTS.md", help="markdown to update (default docs/RESULTS.md)")
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=True, help="write --results")
    return p


def parse_presets(text: str) -> dict[int, list[str]]:
    out = {}
    for part in text.split(";"):
        budget, _, names = part.partition(":")
        if int(budget) not in BUDGETS:
            raise SystemExit(f"error: budget {budget} is not one of {', '.join(map(str, BUDGETS))}")
        out[int(budget)] = ["none"] + [n.strip() for n in names.split(",") if n.strip()]
    return out


def recipe_run(lab: Lab, recipe: str, budget: int, preset: str, seed: int) -> tuple[np.ndarray, float, float]:
    """(AP@3 per drawing, train + predict wall s, CPU s) of the recipe at a budget with an augment preset."""
    import json

    epochs = BUDGETS[budget][0]
    tag = preset.replace("=", "").replace(",", "-").replace(".", "p")
    name = f"recipe-s{seed}" if (budget, preset) == (1, "none") else f"recipe-e{epochs}-aug{tag}-s{seed}"
    extra = [] if budget == 1 else ["--epochs", str(epochs), "--period", str(epochs)]
    run, train_s = lab.train(name, ["--config", str(REPO / recipe), "--seed", str(seed), "--augment", preset, *extra])
    pred, pred_s = lab.predict(run / "last.pth")
    cpu = sum(json.loads(t.read_text()).get("cpu_s", float("nan"))
              for t in (run / "timing.json", pred.with_name(pred.name + ".json")))
    return per_drawing_ap(pred, lab.labels)[1], train_s + pred_s, cpu


def table(lab: Lab, recipe: str, seeds: list[int], presets: dict[int, list[str]]) -> str:
    lines = ["| compute | model | augment | epochs | MAP@3 | vs recipe without augment (paired) | vs plain (paired) "
             "| wall s (train + predict) | CPU s |", "|---|---|---|---|---|---|---|---|---|"]
    for budget, names in presets.items():
        recipe_epochs, plain_epochs = BUDGETS[budget]
        runs = {}
        for name in names:  # first: predict.py writes the labels file the scores read
            got = [recipe_run(lab, recipe, budget, name, seed) for seed in seeds]
            runs[name] = ([g[0] for g in got], np.mean([g[1] for g in got]), np.mean([g[2] for g in got]))
            print(f"{budget}x {name}: {np.mean([a.mean() for a in runs[name][0]]):.4f}", flush=True)
        plain, plain_wall, plain_cpu = [], 0.0, 0.0
        for seed in seeds:
            preds, t = plain_reference(lab, seed, plain_epochs)
            plain.append(per_drawing_ap(preds, lab.labels)[1])
            plain_wall, plain_cpu = plain_wall + t["train_s"], plain_cpu + t.get("cpu_s", float("nan"))
        for name, (aps, wall, cpu) in runs.items():
            vs_none = "—" if name == "none" else "{:+.4f} ± {:.4f}".format(*paired(aps, runs["none"][0]))
            lines.append(f"| {budget}x | recipe | {name} | {recipe_epochs} | {np.mean([a.mean() for a in aps]):.4f} | "
                         f"{vs_none} | {'{:+.4f} ± {:.4f}'.format(*paired(aps, plain))} | {wall:.0f} | {cpu:.0f} |")
        lines.append(f"| {budget}x | plain reference | flips | {plain_epochs} | "
                     f"{np.mean([a.mean() for a in plain]):.4f} | | — | {plain_wall / len(seeds):.0f} | "
                     f"{plain_cpu / len(seeds):.0f} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    start = time.time()
    lab = Lab(args)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    body = table(lab, args.recipe, seeds, parse_presets(args.presets))
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = "\n".join([f"### Stroke augmentation at 1x, 2x and 4x the recipe's compute (generated by "
                      f"experiments/augment.py)", "",
                      f"Machine: {machine()}. Wall time of this step: {(time.time() - start) / 60:.1f} min (runs "
                      f"reused from earlier invocations not counted). Seeds: {args.seeds}.", "", body, "",
                      f"Reproduce: `python -m experiments.augment {argv}`; the commands it ran:", "", "```",
                      *lab.run.commands, "```"])
    print(text)
    if args.write:
        write_section(REPO / args.results, "<!-- augment:begin -->", "<!-- augment:end -->", text)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
