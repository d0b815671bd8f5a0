"""The page at GET / of the local server (busi_classifier/local/static), driven in real
headless Chromium through Selenium: upload an image, read what the page shows, compare
it with what the API answers for the same file.

The browser tests need Debian's chromium and chromium-driver (apt-get install chromium
chromium-driver) and selenium (the dev extra); they skip where one is missing. The
static-route tests need neither."""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import shutil
import threading
import urllib.error
import urllib.request
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from api_stub import StubPredictor, stub_handler
from PIL import Image

from busi_classifier.local.server import STATIC_DIR, STATIC_FILES, local_settings, make_server
from busi_classifier.serving.api import make_handler
from busi_classifier.serving.decode import decode_image
from busi_classifier.serving.explain import colourise

WAIT_S = 60  # a loaded 2-core machine: Chromium start, page load and the answer may take a while
SIDE = 512  # the page's canvas size (app.js)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401

    HAVE_SELENIUM = True
except ImportError:
    HAVE_SELENIUM = False
MISSING = [name for name, ok in (("chromium", CHROMIUM), ("chromedriver (chromium-driver)", CHROMEDRIVER),
                                 ("selenium", HAVE_SELENIUM)) if not ok]
needs_browser = pytest.mark.skipif(bool(MISSING), reason=f"the page test needs {', '.join(MISSING)}: apt-get install "
                                                         "chromium chromium-driver; pip install selenium")


class Recorder:
    """A handler (default: the stub's), recording every event it receives."""

    def __init__(self, inner=None):
        self.events = []
        self.inner = inner or stub_handler()

    def __call__(self, event, context):
        self.events.append(event)
        return self.inner(event, context)

    def paths(self):
        return [(e.get("httpMethod"), e.get("path")) for e in self.events]


