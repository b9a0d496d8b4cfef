"""Recipes on the 16 large real classes: an ablation of the training choices, the CPU recipe against the plain
reference side by side, and every per-architecture config run short; each writes its table into docs/RESULTS.md.

Every step runs the project's CLIs as a user would (prepare_data.py, train.py, predict.py --tta,
average_checkpoints.py) on the store of the 16 classes of ../shared (Kaggle train_simplified), scored on Kaggle's
labelled test rows of those classes (1,005 drawings). Differences are paired by drawing and seed, with standard
errors over drawings (experiments/common.py). Finished runs are kept under --work and reused by a rerun.

    python -m experiments.recipes ablation --seeds 0,1 --lock /tmp/heavy.lock   # ~4-5 h on 2 cores
    python -m experiments.recipes compare --seeds 0,1                            # recipe vs plain, ~80 min
    python -m experiments.recipes configs                                        # every config, 4 epochs @ 64 px
"""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from experiments.common import CLASSES_16, REPO, Runner, machine, paired, per_drawing_ap, score, write_section

# The ablation's base: the plain reference's model, size and budget (resnet34, 64 px, 8 epochs, batch 64, AdamW
# 2e-3) with the toolkit's loader, rgb encoding, natural class sampling, a schedule fitted to the run and TTA; it
# keeps an EMA and its last 3 epochs, so "EMA" and "average of 3" are read off the same runs.
BASE = {"model": "resnet34", "image-size": "64", "encoding": "rgb", "epochs": "8", "batch-size": "64",
        "min-steps-per-epoch": "0", "opt": "adamw", "lr": "2e-3", "weight-decay": "0.01", "min-lr": "1e-5",
        "period": "8", "t-mult": "1", "warmup-epochs": "0.5", "warmup-lr": "1e-4", "class-sampling": "natural",
        "ema-decay": "0.995", "keep-checkpoints": "3", "val-per-class": "40", "workers": "2"}


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: train flags changed from BASE, and which weights of that run are scored."""

    name: str
    change: dict = field(default_factory=dict)
    weights: str = "raw"  # raw | ema | avg3 (average of the last 3 epochs) | snapshots (average of the snapshots)
    what: str = ""


VARIANTS = [
    Variant("base", {}, "raw",
            "resnet34 64 px rgb, {epochs} epochs, batch 64, AdamW 2e-3, fitted cosine, natural sampling"),
    Variant("schedule not fitted", {"period": "32", "t-mult": "1.2", "no-fit-schedule": None}, "raw",
            "the configs' 32-epoch first period, open-ended: the run stops with the rate still high"),
    Variant("EMA 0.995", {}, "ema", "the base runs' EMA weights (BatchNorm statistics averaged with them)"),
    Variant("average of last 3 epochs", {}, "avg3", "the base runs' epochs 5-7 averaged, BatchNorm re-estimated"),
    Variant("snapshots of 4 cycles", {"snapshots": None}, "snapshots",
            "four cosine cycles of a quarter of the run, their 4 end-of-cycle snapshots averaged, BatchNorm "
            "re-estimated"),
    Variant("label smoothing 0.1", {"label-smoothing": "0.1"}),
    Variant("line width 1", {"line-width": "1"}),
    Variant("line width 3", {"line-width": "3"}),
    Variant("96 px", {"image-size": "96"}, "raw", "96 px instead of 64 (about 2.2x the compute)"),
    Variant("batch 32", {"batch-size": "32", "lr": "1.41e-3"}, "raw", "rate scaled by the square root rule"),
    Variant("batch 128", {"batch-size": "128", "lr": "2.83e-3"}, "raw", "rate scaled by the square root rule"),
    Variant("AdamW 1e-3", {"lr": "1e-3"}),
    Variant("balanced sampling", {"class-sampling": "balanced"}, "raw", "326 drawings of every class an epoch"),
    Variant("grey", {"encoding": "grey"}, "raw", "1 channel, stroke order as grey level"),
    Variant("points (21st place)", {"encoding": "points"}, "raw", "stroke index, points in the stroke, ink"),
    Variant("thirds (14th place)", {"encoding": "thirds"}, "raw", "cumulative first third / two thirds / all"),
]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("step", choices=["ablation", "compare", "configs"])
    p.add_argument("--data-root", default=str(REPO.parent / "shared/data/quickdraw"), help="the real drawings")
    p.add_argument("--work", default="runs/recipes", help="stores, runs and predictions (default runs/recipes)")
    p.add_argument("--seeds", default="0,1", help="comma list of seeds (default 0,1)")
    p.add_argument("--only", default=None, help="variants (ablation) or configs (configs: name or name-eN) to run, "
                   "comma list (default all)")
    p.add_argument("--epochs", type=int, default=8, help="ablation: epochs of the base run (default 8; the "
                   "fitted cosine period follows)")
    p.add_argument("--plain-epochs", type=int, default=4, help="compare: epochs of the plain reference (default 4: "
                   "its 20 minutes on 2 cores, resnet34 at 64 px training at ~26 images/s)")
    p.add_argument("--recipe", default="configs/cpu_16class.yaml", help="compare: the recipe's config")
    p.add_argument("--recipe-epochs", type=int, default=None, help="compare: train the recipe this many epochs "
                   "instead of its config's (one cosine period over them, as in the config), to compare at a larger "
                   "budget with --plain-epochs; its table gets its own section of --results")
    p.add_argument("--lock", default=None, help="flock this file around each heavy step (default: none)")
    p.add_argument("--results", default="docs/RESULTS.md", help="markdown to update (default docs/RESULTS.md)")
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=True, help="write --results")
    return p


def flags(d: dict) -> list[str]:
    out = []
    for k, v in d.items():
        out += [f"--{k}"] if v is None else [f"--{k}", v]
    return out


class Lab:
    """The store, the runner and the finished runs of one experiment invocation."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.work = args, (REPO / args.work).resolve()
        self.run = Runner(args.lock)
        data = Path(args.data_root)
        if not (data / "kaggle/train_simplified").is_dir():
            raise SystemExit(f"error: no Kaggle layout under {data} (see ../shared/data/quickdraw/README.md)")
        self.store = self.work / "s16"
        if not (self.store / "meta.json").is_file():
            self.run("prepare_data.py", "--input", str(data / "kaggle/train_simplified"), "--output",
                     str(self.store), "--classes", CLASSES_16)
        self.labels = self.work / "labels.csv"

    def train(self, name: str, argv: list[str]) -> tuple[Path, float]:
        """Train once into work/runs/name (reused when its last.pth exists); returns (folder, train wall s)."""
        out = self.work / "runs" / name
        timing = out / "timing.json"
        cmd = ("train.py", "--data", str(self.store), "--output", str(out), "--overwrite", "--no-progress",
               "--no-tensorboard", *argv)
        if timing.is_file():
            self.run.note(*cmd)
        else:
            timing.write_text(json.dumps({"train_s": self.run(*cmd), "cpu_s": self.run.last_cpu}))
        return out, json.loads(timing.read_text())["train_s"]

    def predict(self, ckpt: Path, weights: str = "auto", tta: bool = True) -> tuple[Path, float]:
        """predict.py (--tta by default) on the labelled test split; returns (prediction CSV, predict wall s)."""
        out = ckpt.with_name(f"{ckpt.stem}_{weights}{'' if tta else '_notta'}_test.csv.gz")
        cmd = ("predict.py", "--checkpoint", str(ckpt), "--input", str(self.store), "--split", "test",
               *(["--tta"] if tta else []), "--weights", weights, "--preds", str(out), "--labels", str(self.labels),
               "--quiet", "--workers", "2")
        timing = out.with_name(out.name + ".json")
        if timing.is_file() and out.is_file():
            self.run.note(*cmd)
        else:
            timing.write_text(json.dumps({"predict_s": self.run(*cmd), "cpu_s": self.run.last_cpu}))
        return out, json.loads(timing.read_text())["predict_s"]

    def average(self, run: Path, how: str) -> Path:
        out = run / f"{how}.pth"
        cmd = ("average_checkpoints.py", "--run", str(run), *(["--last", "3"] if how == "avg3" else ["--snapshots"]),
               "--output", str(out))
        if out.is_file():
            self.run.note(*cmd)
        else:
            self.run(*cmd)
        return out


