"""serve.py on real raw drawings gives the top-1 that predict.py gives their Google-simplified twins (the shared
raw/simplified pairs of the model's 4 classes, 92 drawings), both run as the real CLIs by
experiments/serve_agreement.py; docs/SERVE.md has the figure on all 6,346 pairs with a 345-class model."""
from __future__ import annotations

import pytest

from experiments.serve_agreement import measure


@pytest.mark.slow
def test_raw_in_the_server_agrees_with_simplified_in_predict(real4_model, shared_data):
    r = measure(str(real4_model / "run/last.pth"), shared_data / "raw", shared_data / "simplified", None)
    assert r["pairs"] >= 90 and not r["errors"], r["errors"]
    assert r["agree"] >= 0.99 * r["pairs"], r["disagree"]
