"""Models that read strokes on the 16 real classes: each at its CPU config, the CNN recipe, and the blends of the CNN
recipe with each (mean, gmean, vote, weights fitted on the validation split); the time feature on the raw store where
the data allows. The tables go into docs/RESULTS.md (stroke-models section).

Every step runs the project's CLIs as a user would: train.py with configs/cpu_16class_gru.yaml,
configs/cpu_16class_rasterizer.yaml and configs/cpu_16class.yaml (the CNN recipe, its run shared with
experiments/recipes.py and experiments/augment.py under --work), predict.py --tta on the store's validation and test
splits, blend2.py on the test files (weights fitted on the validation files with --search-weights). Scores are on
Kaggle's 1,005 labelled test rows of the 16 classes, paired by drawing (experiments/common.py).

The raw part: Kaggle's train_raw of the 16 classes has ~15 drawings a class with timing, so every 3rd is held out
(--val-every 3) and stroke_gru is trained with and without dt (--point-time) and scored on that validation split.

    python -m experiments.stroke_models --seeds 0
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from experiments.common import CLASSES_16, REPO, machine, paired, per_drawing_ap, score, write_section
from experiments.recipes import Lab

CONFIGS = {"stroke_gru": "configs/cpu_16class_gru.yaml", "learned_rasterizer": "configs/cpu_16class_rasterizer.yaml"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[-1])
    p.add_argument("--data-root", default=str(REPO.parent / "shared/data/quickdraw"), help="the real drawings")
    p.add_argument("--work", default="runs/recipes", help="stores, runs and predictions (default runs/recipes)")
    p.add_argument("--seeds", default="0", help="comma list of seeds (default 0)")
    p.add_argument("--recipe", default="configs/cpu_16class.yaml", help="the CNN recipe's config")
    p.add_argument("--only", default=None, help="stroke models to run, comma list (default: all of CONFIGS)")
    p.add_argument("--raw", action=argparse.BooleanOptionalAction, default=True, help="the raw-store dt rows")
    p.add_argument("--lock", default=None, help="flock this file around each heavy step (default: none)")
    p.add_argument("--results", default="docs/RESULTS.md", help="markdown to update (default docs/RESULTS.md)")
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=True, help="write --results")
    return p


def _trained(lab: Lab, name: str, argv: list[str]) -> tuple[Path, float, float]:
    """Train (or reuse; wait for a run another experiment is writing) and return (run, train wall s, CPU s)."""
    run = lab.work / "runs" / name
    for _ in range(720):  # another experiment training the same run: wait up to 2 h for its timing.json
        if not (run / "last.pth").exists() or (run / "timing.json").is_file():
            break
        time.sleep(10)
    run, wall = lab.train(name, argv)
    return run, wall, json.loads((run / "timing.json").read_text()).get("cpu_s", float("nan"))


def _val_preds(lab: Lab, ckpt: Path) -> Path:
    """predict.py --tta on the store's validation split (for fitting blend weights)."""
    out = ckpt.with_name(f"{ckpt.stem}_val.csv.gz")
    cmd = ("predict.py", "--checkpoint", str(ckpt), "--input", str(lab.store), "--split", "val", "--tta",
           "--preds", str(out), "--labels", str(lab.work / "val_labels.csv"), "--quiet", "--workers", "2")
    if out.is_file():
        lab.run.note(*cmd)
    else:
        lab.run(*cmd)
    return out


def _blend(lab: Lab, out: Path, inputs: list[Path], method: str, weights: list[float] | None = None) -> Path:
    cmd = ("blend2.py", "--method", method, "--preds", str(out), *map(str, inputs),
           *(["--weights", *[f"{w:.6g}" for w in weights]] if weights else []))
    if out.is_file():
        lab.run.note(*cmd)
    else:
        lab.run(*cmd)
    return out


def _fitted_weights(lab: Lab, val: list[Path]) -> list[float]:
    """blend2.py --search-weights (gmean) on the validation predictions; the weights it prints."""
    import subprocess

    cmd = [sys.executable, str(REPO / "blend2.py"), "--search-weights", "--method", "gmean", "--labels",
           str(lab.work / "val_labels.csv"), *map(str, val)]
    lab.run.note("blend2.py", *cmd[2:])
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [float(w) for w in re.search(r"--weights ([\d.e\- ]+)", out).group(1).split()]


