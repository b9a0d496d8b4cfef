"""The work behind prepare_data.py: detect the layout, pack every class in parallel, pack the test CSV, write meta.json.

Sketch-RNN files carry their own test split: each class writes it beside its blocks and it is gathered into the
store's ``test/`` folder after the classes (labelled by class), instead of a Kaggle test CSV.

Kept out of the CLI so train.py can prepare the synthetic default on the fly and tests can call it directly.
"""
from __future__ import annotations

import json
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from .atomic import atomic_dir, clean_temp_files, write_bytes, write_text
from .formats import first_line, split_name
from .pack import pack_class, pack_file
from .readers import Layout, Row, detect_layout, read_kaggle_test, read_ndjson, read_solution
from .store import FORMAT_VERSION, Block
from .strokes import DrawingError, check_drawing, loads_drawing


# The embedded synthetic store, prepared on first use when a run names no --data (repo-relative, git-ignored).
SYNTHETIC_DIR = Path(__file__).resolve().parents[1] / "data" / "synthetic"


@dataclass
class PrepareOptions:
    """Settings of one prepare run (the CLI flags of prepare_data.py)."""

    output: str
    block_size: int = 10000
    val_every: int = 30
    classes: str | None = None
    max_per_class: int | None = None
    test: str | None = None
    no_test: bool = False
    workers: int = 1
    synthetic_per_class: int = 1500
    seed: int = 0
    split_by: str = "file"


SPLIT_BY = ("file", "keyid")


def sniff_kind(layout: Layout) -> str:
    """'raw' when the first valid drawing has a time list per stroke, else 'simplified' (always for .bin / .npz)."""
    if layout.kind:
        return layout.kind
    for path in layout.files.values():
        for i, row in enumerate(layout.read(path)):
            if i > 1000:
                break
            try:
                d = loads_drawing(row.drawing) if isinstance(row.drawing, (str, bytes)) else row.drawing
                return "raw" if check_drawing(d) == 3 else "simplified"
            except DrawingError:
                continue
    raise ValueError("no valid drawing found in the first rows of the input")


def _select_classes(files: dict[str, Path], spec: str | None) -> dict[str, Path]:
    if not spec:
        return files
    names = Path(spec).read_text().splitlines() if Path(spec).is_file() else spec.split(",")
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in files]
    if unknown:
        raise ValueError(f"classes not in the input: {', '.join(unknown)}")
    return {n: files[n] for n in names}


def _pack_test(args, out: Path, kind: str, classes: list[str], test: Path, unknown: int = -2) -> dict:
    """Pack a Kaggle test CSV into out/test, labelled from its solution file when one lies beside it.

    A drawing whose solution word is not among classes gets label ``unknown``: -2 drops it (a store restricted to
    some classes), -1 keeps it unlabelled (prediction, where every drawing needs a row).
    """
    stem = test.name.removesuffix(".gz").removesuffix(".csv")
    sol_path = test.with_name(stem + "_solution.csv")
    solution = read_solution(sol_path) if sol_path.is_file() else {}
    index = {c.replace(" ", "_"): i for i, c in enumerate(classes)}

    def label_of(block):
        if not solution:
            return np.full(len(block), -1, np.int16)
        # a key_id missing from the solution or a word not among the classes; -2 is counted as "unknown class"
        return np.array([index.get(solution.get(int(k), ""), unknown) for k in block.key_id], np.int16)

    with atomic_dir(out / "test") as tmp:
        stats = pack_file(test, "kaggle_test", kind, label_of, tmp, args.block_size, None, train_prefix="block")
        stats.update(source=str(test), labelled=bool(solution))
        write_text(tmp / "stats.json", json.dumps(stats))
    return stats


def _check_settings(out: Path, settings: dict) -> None:
    """Refuse to mix a rerun into a store prepared with other settings (its finished classes would be reused)."""
    path = out / "prepare.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != settings:
            diff = ", ".join(f"{k}: {old.get(k)} -> {v}" for k, v in settings.items() if old.get(k) != v)
            raise ValueError(f"{out} holds a store prepared with other settings ({diff}); use a new --output")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(settings))


def _default_test(source: Path, kind: str) -> Path | None:
    """The Kaggle test CSV beside a train folder, plain or gzip-compressed, if there is one."""
    for name in (f"test_{kind}.csv", f"test_{kind}.csv.gz"):
        if (source.parent / name).is_file():
            return source.parent / name
    return None


def _gather_test(out: Path, classes: list[str], stats: dict) -> dict | None:
    """Copy each class's own test blocks (Sketch-RNN's test split) into out/test as block_<class>_<b>.qdb."""
    sizes = [n for c in classes for n in stats[c].get("test", [])]
    if not sizes:
        return None
    with atomic_dir(out / "test") as tmp:
        for idx in range(len(classes)):
            for b, path in enumerate(sorted((out / "classes" / f"{idx:03d}").glob("test_*.qdb"))):
                write_bytes(tmp / f"block_{idx:03d}_{b:04d}.qdb", path.read_bytes())
        test = {"read": sum(sizes), "train": sizes, "skipped": {}, "source": "the files' own test split",
                "labelled": True}
        write_text(tmp / "stats.json", json.dumps(test))
    return test


