"""A store is untrusted input: damaged or crafted blocks are a StoreError or valid images, never a crash.

Blocks come from real drawings (the shared slice, simplified and raw) and from the synthetic generator. Mutations are
drawn by hypothesis: bytes flipped anywhere, the file cut short, and fields rewritten (stroke and drawing offsets,
labels, recognized, times, header shapes, offsets, dtypes, sizes, version), each both with the block's CRC-32 sums
and without them (as a block written before checksums existed, so that the structural checks, not the CRC, must
catch it). Every mutated block is opened, gathered and rasterised in every encoding it allows.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import run_scripts
from qdraw.encoding import list_encodings, get_encoding
from qdraw.prepare import PrepareOptions, prepare
from qdraw.raster import Sources, rasterize
from qdraw.store import MAGIC, Store, StoreError, read_block

FIELD_NAMES = ("xy", "t", "strokes", "drawings", "label", "key_id", "country", "recognized")


def _parts(data: bytes) -> tuple[dict, int]:
    hlen = int.from_bytes(data[8:16], "little")
    return json.loads(data[16:16 + hlen]), 16 + hlen


def _rewrite_header(data: bytes, header: dict) -> bytes:
    """The same arrays under another header, padded to the same length so every array keeps its place."""
    old, start = _parts(data)
    head = json.dumps(header).encode()
    if len(head) > start - 16:
        return data[:8] + len(head).to_bytes(8, "little") + head + data[start:]  # arrays shift: the checks decide
    return data[:16] + head + b" " * (start - 16 - len(head)) + data[start:]


def _without_crc(data: bytes) -> bytes:
    header, _ = _parts(data)
    header.pop("crc32", None)
    return _rewrite_header(data, header)


def _set_value(data: bytes, field: str, index: int, value: int) -> bytes:
    """Overwrite element `index` (wrapped into range) of an array, in place in the file's bytes."""
    header, start = _parts(data)
    spec = header["arrays"].get(field)
    if spec is None or not np.prod(spec["shape"]):
        return data
    dt = np.dtype(spec["dtype"])
    flat = np.frombuffer(data, np.uint8, count=int(np.prod(spec["shape"])) * dt.itemsize,
                         offset=start + spec["offset"]).view(dt if dt.kind != "S" else np.uint8).copy()
    flat[index % len(flat)] = np.array(value).astype(flat.dtype)
    a = start + spec["offset"]
    return data[:a] + flat.tobytes() + data[a + flat.nbytes:]


def _use(store: Store, path: Path) -> None:
    """Open, gather and rasterise every drawing of the block: either StoreError or well-formed images."""
    try:
        block = store.read_block(path)
    except StoreError:
        return
    n = len(block)
    src = Sources([block])
    xy, t, strokes, drawings = src.gather(np.zeros(n, np.int64), np.arange(n))
    for name in list_encodings():
        if get_encoding(name).needs_time and t is None:
            continue
        img = rasterize(xy, t if get_encoding(name).needs_time else None, strokes, drawings, name, 32)
        assert img.shape == (n, get_encoding(name).channels, 32, 32) and img.dtype == np.uint8


def _small_store(root: Path, source: Path | None, raw: bool) -> Path:
    """Four classes of real drawings (or synthetic ones when the shared slice is absent), blocks of 16."""
    if source is None:
        from qdraw.synthetic import write_ndjson
        write_ndjson(root / "src", 20, seed=4, classes=["circle", "square", "star", "zigzag"])
        source = root / "src"
        if not raw:
            raise pytest.skip.Exception("simplified blocks come from the shared slice")
    else:
        (root / "src").mkdir(parents=True)
        for name in ("airplane", "cat", "eye", "map"):
            lines = (source / f"{name}.ndjson").read_text().splitlines()[:20]
            (root / "src" / f"{name}.ndjson").write_text("\n".join(lines) + "\n")
        source = root / "src"
    prepare(PrepareOptions(output=str(root / "st"), block_size=16, val_every=5, workers=1), source)
    return root / "st"


@pytest.fixture(scope="module", params=["simplified", "raw"])
def real_store(request, tmp_path_factory) -> Path:
    from common import SHARED
    raw = request.param == "raw"
    source = SHARED / request.param if SHARED.is_dir() else None
    return _small_store(tmp_path_factory.mktemp(request.param), source, raw)


MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("cut"), st.integers(0, 10**6)),
    st.tuples(st.just("value"), st.sampled_from(FIELD_NAMES), st.integers(0, 10**4),
              st.sampled_from([-(2**62), -(2**31), -2, -1, 0, 1, 2, 3, 15, 16, 17, 255, 256, 2**15 - 1, 2**31 - 1,
                               2**62])),
    st.tuples(st.just("header"), st.sampled_from(FIELD_NAMES + ("version", "nbytes", "crc32", "arrays")),
              st.sampled_from(["shape", "offset", "dtype", "drop", "type"]),
              st.sampled_from([-64, -1, 0, 1, 2, 63, 64, 10**9, "x", None, [], [3, 2], 1.5, True, "<i8", "|u1"])),
)


