"""A screenshot of the classifier page (docs/page.md) with an answer on it: imgs/page.png.

    python benchmarks/page_screenshot.py --model artifacts/model [--image scan.png] [--out imgs/page.png]
    python benchmarks/page_screenshot.py --stub     # no trained model: the tests' stub predictor

Starts the local server (busi_classifier.local.server) on a free port with the model
folder's handler (as `python -m busi_classifier serve --model DIR` builds it) or with the
stub of tests/api_stub.py, opens the page in headless Chromium with a 1200 x 900 viewport,
uploads the image (default: a synthetic malignant one, busi_classifier.data.synthetic),
waits for the answer and saves the screenshot. Needs chromium, chromium-driver
(apt-get install chromium chromium-driver) and selenium (the dev extra).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WIDTH, HEIGHT = 1200, 900
WAIT_S = 120


def synthetic_image(folder: Path) -> Path:
    from busi_classifier.data.synthetic import generate_dataset

    generate_dataset(folder, per_class=1, seed=0, progress=False)
    return folder / "malignant" / "malignant (1).png"


def build_handler(args):
    if args.stub:
        sys.path.insert(0, str(ROOT / "tests"))
        from api_stub import stub_handler

        return stub_handler()
    from busi_classifier.local.server import local_settings
    from busi_classifier.serving.api import make_handler

    handler = make_handler(local_settings(args.model))
    if handler.predictor is None:
        raise SystemExit(f"error: {handler.load_error}")
    return handler


def screenshot(url: str, image: Path, out: Path) -> str:
    """Open ``url``, upload ``image``, wait for the answer, save ``out``; the page's final state."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        raise SystemExit("error: needs chromium and chromedriver: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--hide-scrollbars", f"--window-size={WIDTH},{HEIGHT}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
        driver.set_page_load_timeout(WAIT_S)
        driver.get(url)
        driver.find_element(By.ID, "file").send_keys(str(image.resolve()))
        WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(
            lambda d: d.execute_script("return document.body.dataset.state") in ("done", "error"))
        state = driver.execute_script("return document.body.dataset.state")
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
        if state == "error":
            print(f"the page shows an error: {driver.find_element(By.ID, 'error').text}", file=sys.stderr)
        return state
    finally:
        driver.quit()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", default="artifacts/model", help="model folder to serve (default: %(default)s)")
    source.add_argument("--stub", action="store_true", help="serve the tests' stub predictor instead of a model")
    parser.add_argument("--image", type=Path, default=None, help="PNG or JPEG to upload (default: a synthetic one)")
    parser.add_argument("--out", type=Path, default=ROOT / "imgs" / "page.png", help="where to save (default: %(default)s)")
    args = parser.parse_args(argv)

    from busi_classifier.local.server import make_server

    handler = build_handler(args)
    server = make_server(handler, port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            image = args.image or synthetic_image(Path(tmp))
            state = screenshot(server.url + "/", image, args.out)
    finally:
        server.shutdown()
        server.server_close()
    print(f"{args.out}: the page after uploading {image.name if args.image else 'a synthetic image'} ({state})")
    return 0 if state == "done" else 1


if __name__ == "__main__":
    raise SystemExit(main())