def start(handler):
    server = make_server(handler, port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.recorder = handler
    return server


def stop(server):
    server.shutdown()
    server.server_close()


@pytest.fixture
def server():
    srv = start(Recorder())
    yield srv
    stop(srv)


@pytest.fixture(scope="module")
def browser():
    if MISSING:
        pytest.skip(f"needs {', '.join(MISSING)}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1200,900", "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    yield driver
    driver.quit()


def scan_png(path: Path, size=(360, 220)) -> Path:
    """A synthetic, wider-than-tall grey image with a bright blob right of centre, above the middle."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    texture = 60 + 25 * np.sin(xx / 7.0) * np.cos(yy / 11.0)
    blob = 170 * np.exp(-(((xx - 0.72 * width) / 40) ** 2 + ((yy - 0.35 * height) / 30) ** 2))
    gray = np.clip(texture + blob, 0, 255).astype(np.uint8)
    Image.fromarray(gray, mode="L").save(path, "PNG")
    return path


def post_predict(server, data: bytes, explain: bool = True, segment: bool = False) -> tuple[int, dict]:
    payload = {"image": base64.b64encode(data).decode("ascii")}
    if explain:
        payload["explain"] = True
    if segment:
        payload["segment"] = True
    request = urllib.request.Request(server.url + "/predict", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def get_json(server, path: str) -> dict:
    with urllib.request.urlopen(server.url + path, timeout=WAIT_S) as response:
        return json.loads(response.read())


def shown_percent(p: float) -> str:
    """What the page shows for a probability: (p * 100).toFixed(1) + " %" (half up, as toFixed)."""
    return f"{Decimal(p * 100).quantize(Decimal('0.1'), rounding=ROUND_HALF_UP)} %"


def by_id(driver, element_id: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def upload(driver, path: Path, want: str) -> None:
    """Choose ``path`` with #file and wait until the page is done (or failed)."""
    # an earlier upload's "done" or "error" must not count: the page sets "busy" on the new file
    driver.execute_script("document.body.dataset.state = 'test-waiting'")
    by_id(driver, "file").send_keys(str(path))
    wait_for_answer(driver, want)


def wait_for_answer(driver, want: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(
        lambda d: d.execute_script("return document.body.dataset.state") in ("done", "error"))
    state = driver.execute_script("return document.body.dataset.state")
    assert state == want, f"state {state}; #error says: {by_id(driver, 'error').text!r}"


def open_page(driver, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    # ready once /health answered (the status line leaves "Loading...")
    WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(
        lambda d: d.execute_script("return document.getElementById('status').textContent") != "Loading...")


def canvas_pixels(driver, element_id: str) -> np.ndarray:
    """The canvas's own pixels (RGBA), whatever its CSS opacity."""
    url = driver.execute_script("return document.getElementById(arguments[0]).toDataURL('image/png')", element_id)
    data = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))


def shown_answer(driver) -> dict:
    """What the page shows: the class, and per bar (data-probability as a float, visible text)."""
    from selenium.webdriver.common.by import By

    bars = {}
    for bar in by_id(driver, "probabilities").find_elements(By.CSS_SELECTOR, "[data-class]"):
        bars[bar.get_attribute("data-class")] = (float(bar.get_attribute("data-probability")),
                                                 bar.find_element(By.CSS_SELECTOR, ".bar-value").text)
    return {"prediction": by_id(driver, "prediction").text, "bars": bars}


def assert_shows(driver, expected: dict) -> None:
    shown = shown_answer(driver)
    # the class is styled capitalised: compare the text node, not the rendering
    assert driver.execute_script("return document.getElementById('prediction').textContent") == expected["prediction"]
    assert shown["prediction"].lower() == expected["prediction"].lower()
    assert set(shown["bars"]) == set(expected["probabilities"])
    for name, p in expected["probabilities"].items():
        assert shown["bars"][name] == (p, shown_percent(p)), name
    assert by_id(driver, "model-version").text == expected["model_version"]


def assert_heatmap_drawn(driver, grid) -> None:
    """#heatmap holds the grid, colour-mapped and bilinearly upscaled over the whole square:
    the same pixels as the API's own colourise, within rounding."""
    heat = canvas_pixels(driver, "heatmap")
    assert heat.shape == (SIDE, SIDE, 4)
    assert (heat[..., 3] == 255).all()  # opaque everywhere: the CSS opacity does the blending
    rgb = heat[..., :3].astype(int)
    assert rgb.std() > 10 and len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20  # not uniform
    expected = colourise(np.asarray(grid, dtype=np.float64), (SIDE, SIDE)).astype(int)
    difference = np.abs(rgb - expected)
    assert difference.mean() < 0.5 and difference.max() <= 4, (difference.mean(), difference.max())


def assert_picture_letterboxed(driver, data: bytes) -> None:
    """#image-canvas holds the image as the model sees it: fitted, centred, black padding."""
    picture = canvas_pixels(driver, "image-canvas")[..., :3].astype(int)
    expected = decode_image(data, SIDE).astype(int)
    assert np.abs(picture - expected).mean() < 3
    gray = expected.sum(axis=2)
    padding = (gray.sum(axis=1) == 0)[:, None] | (gray.sum(axis=0) == 0)[None, :]  # whole rows or columns of padding
    assert padding.any() and (picture[padding] == 0).all()


def opacity_of(driver) -> str:
    return driver.execute_script("return getComputedStyle(document.getElementById('heatmap')).opacity")


# --- the static route (no browser needed) ------------------------------------------


def request(server, method: str, path: str) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_page_files_are_served_without_the_handler(server):
    for path, name, media_type in [("/", "index.html", "text/html"), ("/index.html", "index.html", "text/html"),
                                   ("/?api=https://x.example/prod&key=k", "index.html", "text/html"),
                                   ("/app.js", "app.js", "text/javascript"), ("/style.css", "style.css", "text/css")]:
        status, headers, data = request(server, "GET", path)
        assert status == 200 and data == (STATIC_DIR / name).read_bytes(), path
        assert headers["content-type"] == f"{media_type}; charset=utf-8"
        assert headers["x-content-type-options"] == "nosniff" and "connect-src *" in headers["content-security-policy"]
        status, headers, data = request(server, "HEAD", path)
        assert status == 200 and data == b"" and int(headers["content-length"]) == len((STATIC_DIR / name).read_bytes())
    assert server.recorder.events == []
    # everything else still goes to the handler, as before
    status, _, data = request(server, "GET", "/health")
    assert status == 200 and json.loads(data)["model_version"] == "stub-1"
    status, _, data = request(server, "GET", "/nope.html")
    assert status == 404 and json.loads(data)["error"]["code"] == "not_found"
    status, _, data = request(server, "POST", "/")
    assert status == 404 and json.loads(data)["error"]["code"] == "not_found"
    assert server.recorder.paths() == [("GET", "/health"), ("GET", "/nope.html"), ("POST", "/")]


def test_page_files_are_package_data():
    """pip install . (not editable) ships them: pyproject.toml names static/* as package data."""
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    section = re.search(r"^\[tool\.setuptools\.package-data\]\n(.*?)(?:^\[|\Z)", pyproject, re.MULTILINE | re.DOTALL)
    assert section and re.search(r'^"busi_classifier\.local" = \[.*"static/\*".*\]$', section.group(1), re.MULTILINE)
    assert sorted(set(STATIC_FILES.values())) == sorted(p.name for p in STATIC_DIR.iterdir())
    page = (STATIC_DIR / "index.html").read_text()
    for element_id in ("file", "drop", "prediction", "probabilities", "heatmap", "image-canvas", "opacity",
                       "model-version", "error", "disclaimer", "status", "lesion", "lesion-toggle", "lesion-area",
                       "lesion-controls", "segment-available"):
        assert f'id="{element_id}"' in page
    assert "http://" not in page and "https://" not in page.replace("?api=https://", "")  # no CDN


# --- the page in Chromium ----------------------------------------------------------


@needs_browser
def test_page_shows_the_api_answer_and_the_heat_map(browser, server, tmp_path):
    from selenium.webdriver.common.keys import Keys

    image = scan_png(tmp_path / "scan.png")
    open_page(browser, server.url + "/")
    assert browser.execute_script("return document.body.dataset.state") == "idle"
    disclaimer = by_id(browser, "disclaimer")
    assert disclaimer.is_displayed() and "Research code, not a medical device: not for diagnosis" in disclaimer.text
    assert by_id(browser, "model-version").text == "stub-1"  # from /health, before any image

    upload(browser, image, "done")
    data = image.read_bytes()
    status, expected = post_predict(server, data, explain=True)
    assert status == 200
    assert_shows(browser, expected)
    assert not by_id(browser, "error").is_displayed()
    assert by_id(browser, "status").text == f"Done: {expected['prediction']}"

    # the request the page sent: the file, base64, with explain
    [sent] = [json.loads(e["body"]) for e in server.recorder.events if e["path"] == "/predict"][:1]
    assert sent == {"image": base64.b64encode(data).decode("ascii"), "explain": True}

    assert_picture_letterboxed(browser, data)
    assert_heatmap_drawn(browser, expected["explanation"]["grid"])
    link = by_id(browser, "overlay-link")
    assert link.get_attribute("href") == "data:image/png;base64," + expected["explanation"]["overlay_png"]

    # the opacity slider, by keyboard
    slider = by_id(browser, "opacity")
    assert slider.is_displayed() and opacity_of(browser) == "0.45"
    slider.send_keys(Keys.HOME)
    assert opacity_of(browser) == "0" and by_id(browser, "opacity-value").text == "0 %"
    slider.send_keys(Keys.END)
    assert opacity_of(browser) == "1" and by_id(browser, "opacity-value").text == "100 %"
    for _ in range(3):
        slider.send_keys(Keys.ARROW_LEFT)
    assert opacity_of(browser) == "0.97"


DROP_FILE = """
const [b64, name, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], name, {type: "image/png"}));
const drop = document.getElementById("drop");
for (const type of ["dragenter", "dragover", "drop"]) {
  drop.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
}
done(drop.classList.contains("dragging"));
"""


@needs_browser
def test_a_file_dropped_on_the_drop_zone_is_classified(browser, server, tmp_path):
    data = scan_png(tmp_path / "scan.png", (200, 260)).read_bytes()
    open_page(browser, server.url + "/")
    still_highlighted = browser.execute_async_script(DROP_FILE, base64.b64encode(data).decode("ascii"), "dropped.png")
    assert still_highlighted is False
    wait_for_answer(browser, "done")
    _, expected = post_predict(server, data)
    assert_shows(browser, expected)
    assert_heatmap_drawn(browser, expected["explanation"]["grid"])
    assert by_id(browser, "status").text == f"Done: {expected['prediction']}"


@needs_browser
def test_page_shows_the_api_error_message(browser, server, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"these are my notes, not an image\n")
    open_page(browser, server.url + "/")
    upload(browser, bad, "error")
    status, expected = post_predict(server, bad.read_bytes(), explain=True)
    assert status == 400
    error = by_id(browser, "error")
    assert error.is_displayed() and error.text == expected["error"]["message"]
    assert error.get_attribute("data-code") == expected["error"]["code"]
    assert not by_id(browser, "result").is_displayed() and not by_id(browser, "heatmap").is_displayed()

    # a good file afterwards clears the error
    upload(browser, scan_png(tmp_path / "scan.png"), "done")
    assert not by_id(browser, "error").is_displayed()


@needs_browser
def test_page_shows_a_network_failure(browser, server, tmp_path):
    gone = start(Recorder())
    url = gone.url
    stop(gone)  # nothing listens there any more
    open_page(browser, f"{server.url}/?api={quote(url, safe='')}")
    upload(browser, scan_png(tmp_path / "scan.png"), "error")
    assert by_id(browser, "error").text.startswith(f"Could not reach the API at {url}")
    assert server.recorder.events == []


@needs_browser
@pytest.mark.parametrize("query, message", [
    ("", "No API to call: open this page through the local server"),
    ("?api=ftp%3A%2F%2Fx.example", 'The api parameter must be an http:// or https:// address, not "ftp://x.example".'),
])
def test_page_without_an_api_says_so(browser, tmp_path, query, message):
    open_page(browser, (STATIC_DIR / "index.html").as_uri() + query)  # file://: no origin to fall back on
    assert by_id(browser, "error").is_displayed() and by_id(browser, "error").text.startswith(message)
    upload(browser, scan_png(tmp_path / "scan.png"), "error")
    assert by_id(browser, "error").text.startswith(message)


@needs_browser
@pytest.mark.parametrize("served_from", ["another-server", "file"])
def test_page_calls_the_api_given_by_the_query(browser, server, tmp_path, served_from):
    """?api= and ?key=: the page on another origin calls this API across origins (CORS)."""
    image = scan_png(tmp_path / "scan.png")
    query = f"?api={quote(server.url + '/', safe='')}&key=secret-key-1"
    other = None
    if served_from == "another-server":  # its handler must never be asked
        other = start(Recorder(lambda event, context: {"statusCode": 500, "body": "{}"}))
        page = other.url + "/" + query
    else:
        page = (STATIC_DIR / "index.html").as_uri() + query
    try:
        open_page(browser, page)
        assert by_id(browser, "api-url").text == f"{server.url} (with an API key)"
        upload(browser, image, "done")
        _, expected = post_predict(server, image.read_bytes())
        assert_shows(browser, expected)
        assert_heatmap_drawn(browser, expected["explanation"]["grid"])
        predicts = [e for e in server.recorder.events if e["path"] == "/predict" and e["httpMethod"] == "POST"]
        keys = {e["headers"].get("x-api-key") or e["headers"].get("X-Api-Key") for e in predicts[:1]}
        assert keys == {"secret-key-1"}
        origins = {e["headers"].get("Origin") or e["headers"].get("origin") for e in predicts[:1]}
        assert origins == ({other.url} if other else {"null"})
        assert ("OPTIONS", "/predict") in server.recorder.paths()  # the browser's preflight
        if other is not None:
            assert other.recorder.events == []
    finally:
        if other is not None:
            stop(other)


class NoMapsPredictor(StubPredictor):
    has_maps = False  # a model exported without class activation maps: explain answers 501


def without_explain_in_health(handler):
    """An API whose /health does not say whether explain works (one older than the key)."""
    def call(event, context):
        answer = handler(event, context)
        if event.get("path") == "/health" and answer.get("body"):
            body = json.loads(answer["body"])
            body.pop("explain", None)
            answer = {**answer, "body": json.dumps(body)}
        return answer
    return call


@needs_browser
@pytest.mark.parametrize("health_says", [True, False])
def test_page_without_class_maps_shows_class_and_bars(browser, tmp_path, health_says):
    """explain false in /health: the page asks without explain. /health silent: it asks
    with explain, gets 501 explain_unavailable, and asks again without."""
    inner = stub_handler(NoMapsPredictor())
    srv = start(Recorder(inner if health_says else without_explain_in_health(inner)))
    try:
        image = scan_png(tmp_path / "scan.png")
        open_page(browser, srv.url + "/")
        upload(browser, image, "done")
        status, expected = post_predict(srv, image.read_bytes(), explain=False)
        assert status == 200
        assert_shows(browser, expected)
        sent = [json.loads(e["body"]) for e in srv.recorder.events if e["path"] == "/predict"][:-1]  # the page's
        assert [s.get("explain") for s in sent] == ([None] if health_says else [True, None])
        assert not by_id(browser, "heatmap").is_displayed() and not by_id(browser, "opacity").is_displayed()
        assert by_id(browser, "no-heatmap").text == ("No heat map is available: this model was exported without "
                                                     "class activation maps.")
        assert by_id(browser, "explain-available").text == "not available for this model"
        assert not by_id(browser, "error").is_displayed()
        assert_picture_letterboxed(browser, image.read_bytes())
    finally:
        stop(srv)


@needs_browser
def test_page_with_the_real_model(browser, trained_model, tmp_path):
    """The exported model behind the local server, as `serve --model` builds it."""
    handler = make_handler(local_settings(str(trained_model)))
    assert handler.predictor is not None, handler.load_error
    srv = start(Recorder(handler))
    try:
        image = scan_png(tmp_path / "scan.png", (300, 420))
        open_page(browser, srv.url + "/")
        upload(browser, image, "done")
        health = get_json(srv, "/health")
        status, expected = post_predict(srv, image.read_bytes(), explain=health.get("explain", False))
        assert status == 200, expected
        assert_shows(browser, expected)
        assert by_id(browser, "model-version").text == health["model_version"]
        # its card's test figures under the class; trained on conftest's synthetic folder: the demo notice
        assert shown_figures(browser).startswith(health["model"]["text"] + ". Full report: ")
        assert health["model"]["synthetic"] and by_id(browser, "demo-notice").is_displayed()
        assert_picture_letterboxed(browser, image.read_bytes())
        if health["model"].get("segment"):  # the session model is multitask: the page asks for the outline
            sent = [json.loads(e["body"]) for e in srv.recorder.events if e["path"] == "/predict"][0]  # the page's
            assert sent.get("segment") is True
            status, expected = post_predict(srv, image.read_bytes(), explain=health.get("explain", False), segment=True)
            assert_lesion_shown(browser, expected["lesion"], (300, 420))
        if health.get("explain"):
            assert_heatmap_drawn(browser, expected["explanation"]["grid"])
            assert by_id(browser, "opacity").is_displayed()
        else:  # a model exported without class maps: class and bars, and a note instead of the heat map
            assert not by_id(browser, "heatmap").is_displayed() and not by_id(browser, "opacity").is_displayed()
            assert "No heat map" in by_id(browser, "no-heatmap").text
            sent = [json.loads(e["body"]) for e in srv.recorder.events if e["path"] == "/predict"][0]  # the page's
            assert "explain" not in sent
    finally:
        stop(srv)


# --- how good the model is, and the size limit (issue 23 items 1 and 4) -------------


def health_edited(handler, edit):
    """``handler`` with its /health body passed through ``edit`` (an older or another API)."""
    def call(event, context):
        answer = handler(event, context)
        if event.get("path") == "/health" and answer.get("body"):
            body = json.loads(answer["body"])
            edit(body)
            answer = {**answer, "body": json.dumps(body)}
        return answer
    return call


def predict_events(server) -> list:
    return [e for e in server.recorder.events if e["path"] == "/predict" and e["httpMethod"] == "POST"]


def shown_figures(driver) -> str:
    return by_id(driver, "model-figures").text


@needs_browser
def test_page_shows_the_models_test_figures_and_the_demo_notice(browser, tmp_path):
    from test_model_summary import CardStub

    srv = start(Recorder(stub_handler(CardStub())))
    try:
        open_page(browser, srv.url + "/")
        summary = get_json(srv, "/health")["model"]
        notice = by_id(browser, "demo-notice")
        assert summary["notice"] == "demo model, synthetic data: not a classifier of real scans"
        assert notice.is_displayed()  # at the top, before any image
        assert by_id(browser, "demo-notice-text").text.lower() == "demo model, synthetic data: not a classifier of " \
                                                                   "real scans."
        upload(browser, scan_png(tmp_path / "scan.png"), "done")
        figures = by_id(browser, "model-figures")
        assert figures.is_displayed() and figures.get_attribute("data-known") == "true"
        assert shown_figures(browser) == (
            "Test accuracy 0.72 (95 % CI 0.60-0.84) on 43 images, macro-F1 0.70 (95 % CI 0.57-0.82); random "
            "initialisation. Full report: docs/evaluation.md in the project's repository.")
        assert shown_figures(browser).startswith(summary["text"])
        # under the class, in the answer
        assert browser.execute_script(
            "return document.getElementById('prediction').closest('section')"
            " === document.getElementById('model-figures').closest('section')")
        assert notice.is_displayed()
    finally:
        stop(srv)


@needs_browser
@pytest.mark.parametrize("model", ["real data", "no card", "older api"])
def test_page_without_a_demo_model_shows_no_notice(browser, tmp_path, model):
    from test_model_summary import CardStub, demo_card

    if model == "real data":
        handler = stub_handler(CardStub(demo_card(root="/data/Dataset_BUSI_with_GT", weights="imagenet")))
    elif model == "no card":
        handler = stub_handler()  # a .tflite served without model.json: "model" is null
    else:  # an API older than the "model" field
        handler = health_edited(stub_handler(CardStub()), lambda body: body.pop("model"))
    srv = start(Recorder(handler))
    try:
        open_page(browser, srv.url + "/")
        upload(browser, scan_png(tmp_path / "scan.png"), "done")
        assert not by_id(browser, "demo-notice").is_displayed()
        if model == "real data":
            assert shown_figures(browser) == (
                "Test accuracy 0.72 (95 % CI 0.60-0.84) on 43 images, macro-F1 0.70 (95 % CI 0.57-0.82); started "
                "from ImageNet weights. Full report: docs/evaluation.md in the project's repository.")
        else:
            assert shown_figures(browser) == ("How good this model is: not known (the API's health check did not "
                                              "say).")
            assert by_id(browser, "model-figures").get_attribute("data-known") == "false"
    finally:
        stop(srv)


def padded_png(total: int, seed: int = 0) -> bytes:
    """A valid PNG of exactly ``total`` bytes: random gray pixels (incompressible), then a
    tEXt chunk of spaces (an ancillary chunk decoders skip) to make up the size."""
    import struct
    import zlib

    rng = np.random.default_rng(seed)
    side = int((total * 0.99) ** 0.5)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8), mode="L").save(buffer, "PNG",
                                                                                       compress_level=1)
    data = buffer.getvalue()
    body = b"tEXt" + b"Comment\0" + b" " * (total - len(data) - 12 - len(b"Comment\0"))
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    png = data[:-12] + chunk + data[-12:]  # before IEND
    assert len(png) == total
    return png