def main_table(lab: Lab, seeds: list[int], recipe: str, models: list[str]) -> str:
    lines = ["| model | seed | MAP@3 (TTA) | vs CNN recipe (paired) | train s | CPU s |", "|---|---|---|---|---|---|"]
    blend_lines = ["| blend of the CNN recipe with | method | MAP@3 | vs CNN recipe alone (paired) | vs the stroke "
                   "model alone (paired) |", "|---|---|---|---|---|"]
    for model in models:  # the stroke models first: another experiment may be training the CNN recipe's run
        for seed in seeds:
            _trained(lab, f"{model}-s{seed}", ["--config", str(REPO / CONFIGS[model]), "--seed", str(seed)])
    cnn_aps, cnn_preds, cnn_val = [], [], []
    for seed in seeds:
        run, wall, cpu = _trained(lab, f"recipe-s{seed}", ["--config", str(REPO / recipe), "--seed", str(seed)])
        pred, _ = lab.predict(run / "last.pth")
        cnn_preds.append(pred)
        cnn_val.append(_val_preds(lab, run / "last.pth"))
        cnn_aps.append(per_drawing_ap(pred, lab.labels)[1])
        lines.append(f"| CNN recipe (resnet34 48 px) | {seed} | {cnn_aps[-1].mean():.4f} | — | {wall:.0f} | "
                     f"{cpu:.0f} |")
    for model in models:
        aps, blends = [], {}
        for i, seed in enumerate(seeds):
            run, wall, cpu = _trained(lab, f"{model}-s{seed}", ["--config", str(REPO / CONFIGS[model]), "--seed",
                                                                 str(seed)])
            pred, _ = lab.predict(run / "last.pth")
            aps.append(per_drawing_ap(pred, lab.labels)[1])
            lines.append(f"| {model} ({CONFIGS[model]}) | {seed} | {aps[-1].mean():.4f} | "
                         f"{'{:+.4f} ± {:.4f}'.format(*paired([aps[-1]], [cnn_aps[i]]))} | {wall:.0f} | {cpu:.0f} |")
            pair = [cnn_preds[i], pred]
            weights = _fitted_weights(lab, [cnn_val[i], _val_preds(lab, run / "last.pth")])
            for method, w in (("mean", None), ("gmean", None), ("vote", None), ("gmean", weights)):
                label = f"{method} fitted {'/'.join(f'{x:.2f}' for x in w)}" if w else method
                key = f"{method}{'-fitted' if w else ''}"
                out = _blend(lab, run / f"blend_{key}_test.csv.gz", pair, method, w)
                blends.setdefault(key, [label, []])[1].append(per_drawing_ap(out, lab.labels)[1])
        for key, (label, b) in blends.items():
            blend_lines.append(f"| {model} | {label} | {np.mean([a.mean() for a in b]):.4f} | "
                               f"{'{:+.4f} ± {:.4f}'.format(*paired(b, cnn_aps))} | "
                               f"{'{:+.4f} ± {:.4f}'.format(*paired(b, aps))} |")
    return "\n".join(lines + ["", *blend_lines])


def raw_table(lab: Lab, seeds: list[int]) -> str:
    """stroke_gru on the raw twin of the 16 classes with and without the dt feature, on its validation split."""
    raw = lab.work / "r16"
    if not (raw / "meta.json").is_file():
        lab.run("prepare_data.py", "--input", str(Path(lab.args.data_root) / "kaggle/train_raw"), "--output", str(raw),
                "--classes", CLASSES_16, "--val-every", "3", "--no-test")
    lines = ["| stroke_gru on the raw store | seed | val MAP@3 (TTA) | val drawings |", "|---|---|---|---|"]
    aps = {}
    for flag in ("--point-time", "--no-point-time"):
        for seed in seeds:
            name = f"raw-gru{'-dt' if flag == '--point-time' else ''}-s{seed}"
            run, _, _ = _trained(lab, name, ["--config", str(REPO / CONFIGS["stroke_gru"]), "--data", str(raw),
                                              "--seed", str(seed), flag, "--val-per-class", "1000"])
            out = run / "val_preds.csv.gz"
            cmd = ("predict.py", "--checkpoint", str(run / "last.pth"), "--input", str(raw), "--split", "val", "--tta",
                   "--preds", str(out), "--labels", str(raw / "val_labels.csv"), "--quiet", "--workers", "2")
            lab.run.note(*cmd) if out.is_file() else lab.run(*cmd)
            m = score(out, raw / "val_labels.csv")
            aps.setdefault(flag, []).append(per_drawing_ap(out, raw / "val_labels.csv")[1])
            lines.append(f"| {'with dt (7 features)' if flag == '--point-time' else 'without dt'} | {seed} | "
                         f"{m['map3']:.4f} | {m['n']} |")
    d, se = paired(aps["--point-time"], aps["--no-point-time"])
    return "\n".join(lines + ["", f"With dt − without: {d:+.4f} ± {se:.4f} (paired by drawing and seed)."])


def main(args: argparse.Namespace) -> None:
    start = time.time()
    lab = Lab(args)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    models = [m for m in CONFIGS if not args.only or m in args.only.split(",")]
    body = main_table(lab, seeds, args.recipe, models)
    if args.raw:
        body += "\n\n" + raw_table(lab, seeds)
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = "\n".join(["### Models that read strokes (generated by experiments/stroke_models.py)", "",
                      f"Machine: {machine()}. Wall time of this step: {(time.time() - start) / 60:.1f} min (runs "
                      f"reused from earlier invocations not counted; other experiments shared the 2 cores, so wall "
                      f"and train seconds are inflated: CPU seconds are the steadier figure). Seeds: {args.seeds}.",
                      "", body, "", f"Reproduce: `python -m experiments.stroke_models {argv}`; the commands it ran:",
                      "", "```", *lab.run.commands, "```"])
    print(text)
    if args.write:
        write_section(REPO / args.results, "<!-- stroke-models:begin -->", "<!-- stroke-models:end -->", text)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
