"""The .qdb block format: round trip, gathers, and refusal of truncated or foreign files."""
import json

import numpy as np
import pytest

from qdraw.store import FORMAT_VERSION, Store, StoreError, concat_blocks, make_block, mix64, read_block, write_block


def _block(raw: bool = False):
    # drawing 0: strokes of 2 and 3 points; drawing 1: one dot; drawing 2: strokes of 1 and 3 points
    xy = np.arange(20, dtype=np.uint8).reshape(10, 2) * 10
    t = np.arange(10, dtype=np.int32) * 7 if raw else None
    return make_block(xy, t, np.array([2, 3, 1, 1, 3]), np.array([2, 1, 2]), [0, 1, 2], [11, 12, 13],
                      [b"US", b"FR", b"DE"], [1, 0, -1])


@pytest.mark.parametrize("raw", [False, True])
def test_round_trip(tmp_path, raw):
    b = _block(raw)
    write_block(tmp_path / "b.qdb", b)
    r = read_block(tmp_path / "b.qdb")
    for name in ("xy", "strokes", "drawings", "label", "key_id", "country", "recognized"):
        assert np.array_equal(getattr(r, name), getattr(b, name)), name
    assert (r.t is None) == (not raw)
    assert [d.tolist() for d in r.drawing(1)] == ([[[100, 110, 35]]] if raw else [[[100, 110]]])
    assert list(tmp_path.iterdir()) == [tmp_path / "b.qdb"]  # no temporary file left behind


def test_select_slice_concat():
    b = _block()
    s = b.select([2, 0])
    assert s.key_id.tolist() == [13, 11]
    assert [d.tolist() for d in s.drawing(0)] == [[[120, 130]], [[140, 150], [160, 170], [180, 190]]]
    assert [d.tolist() for d in s.drawing(1)] == [d.tolist() for d in b.drawing(0)]
    sl = b.slice(1, 3)
    assert [d.tolist() for d in sl.drawing(1)] == [d.tolist() for d in b.drawing(2)]
    c = concat_blocks([b, sl])
    assert len(c) == 5 and c.drawings[-1] == 8 and c.strokes[-1] == 15


def test_truncated_and_foreign_blocks_are_refused(tmp_path):
    path = tmp_path / "b.qdb"
    write_block(path, _block())
    data = path.read_bytes()
    (tmp_path / "cut.qdb").write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match="truncated"):
        read_block(tmp_path / "cut.qdb")
    (tmp_path / "junk.qdb").write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(StoreError, match="bad magic"):
        read_block(tmp_path / "junk.qdb")
    newer = data.replace(b'"version": 1', b'"version": 9', 1)
    (tmp_path / "new.qdb").write_bytes(newer)
    with pytest.raises(StoreError, match="version 9"):
        read_block(tmp_path / "new.qdb")


def test_store_meta_checks(tmp_path):
    with pytest.raises(StoreError, match="run prepare_data.py"):
        Store(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"version": FORMAT_VERSION + 1}))
    with pytest.raises(StoreError, match="re-run prepare_data.py"):
        Store(tmp_path)


def test_verify_cli_reports_damage(tmp_path, raw_store, capsys):
    """prepare_data.py --verify: a sound store passes; a flipped byte in one block is one error line, exit != 0."""
    import shutil

    import prepare_data

    shutil.copytree(raw_store, tmp_path / "st")
    prepare_data.main(prepare_data.get_args_parser().parse_args(["--verify", str(tmp_path / "st")]))
    assert "all sound" in capsys.readouterr().out
    block = sorted((tmp_path / "st").glob("classes/004/train_*.qdb"))[0]
    data = bytearray(block.read_bytes())
    data[-70] ^= 0x10  # inside the last arrays, before their padding
    block.write_bytes(bytes(data))
    with pytest.raises(SystemExit, match="1 problem"):
        prepare_data.main(prepare_data.get_args_parser().parse_args(["--verify", str(tmp_path / "st")]))
    out = capsys.readouterr().out
    assert f"damaged: {block}" in out and "CRC-32" in out


def test_mix64_is_splitmix64():
    """mix64 of k golden-ratio steps is splitmix64's k-th output from seed 0 (the published sequence), for arrays,
    scalars and any shape; compiled code calls the same ufunc (qdraw.dataset's flips)."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    steps = np.array([0, 1, 2], np.uint64) * golden  # wrapping multiply: the generator's states before mixing
    assert [hex(v) for v in mix64(steps).tolist()] == ["0xe220a8397b1dcdaf", "0x6e789e6aa1b965f4", "0x6c45d188009454f"]
    assert mix64(np.uint64(0)) == np.uint64(0xE220A8397B1DCDAF) and mix64(steps.reshape(1, 3)).shape == (1, 3)
