"""End-to-end demonstration on a CPU in a few minutes: synthetic doodles -> store -> two models -> TTA predictions
-> blend -> a MAP@3 table, a picture of the inputs, the training curves and a submission.

Each stage is the project's own CLI run as a subprocess (prepare_data.py, train.py, predict.py, blend2.py,
visualize.py), exactly the commands a user would type; they are printed as they run. The two models share
configs/demo.yaml and differ in the stroke encoding (default rgb and time, which the synthetic set's timing allows).
Scores are read from the files the CLIs write (prediction CSVs + labels), on the store's validation split, with
last.pth (no model selection on the scored drawings).

    python demo.py                                 # about 3-5 minutes on 2 CPU cores, outputs in runs/demo
    python demo.py --quick --output /tmp/demo      # a two-epoch smoke run in about a minute
    python demo.py --encodings grey,rgb --epochs 6
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from qdraw.metrics import format_table, ranking_metrics
from qdraw.predictions import labels_for, read_labels, read_predictions

REPO = Path(__file__).resolve().parent
CHANCE_MAP3 = (1 + 1 / 2 + 1 / 3) / 16  # MAP@3 of a uniform random ranking of 16 classes: 0.1146


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--output", default="runs/demo", help="folder for everything the demo writes "
                        "(default runs/demo)")
    parser.add_argument("--config", default=str(REPO / "configs/demo.yaml"),
                        help="train.py config of both models (default configs/demo.yaml)")
    parser.add_argument("--encodings", default="rgb,time",
                        help="two or more comma-separated encodings, one model each (default rgb,time)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per model (default: the config's)")
    parser.add_argument("--samples-per-class", type=int, default=None,
                        help="training drawings per class per epoch (default: the config's)")
    parser.add_argument("--synthetic-per-class", type=int, default=1500,
                        help="synthetic drawings generated per class (default 1500)")
    parser.add_argument("--method", choices=("mean", "gmean"), default="gmean", help="blend (default gmean)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke budget: 300 drawings a class, 2 epochs of 64 a class (overrides the three above)")
    return parser


def run(script: str, *args: str) -> None:
    """Run one CLI of this repo with this interpreter; stop the demo with its output if it fails."""
    shown = "python " + " ".join(shlex.quote(a) for a in (script, *args))
    print(f"$ {shown}", flush=True)
    start = time.time()
    done = subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO, text=True, check=False,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"error: step failed with exit code {done.returncode}: {shown}\n{done.stdout[-3000:]}")
    print(f"  done in {time.time() - start:.0f} s", flush=True)


def score(pred_csv: Path, labels_csv: Path) -> dict[str, float]:
    """MAP@3, top-1 and top-3 of a prediction CSV against a key_id,word labels CSV."""
    pred = read_predictions(pred_csv)
    return ranking_metrics(pred.probs, labels_for(pred.key_ids, read_labels(labels_csv, pred.classes)))


def train_and_predict(args: argparse.Namespace, out: Path, store: Path, encoding: str) -> Path:
    """Train one model with the demo config and this encoding, predict the validation split with TTA."""
    run_dir = out / encoding
    budget = [f"--{flag}={value}" for flag, value in (("epochs", args.epochs),
                                                      ("samples-per-class", args.samples_per_class)) if value]
    if args.epochs:  # one cosine period over the whole (possibly shortened) run
        budget.append(f"--period={args.epochs}")
    run("train.py", "--config", args.config, "--data", str(store), "--encoding", encoding, *budget,
        "--output", str(run_dir), "--overwrite", "--no-progress", "--no-tensorboard")
    pred = run_dir / "val_tta.csv.gz"
    run("predict.py", "--checkpoint", str(run_dir / "last.pth"), "--input", str(store), "--split", "val", "--tta",
        "--preds", str(pred), "--labels", str(out / "val_labels.csv"), "--submission",
        str(run_dir / "submission_val.csv"), "--workers", "1", "--quiet")
    return pred


def main(args: argparse.Namespace) -> None:
    if args.quick:
        args.synthetic_per_class, args.epochs, args.samples_per_class = 300, 2, 64
    encodings = [e.strip() for e in args.encodings.split(",") if e.strip()]
    if len(encodings) < 2 or len(set(encodings)) != len(encodings):
        raise SystemExit(f"error: --encodings needs two or more different encodings, got {args.encodings!r}")
    if not Path(args.config).is_file():
        raise SystemExit(f"error: no config file {args.config}")
    start, out = time.time(), Path(args.output).resolve()
    store = out / "data"
    if store.exists():
        # --quick and --synthetic-per-class change the store's settings, which prepare_data.py rightly refuses to
        # mix into an existing store; the demo's own store is cheap to regenerate (6 s)
        if not (store / "prepare.json").is_file():
            raise SystemExit(f"error: {store} exists and is not a store written by prepare_data.py")
        shutil.rmtree(store)
    run("prepare_data.py", "--input", "synthetic", "--output", str(store),
        "--synthetic-per-class", str(args.synthetic_per_class))
    preds = {enc: train_and_predict(args, out, store, enc) for enc in encodings}
    blend = out / f"blend_{args.method}_val.csv.gz"
    run("blend2.py", "--method", args.method, "--submission", str(out / "submission.csv"), "--preds", str(blend),
        "--labels", str(out / "val_labels.csv"), *[str(p) for p in preds.values()])
    run("visualize.py", "--data", str(store), "--output", str(out / "grid.png"), "--n", "6", "--size", "64")
    labels = out / "val_labels.csv"
    model = yaml.safe_load(Path(args.config).read_text()).get("model", "?")
    rows = [(f"{model} {enc} + TTA", score(p, labels)) for enc, p in preds.items()]
    rows.append((f"blend ({args.method})", score(blend, labels)))
    n = len(read_labels(labels, read_predictions(blend).classes))
    print("\n" + format_table(rows, title=f"MAP@3 on the synthetic validation split ({n} drawings, 16 classes; "
                                          f"chance {CHANCE_MAP3:.4f}):"))
    print(f"\ninput pictures: {out / 'grid.png'}")
    for enc in encodings:
        print(f"training curves ({enc}): {out / enc / 'curves.png'}")
    print(f"submission (blend, key_id,word): {out / 'submission.csv'}")
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