def _ablation_pred(lab: Lab, v: Variant, seed: int, epochs: int) -> Path:
    key = "base" if not v.change else v.name.replace(" ", "_").replace("(", "").replace(")", "")
    base = BASE | {"epochs": str(epochs), "period": str(epochs)}
    if "snapshots" in v.change:
        v = Variant(v.name, v.change | {"period": str(epochs / 4)}, v.weights, v.what)
    tag = "" if epochs == 8 else f"-e{epochs}"
    run, _ = lab.train(f"ablation-{key}{tag}-s{seed}", flags(base | v.change | {"seed": str(seed)}))
    ckpt = lab.average(run, v.weights) if v.weights in ("avg3", "snapshots") else run / "last.pth"
    return lab.predict(ckpt, "ema" if v.weights == "ema" else "raw")[0]


def ablation(lab: Lab, seeds: list[int], only: set[str] | None, epochs: int) -> str:
    chosen = [v for v in VARIANTS if not only or v.name in only or v.name == "base"]
    preds = {(v.name, seed): _ablation_pred(lab, v, seed, epochs) for seed in seeds for v in chosen}  # seed 0 first
    aps = {v.name: [per_drawing_ap(preds[v.name, s], lab.labels)[1] for s in seeds] for v in chosen}
    base = aps["base"]
    lines = ["| variant | what changes | MAP@3 (mean of seeds) | per seed | vs base (paired) |",
             "|---|---|---|---|---|"]
    for v in VARIANTS:
        if v.name not in aps:
            continue
        per_seed = " / ".join(f"{a.mean():.4f}" for a in aps[v.name])
        diff = "—" if v.name == "base" else "{:+.4f} ± {:.4f}".format(*paired(aps[v.name], base))
        what = v.what.format(epochs=epochs) or " ".join(flags(v.change))
        lines.append(f"| {v.name} | {what} | {np.mean([a.mean() for a in aps[v.name]]):.4f} | {per_seed} | {diff} |")
    return "\n".join(lines)