def test_the_pages_fallback_limit_is_the_apis():
    from busi_classifier.serving.api import MAX_IMAGE_BYTES

    script = (STATIC_DIR / "app.js").read_text()
    assert f"const DEFAULT_IMAGE_BYTES = {MAX_IMAGE_BYTES};" in script
    assert "6 * 1024 * 1024" not in script


@needs_browser
def test_page_refuses_a_file_over_the_apis_image_limit_and_sends_one_at_it(browser, server, tmp_path):
    """The limit is the API's (GET /health limits.image_bytes: 4,400,000 bytes of image):
    a file one byte over it is refused on the page, without a request; a file of exactly
    that size is sent and answered (the old 6 MiB check let a 5.08 MB file through to a
    413 and would have refused nothing between 4.4 and 6.3 MB the API could not take)."""
    limit = get_json(server, "/health")["limits"]["image_bytes"]
    assert limit == 4_400_000
    at_limit = tmp_path / "at-limit.png"
    at_limit.write_bytes(padded_png(limit))
    over = tmp_path / "over.png"
    over.write_bytes(padded_png(limit + 1))
    issue = tmp_path / "issue.png"
    issue.write_bytes(padded_png(5_080_000))  # the issue's file: 6.77 MB as base64 JSON
    # the API itself: one byte over is 413, the limit itself is answered
    status, answer = post_predict(server, over.read_bytes(), explain=False)
    assert status == 413 and answer["error"]["code"] == "payload_too_large"
    open_page(browser, server.url + "/")
    for path in (over, issue):
        before = len(predict_events(server))
        upload(browser, path, "error")
        size = path.stat().st_size
        assert by_id(browser, "error").text.startswith(
            f"This file is {size:,} bytes ({size / 1e6:.2f} MB); the API takes at most 4,400,000 bytes (4.40 MB) "
            "of image per request")
        assert len(predict_events(server)) == before  # nothing sent
    upload(browser, at_limit, "done")
    [sent] = [json.loads(e["body"]) for e in predict_events(server)[-1:]]
    assert base64.b64decode(sent["image"]) == at_limit.read_bytes()


