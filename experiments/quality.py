"""Measure quality on the real drawings: grey vs rgb vs time encodings, with and without TTA and balancing, and a
blend of the best two, with one model and one budget on a 2-core CPU; prints the table and writes docs/RESULTS.md.

Every step runs the project's CLIs as subprocesses (prepare_data.py, train.py, predict.py, blend2.py) exactly as a
user would, and the scores are computed from the files they write (prediction CSVs + labels). Three stores:

    s16   Kaggle train_simplified, the 16 big classes; scored on Kaggle's labelled test rows of those classes.
    r16   Kaggle train_raw, the same 16 classes (only ~20 drawings a class exist with timing); every 3rd drawing
          held out as validation and scored there (the raw test file has only 39 rows of these classes).
          grey, rgb and time all read this same raw store, so the encodings are compared on the same drawings.
    s345  Kaggle train_simplified, all 345 classes; scored on all of Kaggle's labelled test (not class-balanced).

    python -m experiments.quality                                  # about 20-30 min on 2 cores
    python -m experiments.quality --scale 0.05 --no-write --work /tmp/q   # a pipeline check in a few minutes
    python -m experiments.quality --lock /tmp/heavy.lock           # take a shared lock around each heavy step
"""
from __future__ import annotations

import argparse
import csv
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.common import CLASSES_16, REPO, Runner, machine, score, write_section
from qdraw.predictions import labels_for, read_labels, read_predictions

BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"


@dataclass
class StoreSpec:
    """One prepared store: where it comes from and which split scores it."""

    name: str
    source: str              # folder under the data root
    prepare_args: list[str]
    split: str               # val or test
    samples_per_class: int   # training drawings per class per epoch at --scale 1
    epochs: int


STORES = {
    "s16": StoreSpec("s16", "kaggle/train_simplified", ["--classes", CLASSES_16], "test", 200, 10),
    "r16": StoreSpec("r16", "kaggle/train_raw", ["--classes", CLASSES_16, "--no-test", "--val-every", "3"], "val",
                     50, 10),
    "s345": StoreSpec("s345", "kaggle/train_simplified", [], "test", 15, 10),
}


@dataclass
class Row:
    """One line of the results table."""

    store: str
    name: str
    encoding: str
    seed: int
    train_images: int
    train_s: float
    tta: bool
    balance: bool
    n: int
    map3: float
    top1: float


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=True,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--data-root", default=str(REPO.parent / "shared/data/quickdraw"),
                        help="the real drawings (default ../shared/data/quickdraw)")
    parser.add_argument("--work", default="runs/quality", help="stores, runs and predictions (default runs/quality)")
    parser.add_argument("--model", default="mobilenetv2", help="architecture for every run (default mobilenetv2)")
    parser.add_argument("--image-size", type=int, default=48, help="input side in px (default 48)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak Adam learning rate (default 3e-3)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every run's training drawings per epoch by this (default 1)")
    parser.add_argument("--raw-seeds", default="0,1", help="seeds of the r16 runs, comma list (default 0,1)")
    parser.add_argument("--skip-345", action="store_true", help="leave out the 345-class run (default: run it)")
    parser.add_argument("--lock", default=None, help="flock this file around each heavy step (default: none)")
    parser.add_argument("--results", default="docs/RESULTS.md", help="markdown to update (default docs/RESULTS.md)")
    parser.add_argument("--confusion", default="docs/confusion_16class.png",
                        help="confusion matrix PNG of the best 16-class model (default docs/confusion_16class.png)")
    parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=True,
                        help="write --results and --confusion (default on)")
    return parser


def prepare(run: Runner, spec: StoreSpec, data_root: Path, work: Path) -> Path:
    """Pack one store (reruns skip finished classes) and return its folder."""
    out = work / spec.name
    run("prepare_data.py", "--input", str(data_root / spec.source), "--output", str(out), *spec.prepare_args)
    return out


