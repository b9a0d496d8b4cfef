"""End-to-end: `python demo.py --quick` builds the synthetic store, trains two models, predicts, blends, draws, and
prints a MAP@3 table whose every value beats chance; the files it announces exist and are well formed."""
from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHANCE_MAP3 = (1 + 1 / 2 + 1 / 3) / 16


@pytest.mark.slow
def test_demo_quick(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, str(ROOT / "demo.py"), "--quick", "--output", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    table = dict(re.findall(r"^(\S.*?\S)\s+([01]\.\d{4})\s+[01]\.\d{4}\s+[01]\.\d{4}$", done.stdout, re.MULTILINE))
    assert set(table) == {"mobilenetv2 rgb + TTA", "mobilenetv2 time + TTA", "blend (gmean)"}, done.stdout
    assert all(float(v) > CHANCE_MAP3 for v in table.values()), table

    for name in ("grid.png", "rgb/curves.png", "time/curves.png", "rgb/last.pth", "time/config.yaml"):
        assert (out / name).is_file(), name
        assert str(out / name) in done.stdout or name.endswith((".pth", ".yaml")), name
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "submission.csv") as f:
        rows = list(csv.reader(f))
    with open(out / "val_labels.csv") as f:
        labels = list(csv.reader(f))
    assert rows[0] == ["key_id", "word"] and labels[0] == ["key_id", "word"]
    assert len(rows) == len(labels) > 16 * 5
    assert {r[0] for r in rows[1:]} == {r[0] for r in labels[1:]}
    assert all(len(r[1].split()) == 3 for r in rows[1:])


def test_demo_rejects_one_encoding(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "demo.py"), "--encodings", "rgb", "--output", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == ["error: --encodings needs two or more different encodings, got 'rgb'"]
