"""Shared fixtures: the real Quick, Draw! slice in ../shared (tests that need it skip cleanly without it)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data" / "quickdraw"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data folder, or skip."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data/quickdraw is absent")
    return SHARED