def _epochs_seconds(run: Path) -> float:
    with open(run / "summary.csv", newline="") as f:
        return sum(float(r["epoch_s"]) for r in csv.DictReader(f))


def _recipe_run(lab: Lab, seed: int) -> str:
    """Run folder name of the recipe: recipe-s0, or recipe-e12-s0 with --recipe-epochs 12."""
    epochs = lab.args.recipe_epochs
    return f"recipe-s{seed}" if epochs is None else f"recipe-e{epochs}-s{seed}"


def plain_reference(lab: Lab, seed: int, epochs: int) -> tuple[Path, dict]:
    """experiments/plain_baseline.py for `epochs` (reused when done): its prediction CSV and its timing dict."""
    plain = lab.work / "runs" / f"plain-e{epochs}-s{seed}"
    plain.mkdir(parents=True, exist_ok=True)
    timing = plain / "timing.json"
    cmd = ("experiments/plain_baseline.py", "--data", str(Path(lab.args.data_root) / "kaggle"), "--output",
           str(plain / "preds.csv"), "--seed", str(seed), "--epochs", str(epochs))
    if timing.is_file():
        lab.run.note(*cmd)
    else:
        timing.write_text(json.dumps({"train_s": lab.run(*cmd), "cpu_s": lab.run.last_cpu}))
    return plain / "preds.csv", json.loads(timing.read_text())


def compare(lab: Lab, seeds: list[int], recipe: str) -> str:
    """The recipe (train + predict with TTA) and the plain reference, each timed end to end, per seed."""
    rows, aps = [], {"recipe": [], "plain": []}
    n = lab.args.recipe_epochs  # one cosine period over the run, as in the config
    epochs = [] if n is None else ["--epochs", str(n), "--period", str(n)]
    for seed in seeds:
        start = time.time()
        run, train_s = lab.train(_recipe_run(lab, seed),
                                 ["--config", str(REPO / recipe), "--seed", str(seed), *epochs])
        pred, pred_s = lab.predict(run / "last.pth")
        aps["recipe"].append(per_drawing_ap(pred, lab.labels)[1])
        timings = (run / "timing.json", pred.with_name(pred.name + ".json"))
        cpu = sum(json.loads(t.read_text()).get("cpu_s", float("nan")) for t in timings)
        rows.append(("recipe", seed, train_s + pred_s, cpu, aps["recipe"][-1].mean()))
        preds, t = plain_reference(lab, seed, lab.args.plain_epochs)
        aps["plain"].append(per_drawing_ap(preds, lab.labels)[1])
        rows.append(("plain", seed, t["train_s"], t.get("cpu_s", float("nan")), aps["plain"][-1].mean()))
        print(f"seed {seed}: recipe {rows[-2][4]:.4f} in {rows[-2][2]:.0f} s, plain {rows[-1][4]:.4f} in "
              f"{rows[-1][2]:.0f} s ({time.time() - start:.0f} s)", flush=True)
    lines = ["| model | seed | wall s (train + predict) | CPU s | MAP@3 |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {s} | {t:.0f} | {c:.0f} | {m:.4f} |" for n, s, t, c, m in rows]
    mean = {k: np.mean([a.mean() for a in v]) for k, v in aps.items()}
    d, se = paired(aps["recipe"], aps["plain"])
    lines += ["", f"Mean of {len(seeds)} seeds: recipe **{mean['recipe']:.4f}**, plain {mean['plain']:.4f}; "
                  f"recipe - plain = **{d:+.4f} ± {se:.4f}** (paired by drawing and seed).", ""]
    return "\n".join(lines + _recipe_weights(lab, seeds, aps["recipe"]))


