"""The second stage measured on the 16 large real classes: blends (mean, gmean, rank vote), the LightGBM stacker with
and without drawing features, and one round of pseudo-labelling; the table goes into docs/RESULTS.md.

Every step runs the project's CLIs as a user would: predict.py on the validation and test splits of the store the
checkpoints were trained on, blend2.py and stack.py on those files (the stacker learns on the validation split,
5 folds, and is applied to the test split), prepare_data.py for the raw twin store that gives the time features,
pseudo_label.py on the test blend and train.py --resume for the fine-tunes. Everything is scored on the store's
labelled test split (Kaggle's test rows of the 16 classes, 1,005 drawings), paired by drawing, with standard errors
over drawings (experiments/common.py). Finished steps are kept under --work and reused by a rerun.

    python -m experiments.second_stage --store runs/recipes/s16 \
        --checkpoints runs/recipes/runs/recipe-s0/last.pth runs/recipes/runs/recipe-s1/last.pth
    python -m experiments.second_stage --store data/s16 --checkpoints a/last.pth b/last.pth c/last.pth \
        --fine-tune-epochs 2 --pseudo-share 0.2 --no-write
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from experiments.common import CLASSES_16, REPO, Runner, machine, paired, per_drawing_ap, write_section
from qdraw.features import lookup, store_features
from qdraw.predictions import read_predictions
from qdraw.store import Store


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="the store the checkpoints were trained on (with a test split)")
    p.add_argument("--checkpoints", nargs="+", required=True, help="2 or more last.pth / best.pth of train.py")
    p.add_argument("--data-root", default=str(REPO.parent / "shared/data/quickdraw"), help="the real drawings")
    p.add_argument("--work", default="runs/second_stage",
                   help="predictions, stores and runs (default runs/second_stage)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True, help="predict with TTA (default on)")
    p.add_argument("--pseudo-from", default="vote", choices=["mean", "gmean", "vote"],
                   help="the test blend that pseudo-labels (default vote)")
    p.add_argument("--top-share", type=float, default=0.5, help="pseudo_label.py --top-share (default 0.5)")
    p.add_argument("--pseudo-share", type=float, default=0.1, help="train.py --pseudo-share (default 0.1)")
    p.add_argument("--fine-tune", type=int, default=0,
                   help="index in --checkpoints of the model fine-tuned (default 0)")
    p.add_argument("--fine-tune-epochs", type=int, default=2, help="epochs added by each fine-tune (default 2)")
    p.add_argument("--fine-tune-flags", default="",
                   help="more train.py flags for both fine-tunes, e.g. \"--class-sampling balanced --samples-per-class "
                   "200\" for a cheaper epoch (default: none)")
    p.add_argument("--no-pseudo", dest="pseudo", action="store_false", help="skip the pseudo-labelling round")
    p.add_argument("--lock", default=None, help="flock this file around each heavy step (default: none)")
    p.add_argument("--results", default="docs/RESULTS.md", help="markdown to update (default docs/RESULTS.md)")
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=True, help="write --results")
    return p


class Lab:
    """The work folder, the runner, and steps that are reused when their output exists."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.work = args, (REPO / args.work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.run = Runner(args.lock)
        self.store = Path(args.store).resolve()
        self.val_labels, self.test_labels = self.work / "val_labels.csv", self.work / "test_labels.csv"

    def step(self, out: Path, script: str, *argv: str) -> Path:
        """Run script unless out exists (then only log its command line)."""
        if out.exists():
            self.run.note(script, *argv)
        else:
            self.run(script, *argv)
        return out

    def predict(self, name: str, ckpt: Path, split: str, store: Path | None = None) -> Path:
        out = self.work / f"{name}_{split}.csv.gz"
        labels = self.val_labels if split == "val" else self.test_labels
        return self.step(out, "predict.py", "--checkpoint", str(ckpt), "--input", str(store or self.store),
                         "--split", split, *(["--tta"] if self.args.tta else []), "--preds", str(out), "--labels",
                         str(labels), "--quiet", "--workers", "2")

    def raw_twin(self) -> Path:
        """The raw drawings of the same classes, split by the same key_id hash: the time features' source."""
        meta = json.loads((self.store / "meta.json").read_text())
        out = self.work / "raw16"
        classes = ",".join(meta["classes"]) if meta["classes"] else CLASSES_16
        return self.step(out / "meta.json", "prepare_data.py", "--input",
                         str(Path(self.args.data_root) / "kaggle/train_raw"), "--output", str(out), "--classes",
                         classes, "--val-every", str(meta["val_every"]), "--workers", "2").parent