@needs_browser
def test_page_takes_its_size_limit_from_health(browser, tmp_path):
    small = 60_000
    srv = start(Recorder(health_edited(stub_handler(), lambda body: body.update(limits={"image_bytes": small}))))
    try:
        fits, too_big = tmp_path / "fits.png", tmp_path / "too-big.png"
        fits.write_bytes(padded_png(small))
        too_big.write_bytes(padded_png(small + 1))
        open_page(browser, srv.url + "/")
        upload(browser, too_big, "error")
        assert "the API takes at most 60,000 bytes (0.06 MB) of image" in by_id(browser, "error").text
        assert predict_events(srv) == []
        upload(browser, fits, "done")
        assert len(predict_events(srv)) == 1
    finally:
        stop(srv)


# --- the lesion outline (issue 20) ---------------------------------------------------


LESION_RED = (255, 48, 48)  # app.js LESION_COLOUR


def view_geometry(width: int, height: int) -> tuple[float, float, int, int]:
    """(scale x, scale y, offset x, offset y) of an upright width x height image on the
    square view, as the page draws it (drawPicture)."""
    scale = SIDE / max(width, height)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    return w / width, h / height, (SIDE - w) // 2, (SIDE - h) // 2


def assert_lesion_shown(driver, lesion: dict, size: tuple[int, int]) -> None:
    """The page shows the answer's lesion: the area line, and (when found) the outline
    scaled from the image's own pixels onto the view, drawn in red on #lesion."""
    area = by_id(driver, "lesion-area").text
    assert by_id(driver, "lesion-controls").is_displayed()
    if not lesion["found"]:
        assert area == "no lesion found"
        assert not by_id(driver, "lesion").is_displayed()
        return
    regions = f", {lesion['regions']} regions (the outline is the largest's)" if lesion["regions"] > 1 else ""
    assert area == f"lesion: {shown_percent(lesion['area_fraction'])} of the image{regions}"
    sx, sy, ox, oy = view_geometry(*size)
    expected = np.array([[ox + x * sx, oy + y * sy] for x, y in lesion["outline"]])
    drawn = np.array(json.loads(by_id(driver, "lesion").get_attribute("data-outline")))
    np.testing.assert_allclose(drawn, expected, atol=0.051)
    pixels = canvas_pixels(driver, "lesion")
    stroke = pixels[..., 3] > 0
    assert stroke.any()
    # every vertex of the polygon is on the stroke, the stroke red; the rest of the canvas transparent
    for x, y in expected:
        ys, xs = slice(max(0, int(y) - 1), int(y) + 2), slice(max(0, int(x) - 1), int(x) + 2)
        assert stroke[ys, xs].any(), (x, y)
    opaque = pixels[pixels[..., 3] == 255][:, :3]
    assert len(opaque) and (np.abs(opaque.astype(int) - LESION_RED) <= 1).all()
    far = np.ones_like(stroke)
    x0, y0 = expected.min(axis=0) - 3
    x1, y1 = expected.max(axis=0) + 3
    far[int(max(0, y0)):int(y1) + 1, int(max(0, x0)):int(x1) + 1] = False
    assert not stroke[far].any()  # nothing drawn outside the polygon's box
    assert by_id(driver, "lesion").is_displayed() == by_id(driver, "lesion-toggle").is_selected()


