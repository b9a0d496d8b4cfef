"""The drawing page in a real headless Chromium (Debian's chromium + chromedriver through selenium; nothing is
downloaded): draw a shape on the canvas with the mouse, see three guesses and the network's picture appear, check
the strokes the page recorded are Google's raw format, and take a screenshot.

QDRAW_SERVE_CHECKPOINT=PATH serves that model instead of an untrained one, and QDRAW_SCREENSHOT=PATH also saves the
screenshot there (docs/serve_screenshot.png was taken so, with a model trained on the shared slice).
"""
from __future__ import annotations

import math
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import uvicorn

import models
from common import SIX_CLASSES, free_port, wait_for_server
from qdraw.checkpoint import CHECKPOINT_VERSION, save_checkpoint
from qdraw.classifier import load_classifier
from qdraw.serving import create_app

CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (requirements.txt)")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and DRIVER),
    reason="no chromium/chromedriver: apt-get install chromium chromium-driver (.ci/run does)")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt = os.environ.get("QDRAW_SERVE_CHECKPOINT")
    if not ckpt:
        ckpt = tmp_path_factory.mktemp("browser") / "rgb.pth"
        classes = sorted(SIX_CLASSES)
        model = models.create_model("squeezenet", len(classes))
        save_checkpoint({"version": CHECKPOINT_VERSION, "arch": "squeezenet",
                         "model_args": {"num_classes": len(classes), "in_chans": 3}, "classes": classes,
                         "num_classes": len(classes), "encoding": "rgb", "image_size": 64, "config": {},
                         "model": model.state_dict(), "epoch": 0}, ckpt)
    # serve.py's app under uvicorn in a thread of this process (test_serve_api.py runs serve.py itself)
    server = uvicorn.Server(uvicorn.Config(create_app(load_classifier(ckpt)), host="127.0.0.1", port=free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.config.port}/"
    wait_for_server(url + "api/info", thread.is_alive)
    yield url
    server.should_exit = True
    thread.join(timeout=60)


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=820,560", "--hide-scrollbars"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    yield driver
    driver.quit()


def _draw_cat_face(driver, canvas) -> None:
    """A circle and two triangle ears, drawn with mouse moves (the page sees pointer events)."""
    from selenium.webdriver.common.action_chains import ActionChains

    chain = ActionChains(driver, duration=10)
    points = [(int(110 * math.cos(a)), int(30 + 100 * math.sin(a))) for a in [i * math.pi / 12 for i in range(25)]]
    chain.move_to_element_with_offset(canvas, *points[0]).click_and_hold()
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        chain.move_by_offset(x1 - x0, y1 - y0)
    chain.release()
    for ear in ([(-90, -30), (-70, -130), (-20, -65)], [(20, -65), (70, -130), (90, -30)]):
        chain.move_to_element_with_offset(canvas, *ear[0]).click_and_hold()
        for (x0, y0), (x1, y1) in zip(ear, ear[1:]):
            chain.move_by_offset(x1 - x0, y1 - y0)
        chain.release()
    chain.perform()


def test_drawing_shows_three_guesses(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    WebDriverWait(browser, 30).until(lambda d: "classes" in d.find_element(By.ID, "model").text)
    canvas = browser.find_element(By.ID, "pad")
    _draw_cat_face(browser, canvas)
    WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#guesses li")) == 3
                                     and d.find_element(By.ID, "seen").get_attribute("src"))
    time.sleep(0.5)  # the last stroke's answer
    guesses = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#guesses li")]
    assert len(guesses) == 3 and all("%" in g for g in guesses)
    strokes = browser.execute_script("return strokes")
    assert len(strokes) == 3 and strokes[0][2][0] == 0  # Google's raw format: t in ms from the first point
    for xs, ys, ts in strokes:
        assert len(xs) == len(ys) == len(ts) >= 2 and all(isinstance(v, int) for v in xs + ys + ts)
        assert ts == sorted(ts)
    assert strokes[1][2][0] >= strokes[0][2][-1]
    assert browser.find_element(By.ID, "seen").get_attribute("src").startswith("data:image/png;base64,")
    shot = tmp_path / "serve_screenshot.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 5000
    if os.environ.get("QDRAW_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["QDRAW_SCREENSHOT"])