def blends(lab: Lab, test: list[Path]) -> dict[str, Path]:
    """Test predictions of every blend: mean, gmean, vote 1/(r+1) (the default) and vote 5-r."""
    out = {}
    for name, flags in [("mean", ["--method", "mean"]), ("gmean", ["--method", "gmean"]),
                        ("vote", ["--method", "vote"]), ("vote 5-r", ["--method", "vote", "--rank-weight", "5-r"])]:
        path = lab.work / f"blend_{name.replace(' ', '_')}_test.csv.gz"
        out[name] = lab.step(path, "blend2.py", *map(str, test), *flags, "--preds", str(path))
    return out


def stacks(lab: Lab, val: list[Path], test: list[Path], raw: Path) -> dict[str, Path]:
    """Test predictions of the stacker with model features only, + the candidate's class, + drawing features."""
    base = ["--val", *map(str, val), "--labels", str(lab.val_labels), "--test", *map(str, test), "--folds", "5",
            "--min-data-in-leaf", "10", "--threads", "2"]
    out = {}
    for name, flags in [("stack, model features", ["--features", "none"]),
                        ("stack + class", ["--features", "class"]),
                        ("stack + class + drawing features", ["--drawings", str(lab.store), str(raw)])]:
        key = name.replace(" + ", "_").replace(", ", "_").replace(" ", "_")
        path = lab.work / f"{key}_test.csv.gz"
        out[name] = lab.step(path, "stack.py", *base, *flags, "--preds", str(path), "--importance",
                             str(lab.work / f"{key}_importance.csv"))
    return out