@needs_browser
def test_the_lesion_outline_is_drawn_over_the_image_and_the_area_printed(browser, tmp_path):
    """/health says the model has a lesion map: the page sends "segment": true beside
    "explain", draws the answer's outline over the shown image (scaled from image pixels to
    the view: it lands on the bright blob) and prints its area; the toggle hides and shows it."""
    from test_model_summary import CardStub

    srv = start(Recorder(stub_handler(CardStub())))
    try:
        open_page(browser, srv.url + "/")
        assert by_id(browser, "segment-available").text == "available (the page asks for it)"
        size = (360, 220)
        image = scan_png(tmp_path / "scan.png", size)
        upload(browser, image, "done")
        data = image.read_bytes()
        [sent] = [json.loads(e["body"]) for e in predict_events(srv)]
        assert sent == {"image": base64.b64encode(data).decode("ascii"), "explain": True, "segment": True}
        status, expected = post_predict(srv, data, explain=True, segment=True)
        assert status == 200 and expected["lesion"]["found"]
        assert_shows(browser, expected)
        assert_heatmap_drawn(browser, expected["explanation"]["grid"])  # the heat map as before, under the outline
        toggle = by_id(browser, "lesion-toggle")
        assert toggle.is_selected() and toggle.is_enabled()
        assert_lesion_shown(browser, expected["lesion"], size)
        # the outline surrounds the blob (scan_png: right of centre, above the middle)
        sx, sy, ox, oy = view_geometry(*size)
        ys, xs = np.nonzero(canvas_pixels(browser, "lesion")[..., 3] > 0)
        assert abs(xs.mean() - (ox + 0.72 * size[0] * sx)) < 30 and abs(ys.mean() - (oy + 0.35 * size[1] * sy)) < 30
        # the toggle, by keyboard: hidden, shown again
        from selenium.webdriver.common.keys import Keys

        toggle.send_keys(Keys.SPACE)
        assert not toggle.is_selected() and not by_id(browser, "lesion").is_displayed()
        assert by_id(browser, "lesion-area").is_displayed()  # the area stays
        toggle.send_keys(Keys.SPACE)
        assert toggle.is_selected() and by_id(browser, "lesion").is_displayed()

        # an image without a lesion: "no lesion found", nothing drawn, the toggle off
        dark = tmp_path / "dark.png"
        Image.new("L", (200, 150), 30).save(dark)
        upload(browser, dark, "done")
        _, expected = post_predict(srv, dark.read_bytes(), explain=True, segment=True)
        assert not expected["lesion"]["found"]
        assert_lesion_shown(browser, expected["lesion"], (200, 150))
        assert not by_id(browser, "lesion-toggle").is_enabled()
        assert (canvas_pixels(browser, "lesion")[..., 3] == 0).all()
    finally:
        stop(srv)