def prepare(args: PrepareOptions, source: Path, name: str | None = None) -> dict:
    out = Path(args.output)
    if args.test and not args.no_test and not Path(args.test).is_file():  # before packing, not after
        raise ValueError(f"{args.test}: no such test CSV")
    if args.split_by not in SPLIT_BY:
        raise ValueError(f"split_by must be one of {', '.join(SPLIT_BY)}, got {args.split_by!r}")
    layout = detect_layout(source)
    own_split = layout.name == "npz" and args.split_by == "file"
    if own_split and args.test and not args.no_test:
        raise ValueError("--test cannot be combined with .npz files split by file (they carry their own test split); "
                         "use --split-by keyid or drop --test")
    files = _select_classes(layout.files, args.classes)
    kind = sniff_kind(layout)
    classes = sorted(files)  # Python's sorted(): case-sensitive codepoint order, documented in qdraw/store.py
    # name: what the input is when source is a temporary folder (the synthetic set), so reruns compare equal
    settings = {"version": FORMAT_VERSION, "input": name or str(source), "kind": kind, "classes": classes,
                "block_size": args.block_size, "val_every": args.val_every, "max_per_class": args.max_per_class}
    if layout.name == "npz":  # only here, so stores prepared before the option existed still compare equal
        settings["split_by"] = args.split_by
    _check_settings(out, settings)
    for folder in (out, out / "classes"):  # what killed runs were writing
        clean_temp_files(folder)
    work = partial(_pack_one, layout=layout, kind=kind, out=out, args=args)
    stats = {}
    with ProcessPoolExecutor(max(1, args.workers)) as pool:
        results = pool.map(work, enumerate(classes))
        for cls, st in zip(classes, tqdm(results, total=len(classes), desc=f"pack {kind}", unit="class")):
            stats[cls] = st  # not `name`: that one says what the input is, for meta.json
    if own_split:
        test_stats = _gather_test(out, classes, stats)
    else:
        test = None if args.no_test else Path(args.test) if args.test else _default_test(source, kind)
        test_stats = _pack_test(args, out, kind, classes, test) if test and test.is_file() else None
    meta = {"version": FORMAT_VERSION, "kind": kind, "classes": classes, "block_size": args.block_size,
            "val_every": args.val_every, "layout": layout.name, "source": name or str(source),
            "train_block_sizes": {str(i): stats[c]["train"] for i, c in enumerate(classes)},
            "val_sizes": {str(i): stats[c]["val"] for i, c in enumerate(classes)},
            "test": test_stats}
    if own_split:
        meta["split"] = "file"
    write_text(out / "classes.txt", "".join(c + "\n" for c in classes))
    write_text(out / "meta.json", json.dumps(meta, indent=1))  # last: its presence marks the store complete
    return {"classes": stats, "test": test_stats, "kind": kind}


def _pack_one(item: tuple[int, str], layout: Layout, kind: str, out: Path, args) -> dict:
    idx, name = item
    return pack_class(layout.files[name], layout.name, kind, idx, out / "classes" / f"{idx:03d}",
                      args.block_size, args.val_every, limit=args.max_per_class, split_by=args.split_by)


def report(result: dict) -> None:
    """Print counts: rows read, kept for train/val/test, skipped per reason (per class when any)."""
    total, skipped = Counter(), Counter()
    for name, st in result["classes"].items():
        total["read"] += st["read"]
        total["train"] += sum(st["train"])
        total["val"] += sum(st["val"])
        skipped.update(st["skipped"])
        if st["skipped"]:
            why = ", ".join(f"{k}: {v}" for k, v in st["skipped"].items())
            print(f"  {name}: skipped {sum(st['skipped'].values())} ({why})")
    print(f"{result['kind']}: {len(result['classes'])} classes, {total['read']} rows read, {total['train']} train, "
          f"{total['val']} val, {sum(skipped.values())} skipped" + (f" ({dict(skipped)})" if skipped else ""))
    if result["test"]:
        t = result["test"]
        labelled = "labelled" if t["labelled"] else "unlabelled"
        print(f"test: {t['read']} rows read, {sum(t['train'])} packed ({labelled}),"
              f" {sum(t['skipped'].values())} skipped" + (f" ({t['skipped']})" if t["skipped"] else ""))


def prepare_input(input: str, args: PrepareOptions) -> dict:
    """Prepare a folder, or the embedded synthetic set when input is 'synthetic'; return the counts for report()."""
    if input == "synthetic":
        from .synthetic import write_ndjson
        with tempfile.TemporaryDirectory() as src:
            write_ndjson(Path(src), args.synthetic_per_class, seed=args.seed)
            return prepare(args, Path(src), name=f"synthetic(per_class={args.synthetic_per_class}, seed={args.seed})")
    return prepare(args, Path(input))


