"""Drawing features for the second stage: what a drawing is like apart from its pixels, per key_id.

First place's LightGBM re-ranker drew its best extra signal from such features, the maximum raw timestamp above all
(how long the player took). Computed vectorised from a store's blocks (qdraw.store), one value per drawing:

    strokes     strokes in the drawing
    points      points in the drawing
    aspect      (width + 1) / (height + 1) of the bounding box in the store's 0..255 frame (the +1 keeps a single
                horizontal or vertical line finite)
    max_time    the maximum raw timestamp, ms after the first point (raw stores only)
    draw_time   pen-down time, the sum over strokes of last minus first timestamp, ms (raw stores only)
    pause_time  pen-up time, the sum of the gaps between one stroke's last point and the next one's first, ms
    max_pause   the longest of those gaps, ms (0 for one stroke; both raw stores only)
    recognized  1/0 from Google's classifier, NaN when unknown (Kaggle's test rows carry none)
    country     the two-letter countrycode, a string; the stacker hands it to LightGBM as a category

A feature a drawing has no value for is NaN (a simplified store has no times; a key_id missing from every source
has nothing), left to LightGBM's own missing-value handling rather than filled in here.
"""
from __future__ import annotations

import numpy as np

from .store import Block, Store

# Feature groups as stack.py's --features names them -> the columns they add.
GROUPS = {"strokes": ["strokes"], "points": ["points"], "aspect": ["aspect"], "time": ["max_time", "draw_time"],
          "pauses": ["pause_time", "max_pause"], "recognized": ["recognized"], "country": ["country"]}
NUMERIC = [c for g in GROUPS.values() for c in g if c != "country"]
TIMED = {"max_time", "draw_time", "pause_time", "max_pause"}


def block_features(block: Block) -> dict[str, np.ndarray]:
    """Features of every drawing of a block: float64 arrays (N,) by name (module docstring), country as S2 bytes."""
    n = len(block)
    first_stroke = block.drawings[:-1]
    p0, p1 = block.strokes[first_stroke], block.strokes[block.drawings[1:]]
    out = {"strokes": np.diff(block.drawings).astype(np.float64), "points": (p1 - p0).astype(np.float64)}
    if n:
        x, y = block.xy[:, 0].astype(np.int64), block.xy[:, 1].astype(np.int64)
        w = np.maximum.reduceat(x, p0) - np.minimum.reduceat(x, p0)
        h = np.maximum.reduceat(y, p0) - np.minimum.reduceat(y, p0)
        out["aspect"] = (w + 1) / (h + 1)
    else:
        out["aspect"] = np.zeros(0)
    if block.t is not None and n:
        t = block.t.astype(np.int64)
        s_first, s_last = t[block.strokes[:-1]], t[block.strokes[1:] - 1]
        out["max_time"] = np.maximum.reduceat(t, p0).astype(np.float64)
        out["draw_time"] = np.add.reduceat(s_last - s_first, first_stroke).astype(np.float64)
        # gap before stroke s+1 (within a drawing); the first stroke of each drawing has none
        gaps = np.zeros(len(s_first), np.int64)
        gaps[1:] = s_first[1:] - s_last[:-1]
        gaps[first_stroke] = 0
        out["pause_time"] = np.add.reduceat(gaps, first_stroke).astype(np.float64)
        out["max_pause"] = np.maximum.reduceat(gaps, first_stroke).astype(np.float64)
    else:
        for name in sorted(TIMED):
            out[name] = np.full(n, np.nan)
    rec = np.asarray(block.recognized, np.float64)
    out["recognized"] = np.where(rec < 0, np.nan, rec)
    out["country"] = np.asarray(block.country, "S2")
    return out


def store_features(stores: list[Store]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Features of the validation and test drawings of every store, by key_id (sorted, unique).

    Only those two splits are read: they hold the drawings a stacker sees, and a drawing's raw twin lies in the same
    split of a raw store prepared with the same --val-every (the split is a hash of key_id). Where several stores
    hold a key_id, each feature comes from the first store that has a value for it, so a simplified store and its
    raw twin together give the counts of every drawing and the times of those with raw data.
    """
    keys, feats = np.zeros(0, np.int64), {}
    for store in stores:
        paths = [p for c in range(store.num_classes) for p in store.val_blocks(c)] + store.test_blocks()
        parts = [(np.asarray(b.key_id, np.int64), block_features(b)) for b in map(store.read_block, paths)]
        if not parts:
            continue
        k = np.concatenate([p[0] for p in parts])
        f = {name: np.concatenate([p[1][name] for p in parts]) for name in parts[0][1]}
        k, first = np.unique(k, return_index=True)
        keys, feats = _merge(keys, feats, k, {name: v[first] for name, v in f.items()})
    return keys, feats


def _merge(keys: np.ndarray, feats: dict[str, np.ndarray], new_keys: np.ndarray,
           new: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Union of two key-sorted feature tables; values already present win over the new ones, NaN / b'' are gaps."""
    if not len(keys):
        return new_keys, new
    union = np.union1d(keys, new_keys)
    out = {}
    for name in set(feats) | set(new):
        old_v, new_v = feats.get(name), new.get(name)
        ref = old_v if old_v is not None else new_v
        merged = np.full(len(union), b"" if ref.dtype.kind == "S" else np.nan, ref.dtype)
        for k, v in ((new_keys, new_v), (keys, old_v)):  # the old table last: it wins where it has a value
            if v is None:
                continue
            pos = np.searchsorted(union, k)
            has = v != b"" if v.dtype.kind == "S" else ~np.isnan(v)
            merged[pos[has]] = v[has]
        out[name] = merged
    return union, out


def lookup(keys: np.ndarray, feats: dict[str, np.ndarray], key_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Features of key_ids (any order) from a key-sorted table; NaN (b'' for country) where a key_id is absent."""
    key_ids = np.asarray(key_ids, np.int64)
    pos = np.clip(np.searchsorted(keys, key_ids), 0, max(len(keys) - 1, 0))
    found = (keys[pos] == key_ids) if len(keys) else np.zeros(len(key_ids), bool)
    out = {}
    for name, v in feats.items():
        col = np.full(len(key_ids), b"" if v.dtype.kind == "S" else np.nan, v.dtype)
        col[found] = v[pos[found]]
        out[name] = col
    return out


def feature_matrix(key_ids: np.ndarray, table: tuple[np.ndarray, dict[str, np.ndarray]], groups: list[str],
                   vocab: list[bytes]) -> tuple[np.ndarray, list[str]]:
    """Feature columns float32 (N, E) of key_ids for the given GROUPS, and their names; countrycode becomes its index
    in vocab (NaN when unknown or absent), the integer code LightGBM takes for a categorical feature."""
    found = lookup(*table, key_ids)
    cols, names = [], []
    for group in groups:
        for name in GROUPS.get(group, []):
            if name == "country":
                code = {c: float(i) for i, c in enumerate(vocab)}
                cols.append(np.array([code.get(c, np.nan) for c in found["country"].tolist()], np.float64))
            else:
                cols.append(found[name])
            names.append(name)
    return np.stack(cols, 1).astype(np.float32) if cols else np.zeros((len(key_ids), 0), np.float32), names