@needs_browser
def test_the_outline_of_an_exif_rotated_jpeg_is_drawn_on_the_upright_image(browser, tmp_path):
    """The answer's coordinates are of the upright image; the browser shows it upright too."""
    from test_model_summary import CardStub

    upright = Image.open(scan_png(tmp_path / "scan.png", (360, 220))).convert("L")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # stored 220 x 360; orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, "JPEG", quality=95, exif=exif.tobytes())
    srv = start(Recorder(stub_handler(CardStub())))
    try:
        open_page(browser, srv.url + "/")
        upload(browser, path, "done")
        _, expected = post_predict(srv, path.read_bytes(), explain=True, segment=True)
        assert expected["lesion"]["found"] and expected["lesion"]["mask_size"] == [256, 156]  # upright: wider
        assert_lesion_shown(browser, expected["lesion"], (360, 220))
    finally:
        stop(srv)


@needs_browser
@pytest.mark.parametrize("model", ["classify-only card", "no card", "health says yes, api says 501"])
def test_the_page_asks_for_the_outline_only_where_the_model_has_it(browser, tmp_path, model):
    from test_model_summary import CardStub, demo_card

    class Refuses(CardStub):
        segment_available = False  # a /health that promised more than the model does

    predictor = {"classify-only card": CardStub(demo_card(lesion=False)), "no card": StubPredictor(),
                 "health says yes, api says 501": Refuses()}[model]
    srv = start(Recorder(stub_handler(predictor)))
    try:
        open_page(browser, srv.url + "/")
        note = {"classify-only card": "not available for this model",
                "no card": "not known (the page does not ask for it)",
                "health says yes, api says 501": "available (the page asks for it)"}[model]
        assert by_id(browser, "segment-available").text == note
        upload(browser, scan_png(tmp_path / "scan.png"), "done")
        sent = [json.loads(e["body"]).get("segment") for e in predict_events(srv)]
        assert sent == ([True, None] if model == "health says yes, api says 501" else [None])
        if model == "health says yes, api says 501":
            assert by_id(browser, "segment-available").text == "not available for this model"
        assert not by_id(browser, "lesion-controls").is_displayed() and not by_id(browser, "lesion").is_displayed()
        assert by_id(browser, "heatmap").is_displayed() and not by_id(browser, "error").is_displayed()
    finally:
        stop(srv)