def pack_eval_input(source: Path, out: Path, classes: list[str], block_size: int = 10000) -> dict:
    """Pack drawings to predict into a test-only store at out, labelled by the given class list where possible.

    The one place any --input of predict.py turns into a (temporary) store: rows go through pack_file, so every
    input gets the same checks and counted skips as prepare_data.py. source is one of
      - a Kaggle test CSV (labelled from ``<stem>_solution.csv`` beside it when present);
      - one Google ndjson file, ``.ndjson`` or ``.ndjson.gz``, simplified or raw (a per-word download, or what
        ``serve.py --collect FILE`` writes, which mixes words): each drawing labelled by its record's ``word``;
      - a folder of per-class files (``<word>.ndjson``, Kaggle train CSVs, .bin, .npz), labelled by file name.
    A word outside classes leaves its drawing unlabelled (-1): still predicted, not scored; the counts of such words
    are returned under "unknown_words". Returns the counts; writes meta.json with the given classes so
    qdraw.store.Store opens it.
    """
    source = Path(source)
    out.mkdir(parents=True, exist_ok=True)
    index = {c: i for i, c in enumerate(classes)}
    unknown: Counter = Counter()
    if source.is_dir():
        layout = detect_layout(source)
        files = [(path, layout.name, _word_labels(lambda keys, w=name: [w] * len(keys), index, unknown))
                 for name, path in sorted(layout.files.items())]
    elif (split_name(source.name) or ("", ""))[1] == "ndjson":
        layout = Layout("ndjson", {source.name: source})
        words = _words_by_key(source)
        files = [(source, "ndjson", _word_labels(lambda keys: [words.get(int(k)) for k in keys], index, unknown))]
    elif source.name.endswith((".csv", ".csv.gz")) and "drawing" in first_line(source):
        kind = _kind_of(read_kaggle_test(source), source)
        stats = _pack_test(PrepareOptions(output=str(out), block_size=block_size), out, kind, classes, source,
                           unknown=-1)
        return _write_eval_meta(out, source, kind, classes, block_size, stats)
    else:
        raise ValueError(f"{source}: not a Kaggle test CSV (key_id,countrycode,drawing) nor a Google ndjson file; "
                         "--input takes a test CSV (.csv, .csv.gz), one <word>.ndjson or .ndjson.gz file, a prepared "
                         "store, or a folder of per-class .ndjson, .csv, .bin or .npz files")
    try:
        kind = sniff_kind(layout)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    stats = {"read": 0, "train": [], "skipped": Counter()}
    with atomic_dir(out / "test") as tmp:
        for n, (path, fmt, label_of) in enumerate(files):
            st = pack_file(path, fmt, kind, label_of, tmp, block_size, None, train_prefix=f"block_{n:04d}")
            stats["read"] += st["read"]
            stats["train"] += st["train"]
            stats["skipped"].update(st["skipped"])
    stats["labelled"] = sum(stats["train"]) > sum(unknown.values())
    stats["unknown_words"] = dict(sorted(unknown.items()))
    return _write_eval_meta(out, source, kind, classes, block_size, stats)


def _write_eval_meta(out: Path, source: Path, kind: str, classes: list[str], block_size: int, stats: dict) -> dict:
    """Write the meta.json of an eval store (test split only, the model's classes); return stats with the kind."""
    meta = {"version": FORMAT_VERSION, "kind": kind, "classes": classes, "block_size": block_size, "val_every": 0,
            "layout": "eval", "source": str(source), "train_block_sizes": {}, "val_sizes": {}, "test": stats}
    write_text(out / "meta.json", json.dumps(meta))
    return stats | {"kind": kind}


def _words_by_key(path: Path) -> dict[int, str | None]:
    """{key_id: word} of an ndjson file, read before packing: the fast parser keeps no words, and a key_id (Google's
    unique drawing id; serve.py draws it at random from 9e15) finds a drawing's record again after skipped rows."""
    return {row.key_id: row.word for row in read_ndjson(path) if not row.error}


def _word_labels(words_of: Callable[[np.ndarray], list], index: dict[str, int],
                 unknown: Counter) -> Callable[[Block], np.ndarray]:
    """label_of for pack_file: each packed drawing's class from its word, words_of(key_ids); a word outside index
    (or none) gives -1 and is counted in unknown, so the caller can say which drawings were predicted but not scored."""
    def label_of(block: Block) -> np.ndarray:
        words = words_of(block.key_id)
        unknown.update(w or "(no word)" for w in words if w not in index)
        return np.array([index.get(w, -1) for w in words], np.int16)
    return label_of


def _kind_of(rows: Iterator[Row], source: Path) -> str:
    """'raw' or 'simplified' from the first readable drawing: a bad first row is skipped (and counted when packed)."""
    for i, row in enumerate(rows):
        if i >= 1000:
            break
        try:
            if not row.error:
                return "raw" if check_drawing(loads_drawing(row.drawing)) == 3 else "simplified"
        except DrawingError:
            continue
    raise ValueError(f"{source}: no readable drawing in the first rows of the test CSV")


def ensure_synthetic(path: str | Path = SYNTHETIC_DIR, workers: int = 1) -> Path:
    """The synthetic store at path, prepared there first when it is absent (the default data of train.py)."""
    path = Path(path)
    if not (path / "meta.json").is_file():
        prepare_input("synthetic", PrepareOptions(output=str(path), workers=max(1, workers)))
    return path