def _mutate(data: bytes, mutation: tuple) -> bytes:
    kind = mutation[0]
    if kind == "flip":
        pos = mutation[1] % len(data)
        return data[:pos] + bytes([data[pos] ^ (1 << mutation[2])]) + data[pos + 1:]
    if kind == "cut":
        return data[:mutation[1] % len(data)]
    if kind == "value":
        return _set_value(data, *mutation[1:])
    header, _ = _parts(data)
    target, what, value = mutation[1:]
    arrays = header["arrays"]
    if target in arrays:
        if what == "drop":
            del arrays[target]
        elif what == "type":
            arrays[target] = value
        else:
            arrays[target][what] = value
    elif what == "drop":
        header.pop(target, None)
    else:
        header[target] = value
    return _rewrite_header(data, header)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=MUTATION, crc=st.booleans(), which=st.integers(0, 100))
def test_mutated_blocks_are_refused_or_drawn(real_store, tmp_path_factory, mutation, crc, which):
    store = Store(real_store)
    paths = sorted(real_store.glob("classes/*/*.qdb"))
    src = paths[which % len(paths)]
    work = tmp_path_factory.mktemp("mut") / "st"
    shutil.copytree(real_store, work)
    target = work / src.relative_to(real_store)
    data = src.read_bytes()
    if not crc:
        data = _without_crc(data)
    target.write_bytes(_mutate(data, mutation))
    _use(Store(work), target)
    assert store.num_classes == 4


def test_crafted_offsets_are_store_errors(real_store, tmp_path):
    """The case that used to crash the process: one stroke offset changed (no CRC, as an old block)."""
    path = sorted(real_store.glob("classes/000/train_*.qdb"))[0]
    data = _without_crc(path.read_bytes())
    header, _ = _parts(data)
    n_points = header["arrays"]["xy"]["shape"][0]
    cases = {"stroke offset past the points": _set_value(data, "strokes", 3, n_points + 10**6),
             "stroke offset going back": _set_value(data, "strokes", 2, 0),
             "drawing offset past the strokes": _set_value(data, "drawings", 1, 10**9),
             "negative drawing offset": _set_value(data, "drawings", 1, -5),
             "label of another class": _set_value(data, "label", 0, 2),
             "label past the classes": _set_value(data, "label", 0, 40),
             "recognized 7": _set_value(data, "recognized", 0, 7)}
    store = Store(real_store)
    messages = []
    for name, bad in cases.items():
        p = tmp_path / "classes" / "000" / f"{len(messages)}.qdb"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(bad)
        with pytest.raises(StoreError) as err:
            read_block(p, label_is=0, num_classes=store.num_classes)
        messages.append(str(err.value))
        assert str(p) in str(err.value), name
    assert "offsets" in messages[0] and "label 2 in the block of class 0" in messages[4]


def test_crc_catches_a_flipped_point(real_store, tmp_path):
    path = sorted(real_store.glob("classes/001/train_*.qdb"))[0]
    data = path.read_bytes()
    header, start = _parts(data)
    pos = start + header["arrays"]["xy"]["offset"] + 5
    bad = tmp_path / "b.qdb"
    bad.write_bytes(data[:pos] + bytes([data[pos] ^ 4]) + data[pos + 1:])
    with pytest.raises(StoreError, match="array xy fails its CRC-32 check"):
        read_block(bad)
    assert len(read_block(bad, verify=False)) == header["arrays"]["label"]["shape"][0]  # structurally fine


def test_blocks_without_checksums_still_read(real_store, tmp_path):
    """Blocks written before CRC-32 sums existed (same format version) open as before."""
    path = sorted(real_store.glob("classes/002/train_*.qdb"))[0]
    old = tmp_path / "old.qdb"
    old.write_bytes(_without_crc(path.read_bytes()))
    a, b = read_block(path), read_block(old)
    for name in FIELD_NAMES:
        assert (getattr(a, name) is None and getattr(b, name) is None) or np.array_equal(getattr(a, name),
                                                                                       getattr(b, name))
    assert MAGIC == old.read_bytes()[:8]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_train_on_a_crafted_block_is_one_error_line(real_store, tmp_path, workers):
    """One changed stroke offset in a real block (without its CRC): train.py ends with one error line, no traceback
    and no signal, also when the block is opened in a loader worker."""
    work = tmp_path / "st"
    shutil.copytree(real_store, work)
    path = sorted(work.glob("classes/002/train_*.qdb"))[0]
    path.write_bytes(_set_value(_without_crc(path.read_bytes()), "strokes", 4, 10**7))
    # a process of its own (a signal would show as a negative code), forked from a server that imported torch
    [res] = run_scripts([("train.py", ["--data", str(work), "--output", str(tmp_path / "run"), "--model",
                                       "squeezenet", "--image-size", "32", "--batch-size", "8", "--epochs", "1",
                                       "--workers", str(workers), "--no-progress", "--no-tensorboard", "--device",
                                       "cpu"])], cwd=tmp_path)
    assert res.returncode == 1, (res.returncode, res.stderr[-2000:])
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error")]
    assert "Traceback" not in res.stderr and len(errors) == 1, res.stderr[-2000:]
    assert res.stderr.rstrip().splitlines()[-1] == errors[0]  # the last thing said
    assert "strokes offsets" in errors[0] and "train_0000.qdb" in errors[0]