# --- the input check (issue 21): a clear warning above the class for a flagged image ----


def noise_png(path: Path, seed: int = 0, size=(120, 90)) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def checked_handler(environ=None):
    """The stub with the input check and a card (so that /health says what the check does)."""
    from api_stub import CheckedStubPredictor
    from test_model_summary import CardStub, demo_card

    class CheckedCardStub(CardStub, CheckedStubPredictor):
        pass

    return stub_handler(CheckedCardStub(demo_card(input_check=True)), environ=environ or {})


@needs_browser
def test_a_flagged_image_gets_a_warning_above_the_class(browser, tmp_path):
    srv = start(Recorder(checked_handler()))
    try:
        open_page(browser, srv.url + "/")
        assert by_id(browser, "input-check-available").text == "on: images unlike the training images are flagged"
        upload(browser, scan_png(tmp_path / "scan.png"), "done")
        warning = by_id(browser, "ood-warning")
        assert not warning.is_displayed()
        assert by_id(browser, "result").get_attribute("data-flagged") == "false"

        noise = noise_png(tmp_path / "noise.png")
        upload(browser, noise, "done")
        status, expected = post_predict(srv, noise.read_bytes())
        assert status == 200 and expected["input_check"]["in_distribution"] is False
        assert_shows(browser, expected)  # the class and the bars as always
        assert warning.is_displayed()
        assert warning.text.startswith("This image does not look like the breast ultrasound images the model was "
                                       "trained on.")
        score = f"{expected['input_check']['score']:.1f}"
        threshold = f"{expected['input_check']['threshold']:.1f}"
        assert f"score is {score}, above the threshold of {threshold}" in warning.text
        assert "5 % of genuine scans are flagged" in warning.text and "do not trust it" in warning.text
        assert warning.get_attribute("role") == "alert"
        # above the class, in the answer's panel
        top_of = "return document.getElementById(arguments[0]).getBoundingClientRect()"
        assert browser.execute_script(top_of + ".bottom", "ood-warning") <= browser.execute_script(
            top_of + ".top", "prediction")
        assert browser.execute_script("return document.getElementById('ood-warning').closest('section').id") == "result"
        assert by_id(browser, "result").get_attribute("data-flagged") == "true"

        # the next image that passes clears it
        upload(browser, scan_png(tmp_path / "scan-2.png", (300, 200)), "done")
        assert not warning.is_displayed()
    finally:
        stop(srv)


@needs_browser
def test_a_refused_image_shows_the_apis_sentence_and_no_class(browser, tmp_path):
    srv = start(Recorder(checked_handler({"OOD_ACTION": "refuse"})))
    try:
        open_page(browser, srv.url + "/")
        assert by_id(browser, "input-check-available").text == "on: the API refuses images unlike the training images"
        noise = noise_png(tmp_path / "noise.png", 1)
        upload(browser, noise, "error")
        status, expected = post_predict(srv, noise.read_bytes())
        assert status == 422 and expected["error"]["code"] == "out_of_distribution"
        error = by_id(browser, "error")
        assert error.is_displayed() and error.text == expected["error"]["message"]
        assert error.get_attribute("data-code") == "out_of_distribution"
        assert not by_id(browser, "result").is_displayed()
    finally:
        stop(srv)


@needs_browser
def test_a_model_without_the_check_shows_no_warning(browser, server, tmp_path):
    open_page(browser, server.url + "/")
    assert by_id(browser, "input-check-available").text == "not known"  # the stub has no card: /health's model null
    upload(browser, noise_png(tmp_path / "noise.png"), "done")
    assert not by_id(browser, "ood-warning").is_displayed()