def pseudo_round(lab: Lab, ckpt: Path, blend: Path) -> tuple[dict[str, Path], dict]:
    """One pseudo-labelling round: label the test split from the blend, fine-tune the model for a few epochs with and
    without the pseudo-labels (same start, schedule and seed), and predict the test split with both."""
    args = lab.args
    pseudo_store = lab.work / "s16_pseudo"
    lab.step(pseudo_store / "pseudo" / "meta.json", "pseudo_label.py", "--preds", str(blend), "--input",
             str(lab.store), "--output", str(pseudo_store), "--top-share", str(args.top_share))
    epochs = int(torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"]) + 1 + args.fine_tune_epochs
    out = {}
    for name, share in [("fine-tune, no pseudo-labels", 0.0), (f"fine-tune + pseudo-labels {args.pseudo_share:g}",
                                                                args.pseudo_share)]:
        run = lab.work / ("ft-pseudo" if share else "ft-plain")
        lab.step(run / "last.pth", "train.py", "--config", str(ckpt.parent / "config.yaml"), "--resume", str(ckpt),
                 "--data", str(pseudo_store), "--output", str(run), "--epochs", str(epochs), "--pseudo-share",
                 str(share), "--no-progress", "--no-tensorboard", "--workers", "2", *shlex.split(args.fine_tune_flags))
        out[name] = lab.predict(run.name, run / "last.pth", "test", pseudo_store)
    return out, json.loads((pseudo_store / "pseudo" / "meta.json").read_text())


def coverage(lab: Lab, raw: Path, val: Path, test: Path) -> str:
    """One sentence: how many validation and test drawings have a raw twin (the time features) and a countrycode."""
    keys, feats = store_features([Store(lab.store), Store(raw)])
    parts = []
    for split, path in (("validation", val), ("test", test)):
        found = lookup(keys, feats, read_predictions(path).key_ids)
        parts.append(f"{np.isfinite(found['max_time']).mean():.1%} of the {len(found['max_time'])} {split} drawings")
    return (f"Raw twins (time features) exist for {' and '.join(parts)} (the raw slice holds ~10-90 drawings a class), "
            "so the time features are mostly missing here; Kaggle's test rows carry no `recognized`, so stack.py drops "
            "it.")


def table(rows: dict[str, Path], labels: Path, ref: str, ref2: str) -> str:
    aps = {name: per_drawing_ap(path, labels)[1] for name, path in rows.items()}
    lines = [f"| method | test MAP@3 | vs {ref} (paired) | vs {ref2} (paired) |", "|---|---|---|---|"]
    for name, ap in aps.items():
        d1 = "—" if name == ref else "{:+.4f} ± {:.4f}".format(*paired([ap], [aps[ref]]))
        d2 = "—" if name == ref2 else "{:+.4f} ± {:.4f}".format(*paired([ap], [aps[ref2]]))
        lines.append(f"| {name} | {ap.mean():.4f} | {d1} | {d2} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    start = time.time()
    if len(args.checkpoints) < 2:
        raise SystemExit("error: give at least 2 --checkpoints")
    lab = Lab(args)
    ckpts = [Path(c).resolve() for c in args.checkpoints]
    names = [f"m{i}-{c.parent.name}-{c.stem}" for i, c in enumerate(ckpts)]
    val = [lab.predict(n, c, "val") for n, c in zip(names, ckpts)]
    test = [lab.predict(n, c, "test") for n, c in zip(names, ckpts)]
    raw = lab.raw_twin()
    rows = {f"single: {n}": p for n, p in zip(names, test)}
    blended = blends(lab, test)
    rows |= {f"blend {k}": v for k, v in blended.items()}
    rows |= stacks(lab, val, test, raw)
    body = [table(rows, lab.test_labels, f"single: {names[0]}", "blend mean"), "", coverage(lab, raw, val[0], test[0])]
    imp = lab.work / "stack_class_drawing_features_importance.csv"
    top = [ln.split(",") for ln in imp.read_text().splitlines()[1:]]
    body += ["", "Gain share of every feature of the stacker with drawing features (mean of the 5 fold boosters): " +
             ", ".join(f"{f} {float(s):.3f}" for f, _, s, _ in top) + "."]
    if args.pseudo:
        ft, meta = pseudo_round(lab, ckpts[args.fine_tune], blended[args.pseudo_from])
        acc = meta["label_accuracy"]
        body += ["", f"Pseudo-labelling round: {meta['drawings']} of {meta['candidates']} test drawings labelled by "
                 f"the {args.pseudo_from} blend (top {args.top_share:g} of each predicted class"
                 + (f"; {acc:.4f} of those labels right" if acc is not None else "") +
                 f"), then {names[args.fine_tune]} fine-tuned {args.fine_tune_epochs} more epochs from its "
                 "checkpoint with and without them:", "",
                 table({f"single: {names[args.fine_tune]}": test[args.fine_tune]} | ft, lab.test_labels,
                       f"single: {names[args.fine_tune]}", "fine-tune, no pseudo-labels")]
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = "\n".join(["### The second stage (generated by experiments/second_stage.py)", "",
                      f"Machine: {machine()}. Wall time of this step: {(time.time() - start) / 60:.1f} min "
                      f"(steps reused from earlier invocations not counted).", "", *body, "",
                      f"Reproduce: `python -m experiments.second_stage {argv}`; the commands it ran:", "", "```",
                      *lab.run.commands, "```"])
    print(text)
    if args.write:
        write_section(REPO / args.results, "<!-- stage2:begin -->", "<!-- stage2:end -->", text)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
