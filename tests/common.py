"""Constants and small helpers the test files share (fixtures built from them live in conftest.py)."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "quickdraw"

# The synthetic classes of the small stores most tests train on, in the generator's spelling.
SIX_CLASSES = ["circle", "square", "triangle", "star", "house", "zigzag"]

# The 16 large classes of the shared real slice (~400 drawings each; cat ~1,600, monkey ~820).
CLASSES_16 = ["airplane", "bicycle", "calculator", "camera", "computer", "crayon", "dragon", "eye", "guitar",
              "headphones", "map", "paint can", "paintbrush", "television", "cat", "monkey"]