def train(run: Runner, args: argparse.Namespace, spec: StoreSpec, store: Path, encoding: str, seed: int,
          out: Path) -> tuple[int, float]:
    """Train one model at the store's budget; returns (training images seen, training seconds)."""
    num_classes = len((store / "classes.txt").read_text().splitlines())
    # at least one full batch per epoch: train.py refuses a batch larger than the epoch
    per_class = max(-(-args.batch_size // num_classes), round(spec.samples_per_class * args.scale))
    run("train.py", "--data", str(store), "--model", args.model, "--encoding", encoding,
        "--image-size", str(args.image_size), "--samples-per-class", str(per_class), "--epochs", str(spec.epochs),
        "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--min-lr", "1e-4", "--period", str(spec.epochs),
        "--t-mult", "1", "--warmup-epochs", "0.5", "--warmup-lr", "3e-4", "--seed", str(seed), "--workers", "1",
        "--output", str(out), "--overwrite", "--no-progress", "--no-tensorboard")
    with open(out / "summary.csv") as f:
        seconds = sum(float(r["epoch_s"]) for r in csv.DictReader(f))
    return per_class * num_classes * spec.epochs, seconds


def predict_variants(run: Runner, spec: StoreSpec, store: Path, out: Path, variants: list[tuple[bool, bool]]
                     ) -> dict[tuple[bool, bool], Path]:
    """Predict the store's scored split with last.pth, once per (tta, balance); returns the CSV of each."""
    paths = {}
    for tta, bal in variants:
        csv_path = out / f"{spec.split}{'_tta' if tta else ''}{'_bal' if bal else ''}.csv.gz"
        run("predict.py", "--checkpoint", str(out / "last.pth"), "--input", str(store), "--split", spec.split,
            "--preds", str(csv_path), "--labels", str(out / "labels.csv"), "--workers", "1", "--quiet",
            "--tta" if tta else "--no-tta", "--balance" if bal else "--no-balance")
        paths[(tta, bal)] = csv_path
    return paths


def run_model(run: Runner, args: argparse.Namespace, spec: StoreSpec, store: Path, encoding: str, seed: int,
              rows: list[Row]) -> dict[tuple[bool, bool], Path]:
    """Train one model, predict every variant, append its rows; returns the prediction CSVs by variant."""
    out = Path(args.work) / "runs" / f"{spec.name}-{encoding}-s{seed}"
    images, seconds = train(run, args, spec, store, encoding, seed, out)
    variants = [(False, False), (True, False)] + ([(False, True), (True, True)] if spec.split == "test" else [])
    paths = predict_variants(run, spec, store, out, variants)
    for (tta, bal), path in paths.items():
        m = score(path, out / "labels.csv")
        rows.append(Row(spec.name, args.model, encoding, seed, images, seconds, tta, bal, m["n"], m["map3"],
                        m["top1"]))
        print(f"  {spec.name} {encoding} seed {seed} tta={tta} balance={bal}: MAP@3 {m['map3']:.4f}", flush=True)
    return paths


def blend_rows(run: Runner, work: Path, parts: list[tuple[str, Path]], labels: Path, rows: list[Row]) -> None:
    """Blend two prediction CSVs with blend2.py (mean and gmean, with and without balancing) and score each."""
    names = "+".join(name for name, _ in parts)
    for method in ("mean", "gmean"):
        for bal in (False, True):
            out = work / f"blend_{method}{'_bal' if bal else ''}.csv.gz"
            run("blend2.py", "--method", method, *(["--balance"] if bal else []), "--preds", str(out),
                "--submission", str(work / f"sub_blend_{method}{'_bal' if bal else ''}.csv"),
                *[str(p) for _, p in parts])
            m = score(out, labels)
            rows.append(Row("s16", f"blend {method}", names, 0, 0, 0.0, True, bal, m["n"], m["map3"], m["top1"]))
            print(f"  blend {method} balance={bal}: MAP@3 {m['map3']:.4f}", flush=True)


def confusion_png(pred_csv: Path, labels_csv: Path, path: Path, title: str) -> None:
    """Row-normalised top-1 confusion matrix (true class rows, predicted columns) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pred = read_predictions(pred_csv)
    y = labels_for(pred.key_ids, read_labels(labels_csv, pred.classes))
    k = len(pred.classes)
    cm = np.zeros((k, k))
    np.add.at(cm, (y, pred.probs.argmax(1)), 1)
    cm /= np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(9, 8))
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    for i, j in zip(*np.nonzero(cm >= 0.005)):
        ax.text(j, i, f"{cm[i, j]:.2f}"[1:] if cm[i, j] < 1 else "1", ha="center", va="center", fontsize=6,
                color="white" if cm[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), pred.classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), pred.classes, fontsize=8)
    ax.set_xlabel("predicted (top-1)")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows: list[Row]) -> str:
    """The results as a markdown table."""
    head = ("| store | model | encoding | seed | train drawings | train s | TTA | balance | scored | MAP@3 | top-1 |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    return head + "\n".join(
        f"| {r.store} | {r.name} | {r.encoding} | {r.seed} | {r.train_images or '-'} | "
        f"{f'{r.train_s:.0f}' if r.train_s else '-'} | {'yes' if r.tta else 'no'} | {'yes' if r.balance else 'no'} | "
        f"{r.n} | {r.map3:.4f} | {r.top1:.4f} |" for r in rows)


def raw_means(rows: list[Row]) -> str:
    """Mean MAP@3 over seeds of each r16 encoding (without TTA / with TTA), the fair encoding comparison."""
    lines = ["| encoding (r16, mean over seeds) | MAP@3 | MAP@3 with TTA |", "|---|---|---|"]
    for enc in dict.fromkeys(r.encoding for r in rows if r.store == "r16"):
        plain = [r.map3 for r in rows if r.store == "r16" and r.encoding == enc and not r.tta]
        tta = [r.map3 for r in rows if r.store == "r16" and r.encoding == enc and r.tta]
        lines.append(f"| {enc} | {np.mean(plain):.4f} | {np.mean(tta):.4f} |")
    return "\n".join(lines)


def report(args: argparse.Namespace, run: Runner, rows: list[Row], best: Row, wall: float) -> str:
    """The generated markdown section: machine, settings, table, best 16-class model, exact commands."""
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    return "\n".join([
        "## Measured quality on real drawings (generated by experiments/quality.py)", "",
        f"Machine: {machine()}. Wall time of the whole run: {wall / 60:.1f} min.", "",
        (f"Every run: `{args.model}` at {args.image_size} px, batch {args.batch_size}, Adam lr {args.lr} "
         "(one cosine period to 1e-4 after 0.5 epoch of warm-up), 10 epochs, `last.pth` scored, "
         f"budget scale {args.scale}. Columns: `train drawings` = images seen in training, `scored` = labelled "
         "drawings scored (s16, s345: Kaggle's labelled test rows; r16: the store's validation split)."), "",
        table(rows), "", raw_means(rows), "",
        (f"Best 16-class result: **MAP@3 {best.map3:.4f}** (top-1 {best.top1:.4f}) on {best.n} labelled Kaggle "
         f"test drawings: {best.name} {best.encoding}, TTA {'on' if best.tta else 'off'}, "
         f"balancing {'on' if best.balance else 'off'}."), "",
        f"![confusion matrix of the best single 16-class model]({Path(args.confusion).name})", "",
        f"Reproduce: `python -m experiments.quality {argv}`, which ran these commands from the repo root:", "",
        "```", *run.commands, "```"])


def main(args: argparse.Namespace) -> None:
    start, data_root, work = time.time(), Path(args.data_root), Path(args.work).resolve()
    if not (data_root / "kaggle/train_simplified").is_dir():
        raise SystemExit(f"error: no Kaggle layout under {data_root} (see ../shared/data/quickdraw/README.md)")
    args.work = str(work)
    run, rows = Runner(args.lock), []
    stores = {name: prepare(run, spec, data_root, work) for name, spec in STORES.items()
              if not (args.skip_345 and name == "s345")}
    s16 = {enc: run_model(run, args, STORES["s16"], stores["s16"], enc, 0, rows) for enc in ("grey", "rgb")}
    for seed in [int(s) for s in args.raw_seeds.split(",")]:
        for enc in ("grey", "rgb", "time"):
            run_model(run, args, STORES["r16"], stores["r16"], enc, seed, rows)
    single16 = [r for r in rows if r.store == "s16"]
    best_single = max(single16, key=lambda r: r.map3)
    labels16 = work / "runs" / f"s16-{best_single.encoding}-s0" / "labels.csv"
    blend_rows(run, work, [(enc, s16[enc][(True, False)]) for enc in ("grey", "rgb")], labels16, rows)
    if "s345" in stores:
        winner = max(("grey", "rgb"), key=lambda e: max(r.map3 for r in single16 if r.encoding == e))
        run_model(run, args, STORES["s345"], stores["s345"], winner, 0, rows)
    print(table(rows))
    best = max((r for r in rows if r.store == "s16"), key=lambda r: r.map3)
    print(f"best 16-class MAP@3 {best.map3:.4f} ({best.name} {best.encoding} tta={best.tta} balance={best.balance})")
    if args.write:
        bs = best_single
        name = f"test{'_tta' if bs.tta else ''}{'_bal' if bs.balance else ''}.csv.gz"
        pred = work / "runs" / f"s16-{bs.encoding}-s0" / name
        confusion_png(pred, labels16, REPO / args.confusion,
                      f"{bs.name} {bs.encoding} {args.image_size}px, TTA {bs.tta}, balance {bs.balance}: "
                      f"MAP@3 {bs.map3:.3f} on {bs.n} Kaggle test drawings")
        write_section(REPO / args.results, BEGIN, END, report(args, run, rows, best, time.time() - start))
        print(f"wrote {args.results} and {args.confusion}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
