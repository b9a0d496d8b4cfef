"""Show what the network sees: a PNG grid of real drawings (rows) in each encoding, whole and channel by channel.

Images are rendered exactly as the loaders render them (same kernel, size and line width, black background);
the composite of a 3-channel encoding is shown as RGB, each channel as grey levels 0..255.

    python visualize.py --data data/kaggle_simplified --output grid.png
    python visualize.py --data data/raw --encodings grey,rgb,time --n 8 --size 128 --output grid.png
    python visualize.py --data data/kaggle_simplified --augment strong --samples 6 --output augmented.png

With --augment (a preset of qdraw/augment.py or name=value strengths, as train.py takes them) the grid shows each
drawing in the first encoding, then --samples augmented versions of it: the draws of epochs 0, 1, ... of a run
seeded --seed, exactly as the training loader would augment that item.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import data_loader_rgb  # noqa: F401  (registers grey, rgb)
import data_loader_time  # noqa: F401  (registers time)
from qdraw.atomic import atomic_write
from qdraw.augment import Augment, augment_arrays, parse_augment
from qdraw.encoding import Encoding, check_time, get_encoding
from qdraw.raster import check_geometry, rasterize
from qdraw.store import Block, Store, concat_blocks


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="prepared store folder (prepare_data.py)")
    p.add_argument("--output", required=True, help="PNG file to write")
    p.add_argument("--encodings", default=None,
                   help="comma list (default: grey,rgb, plus time when the store has timing)")
    p.add_argument("--n", type=int, default=8, help="drawings, one a row (default 8)")
    p.add_argument("--size", type=int, default=128, help="image size in px (default 128)")
    p.add_argument("--line-width", type=int, default=None, help="line width in px (default round(3 * size / 128))")
    p.add_argument("--split", choices=["train", "val", "test"], default="val",
                   help="where to take drawings from (default val; train when the store has no validation split)")
    p.add_argument("--seed", type=int, default=0, help="seed of the drawing choice and of the augmentation (default 0)")
    p.add_argument("--augment", type=parse_augment, default=None,
                   help="show augmented samples: a preset (light, medium, strong) or name=value strengths "
                   "(default: none, the encodings grid)")
    p.add_argument("--samples", type=int, default=6, help="augmented samples per drawing with --augment (default 6)")
    return p


def pick_drawings(store: Store, split: str, n: int, seed: int) -> Block:
    """n drawings of distinct classes where possible (test: any n), chosen at random but reproducibly."""
    rng = np.random.default_rng(seed)
    if split == "test":
        paths = store.test_blocks()
        if not paths:
            raise ValueError(f"{store.root}: no test split")
        block = store.read_block(paths[0])
        return block.select(np.sort(rng.choice(len(block), min(n, len(block)), replace=False)))
    files = {c: (store.val_blocks(c) if split == "val" else store.train_blocks(c))[:1]
             for c in range(store.num_classes)}
    classes = [c for c, f in files.items() if f]
    if not classes:
        raise ValueError(f"{store.root}: no {split} drawings")
    chosen = rng.choice(classes, n, replace=n > len(classes))
    picked = []
    for c in chosen:
        block = store.read_block(files[c][0])
        picked.append(block.select([rng.integers(len(block))]))
    return concat_blocks(picked)


def panels(block: Block, encodings: list[Encoding], size: int, line_width: int | None) -> list[tuple[str, np.ndarray]]:
    """(title, images) columns: per encoding its composite (N, S, S[, 3]) and, for 3 channels, each channel."""
    cols = []
    for enc in encodings:
        img = rasterize(block.xy, block.t if enc.needs_time else None, block.strokes, block.drawings, enc, size,
                        line_width)
        names = enc.channel_names or tuple(f"channel {i}" for i in range(enc.channels))
        if enc.channels == 1:
            cols.append((f"{enc.name}: {names[0]}", img[:, 0]))
            continue
        cols.append((enc.name, img.transpose(0, 2, 3, 1)))
        cols += [(f"{enc.name} {'RGB'[i]}: {names[i]}", img[:, i]) for i in range(enc.channels)]
    return cols


def augmented_panels(block: Block, enc: Encoding, augment: Augment, samples: int, size: int, line_width: int | None,
                     seed: int) -> list[tuple[str, np.ndarray]]:
    """(title, images) columns: the drawings as they are, then as epochs 0..samples-1 augment them (item key = row)."""
    keys = np.arange(len(block))
    cols = []
    for epoch in [None, *range(samples)]:
        xy, t, strokes, drawings = block.xy, block.t, block.strokes, block.drawings
        if epoch is not None:
            xy, t, strokes, drawings = augment_arrays(xy, t, strokes, drawings, keys, seed, epoch, augment.params)
        img = rasterize(xy, t if enc.needs_time else None, strokes, drawings, enc, size, line_width)
        cols.append(("original" if epoch is None else f"epoch {epoch}",
                     img[:, 0] if enc.channels == 1 else img.transpose(0, 2, 3, 1)))
    return cols


def save_grid(columns: list[tuple[str, np.ndarray]], row_labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(row_labels)
    fig, axes = plt.subplots(n, len(columns), figsize=(1.6 * len(columns), 1.7 * n + 0.3), squeeze=False)
    for j, (title, images) in enumerate(columns):
        for i in range(n):
            ax = axes[i, j]
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=8)
    fig.tight_layout()
    fmt = path.suffix.lstrip(".").lower() or "png"
    if fmt not in fig.canvas.get_supported_filetypes():
        plt.close(fig)
        known = ", ".join(fig.canvas.get_supported_filetypes())
        raise ValueError(f"Format {fmt!r} is not supported (use one of {known})")
    with atomic_write(path) as f:
        fig.savefig(f, format=fmt, dpi=100, facecolor="white")
    plt.close(fig)


def main(args: argparse.Namespace) -> None:
    try:
        store = Store(args.data)
        names = args.encodings.split(",") if args.encodings else ["grey", "rgb"] + (["time"] if store.has_time else [])
        encodings = [get_encoding(name.strip()) for name in names]
        for enc in encodings:
            check_time(enc, store.has_time, store.root)
        check_geometry(args.size, args.line_width)
        if args.n < 1 or args.samples < 1:
            raise ValueError(f"--n and --samples must be >= 1, got {args.n} and {args.samples}")
        augment = Augment.from_config(args.augment) if args.augment is not None else None
        if not Path(args.output).resolve().parent.is_dir():
            raise ValueError(f"--output {args.output}: no such folder {Path(args.output).parent}")
        split = args.split
        if split == "val" and not any(store.val_blocks(c) for c in range(store.num_classes)):
            split = "train"
        block = pick_drawings(store, split, args.n, args.seed)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    labels = [store.classes[lab] if lab >= 0 else f"key {key}" for lab, key in zip(block.label, block.key_id)]
    try:
        columns = (augmented_panels(block, encodings[0], augment, args.samples, args.size, args.line_width, args.seed)
                   if augment is not None else panels(block, encodings, args.size, args.line_width))
        save_grid(columns, labels, Path(args.output))
    except (OSError, ValueError) as exc:  # ValueError: matplotlib knows no format for the file's extension
        raise SystemExit(f"error: cannot write {args.output}: {exc}") from None
    print(f"wrote {args.output}: {len(labels)} {split} drawings x {', '.join(e.name for e in encodings)}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
