"""Pseudo-labelling (qdraw.pseudo, pseudo_label.py, train.py --pseudo-share): the selection, the marked source in
STORE/pseudo, no test drawing in the validation split, and the mark kept through a prepare rerun and training."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import pseudo_label
from common import run_train, train_argv, run_cli
from qdraw.dataset import BalancedBlockDataset, SplitDataset
from qdraw.predictions import write_predictions
from qdraw.prepare import PrepareOptions, prepare
from qdraw.pseudo import select
from qdraw.store import Store, concat_blocks, write_block

TEST_OFFSET = 10**15


def test_select_threshold_and_top_share() -> None:
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3], [0.2, 0.8], [0.45, 0.55]])
    assert select(probs, threshold=0.7).tolist() == [True, False, True, True, False]
    # class 0 has 3 drawings (0.9, 0.6, 0.7): ceil(0.5 * 3) = 2 kept; class 1 has 2 (0.8, 0.55): 1 kept
    assert select(probs, top_share=0.5).tolist() == [True, False, True, True, False]
    assert select(probs, threshold=0.75, top_share=0.5).tolist() == [True, False, False, True, False]
    with pytest.raises(ValueError):
        select(probs)


@pytest.fixture()
def store_with_test(raw_store: Path, tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A copy of the raw synthetic store with a test split: its first training block's drawings of every class
    under new key_ids (true labels kept), plus one drawing whose key_id is also a validation drawing's."""
    root = tmp_path / "st"
    shutil.copytree(raw_store, root)
    store = Store(root)
    parts = [store.read_block(store.train_blocks(c)[0]).select(np.arange(10)) for c in range(store.num_classes)]
    test = concat_blocks(parts)
    test.key_id[:] += TEST_OFFSET
    val_key = int(store.read_block(store.val_blocks(0)[0]).key_id[0])
    test.key_id[0] = val_key  # a test drawing that is also in validation: must never be pseudo-labelled
    (root / "test").mkdir()
    write_block(root / "test" / "block_0000.qdb", test)
    return root, np.asarray(test.key_id)


def _preds(root: Path, keys: np.ndarray, path: Path) -> np.ndarray:
    """A prediction file over the test split: right for 5 of every class's 10 drawings (confident), wrong (less
    confident) for the rest; returns the top-1 labels."""
    store = Store(root)
    labels = np.asarray(concat_blocks([store.read_block(p) for p in store.test_blocks()]).label, np.int64)
    c = store.num_classes
    top1 = np.where(np.arange(len(keys)) % 10 < 5, labels, (labels + 1) % c)
    probs = np.full((len(keys), c), 0.02)
    probs[np.arange(len(keys)), top1] = np.where(np.arange(len(keys)) % 10 < 5, 0.9, 0.5)
    order = np.arange(len(keys))[::-1]  # another row order than the store's
    write_predictions(path, keys[order], probs[order], store.classes)
    return top1


def test_pseudo_label_writes_a_marked_source_outside_validation(store_with_test, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    root, keys = store_with_test
    top1 = _preds(root, keys, tmp_path / "p.csv.gz")
    out = tmp_path / "st_pseudo"
    run_cli(pseudo_label, ["--preds", str(tmp_path / "p.csv.gz"), "--input", str(root),
                                               "--output", str(out), "--threshold", "0.8"])
    assert "1 dropped as validation drawings" in capsys.readouterr().out
    store = Store(out)
    meta = store.pseudo_meta()
    assert meta["drawings"] == 29 and meta["threshold"] == 0.8 and meta["label_accuracy"] == 1.0
    assert not (root / "pseudo").exists()  # the input store is left alone
    val_keys = SplitDataset(store, "val").key_ids
    for c in range(store.num_classes):
        (path,) = store.pseudo_blocks(c)
        block = store.read_block(path)  # validated on open: label_is = c
        assert (block.label == c).all() and not np.isin(block.key_id, val_keys).any()
        assert np.isin(block.key_id, keys).all() and (top1[np.isin(keys, block.key_id)] == c).all()
    assert store.verify() == (store.verify()[0], [])
    # train and val blocks are the input's (hard links or copies), unchanged
    assert [p.name for p in store.train_blocks(0)] == [p.name for p in Store(root).train_blocks(0)]


def test_pseudo_blocks_survive_a_prepare_rerun_and_reach_training(store_with_test, raw_store: Path,
                                                                  tmp_path: Path) -> None:
    root, keys = store_with_test
    _preds(root, keys, tmp_path / "p.csv")
    run_cli(pseudo_label, ["--preds", str(tmp_path / "p.csv"), "--input", str(root),
                                               "--top-share", "0.5"])  # in place
    before = Store(root).pseudo_block_sizes()
    assert sum(map(sum, before.values())) == 29  # ceil(0.5 * 10) of each of 6 predicted classes, less 1 in val
    prepare(PrepareOptions(output=str(root), block_size=30, val_every=10, workers=1), raw_store.parent / "src")
    store = Store(root)
    assert store.pseudo_block_sizes() == before and store.verify()[1] == []

    ds = BalancedBlockDataset(store, samples_per_class=8, pseudo_share=0.25)
    assert ds.pseudo_items == 16 and len(ds) == 48 + 16  # 0.25 / 0.75 * 48
    idx = list(range(len(ds)))
    mark = ds.is_pseudo(idx)
    assert mark.sum() == 16 and mark[48:].all()
    item_keys = ds.item_keys(idx, epoch=0)
    assert np.isin(item_keys[mark], keys).all() and not np.isin(item_keys[~mark], keys).any()
    assert not np.isin(item_keys[mark], SplitDataset(store, "val").key_ids).any()
    labels = ds.batch(idx, epoch=0).labels
    top1 = dict(zip(keys.tolist(), _preds(root, keys, tmp_path / "again.csv").tolist()))
    assert labels[mark].tolist() == [top1[k] for k in item_keys[mark].tolist()]  # the pseudo-labels
    plain = BalancedBlockDataset(store, samples_per_class=8)
    np.testing.assert_array_equal(plain.item_keys(list(range(48)), epoch=0), item_keys[:48])  # classes unchanged

    run_train(train_argv(root, tmp_path / "run", "--pseudo-share", "0.25", "--epochs", "1"))
    ckpt = torch.load(tmp_path / "run" / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["config"]["pseudo_share"] == 0.25


def test_pseudo_errors(store_with_test, tmp_path: Path, raw_store: Path) -> None:
    root, keys = store_with_test
    with pytest.raises(ValueError, match="no pseudo-labelled drawings"):
        BalancedBlockDataset(Store(root), pseudo_share=0.2)
    write_predictions(tmp_path / "bad.csv", keys[:3] + 7, np.full((3, 6), 1 / 6), Store(root).classes)
    with pytest.raises(SystemExit, match="error: 3 key_ids of the prediction file are not in"):
        run_cli(pseudo_label, ["--preds", str(tmp_path / "bad.csv"), "--input", str(root),
                                                   "--threshold", "0.1"])
    with pytest.raises(SystemExit, match="error: .*pseudo-share must be in"):
        run_train(train_argv(root, tmp_path / "run", "--pseudo-share", "1"))