def _recipe_weights(lab: Lab, seeds: list[int], recipe_aps: list[np.ndarray]) -> list[str]:
    """The recipe's own runs scored other ways (no new training): raw weights instead of the EMA, no TTA, and the
    average of its last 3 epochs (BatchNorm re-estimated), each paired against the recipe as shipped."""
    ways = {"raw weights (no EMA), TTA": [], "EMA, no TTA": [], "average of the last 3 epochs, TTA": []}
    for seed in seeds:
        run = lab.work / "runs" / _recipe_run(lab, seed)
        preds = [lab.predict(run / "last.pth", "raw")[0], lab.predict(run / "last.pth", "ema", tta=False)[0],
                 lab.predict(lab.average(run, "avg3"), "raw")[0]]
        for way, pred in zip(ways, preds):
            ways[way].append(per_drawing_ap(pred, lab.labels)[1])
    lines = ["The recipe's runs scored other ways (same runs, no new training):", "",
             "| weights | MAP@3 (mean of seeds) | vs the recipe as shipped (EMA + TTA), paired |", "|---|---|---|",
             f"| EMA + TTA (as shipped) | {np.mean([a.mean() for a in recipe_aps]):.4f} | — |"]
    for way, aps in ways.items():
        lines.append(f"| {way} | {np.mean([a.mean() for a in aps]):.4f} | "
                     "{:+.4f} ± {:.4f} |".format(*paired(aps, recipe_aps)))
    return lines


def configs(lab: Lab, only: set[str] | None) -> str:
    """Every per-architecture config run short on the 16 classes: 4 epochs at 64 px (resnet34 also 8)."""
    lines = ["| config | epochs | batch used | last lr (= min_lr?) | val MAP@3 | test MAP@3 (TTA) | train s |",
             "|---|---|---|---|---|---|---|"]
    runs = [("resnet34", 8)] + [(p.stem, 4) for p in sorted((REPO / "configs").glob("*.yaml"))
                                if p.stem not in ("demo", "cpu_16class", "cpu_345class")]
    if only:
        runs = [r for r in runs if r[0] in only or f"{r[0]}-e{r[1]}" in only]  # e.g. resnet34 or resnet34-e8
    for name, epochs in runs:
        run, train_s = lab.train(f"config-{name}-e{epochs}", ["--config", str(REPO / "configs" / f"{name}.yaml"),
                                                              "--epochs", str(epochs), "--image-size", "64",
                                                              "--workers", "2"])
        pred, _ = lab.predict(run / "last.pth")
        m = score(pred, lab.labels)
        with open(run / "summary.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        cfg = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
        last, min_lr = float(rows[-1]["lr"]), float(cfg.get("min_lr", 1e-5))
        at_floor = "yes" if abs(last - min_lr) <= 1e-9 * min_lr else "NO"
        lines.append(f"| {name} | {epochs} | {_batch_used(run)} (config {cfg.get('batch_size')}) | {last:.3g} "
                     f"({at_floor}) | {float(rows[-1]['val_map3']):.4f} | {m['map3']:.4f} | {train_s:.0f} |")
    return "\n".join(lines)


def _batch_used(run: Path) -> int:
    import torch
    return int(torch.load(run / "last.pth", map_location="cpu", weights_only=True)["batch_size"])


def main(args: argparse.Namespace) -> None:
    start = time.time()
    lab = Lab(args)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    only = set(args.only.split(",")) if args.only else None
    if args.step == "ablation":
        body, title = ablation(lab, seeds, only, args.epochs), "Ablation on the 16 real classes"
    elif args.step == "compare":
        body, title = compare(lab, seeds, args.recipe), "The CPU recipe against the plain reference"
        if args.recipe_epochs is not None:
            title += f", at a larger budget (recipe {args.recipe_epochs} epochs, plain {args.plain_epochs})"
    else:
        body, title = configs(lab, only), "Every per-architecture config run short"
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = "\n".join([f"### {title} (generated by experiments/recipes.py)", "",
                      f"Machine: {machine()}. Wall time of this step: {(time.time() - start) / 60:.1f} min "
                      f"(runs reused from earlier invocations not counted).", "", body, "",
                      f"Reproduce: `python -m experiments.recipes {argv}`; the commands it ran:", "", "```",
                      *lab.run.commands, "```"])
    print(text)
    if args.write:
        longer = args.step == "compare" and args.recipe_epochs is not None
        tag = f"recipes:{args.step}" + (f"-e{args.recipe_epochs}" if longer else "")
        write_section(REPO / args.results, f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->", text)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
