"""scripts/gpu_check.sh is prepared on CPU machines for the GPU ones it is lent: its diagnosis step (bench.py gpu)
runs end to end here with small settings and prints every figure it promises (the values mean nothing on a CPU)."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from common import ROOT


@pytest.mark.slow
def test_gpu_check_diagnosis_runs_on_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "g"), "ONLY": "diagnose", "PER_CLASS": "40", "PY": "python",
           "GPU_ARGS": "--device cpu --model squeezenet --size 32 --batch-sizes 16 --kernel-threads 1,2 --threads 1,2 "
                       "--processes 2 --steps 1 --warmup 0 --seconds 0.2", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert re.search(r"machine: \d+ cores, affinity \d+, CPU quota ", out), out
    assert re.search(r"kernels_t1 \d+ images/s\s+\(1\.00x one thread", out) and "kernels_t2 " in out
    ratios = re.findall(r"stall store batch 16: (threads 1|threads 2|processes 2): loader \d+ img/s, stall ratio "
                        r"(\d+\.\d+)", out)
    assert [r[0] for r in ratios] == ["threads 1", "threads 2", "processes 2"], out
    assert (tmp_path / "g" / "diagnose.txt").read_text() == out.split("=== diagnose\n", 1)[1]
    assert not (tmp_path / "g" / "store").exists()
