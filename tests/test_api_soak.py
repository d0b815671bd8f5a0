"""Soak: a few thousand requests of every kind through the handler leave memory where
it was after warm-up (Python heap by tracemalloc, process RSS for the native side:
Pillow, NumPy, LiteRT). The bounds are generous; a leak of even one image per request
(kilobytes each, thousands of requests) would pass them by far."""

from __future__ import annotations

import gc
import io
import os
import tracemalloc

import numpy as np
import pytest
from api_stub import Context, stub_handler
from PIL import Image

from busi_classifier.serving import observability
from busi_classifier.serving.events import b64, direct_event, http_v2_event, rest_v1_event

REQUESTS = 3000
WARM_UP = 300


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def request_mix() -> list[dict]:
    rng = np.random.default_rng(0)
    gray = Image.fromarray(rng.integers(0, 256, (72, 90), dtype=np.uint8), "L")
    png, jpeg = encode(gray), encode(gray.convert("RGB"), "JPEG")
    gif = encode(gray.convert("P"), "GIF")
    return [
        direct_event(png),
        rest_v1_event("POST", "/predict", raw=png),
        http_v2_event("POST", "/predict", raw=jpeg, content_type="image/jpeg"),
        http_v2_event("POST", "/predict", {"images": [b64(png), b64(gif)]}),
        rest_v1_event("GET", "/health"),
        rest_v1_event("POST", "/predict", raw=png[:100]),  # truncated
        {"image": "not base64!"},
        http_v2_event("DELETE", "/predict"),
        {**rest_v1_event("POST", "/predict"), "body": "[" * 5000},
    ]


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class NullStream:
    def write(self, text):
        return len(text)

    def flush(self):
        pass


@pytest.fixture(params=["stub", pytest.param("model", marks=pytest.mark.slow)])
def handler(request, monkeypatch):
    # the log and metric lines go nowhere: a capturing stream would itself grow
    monkeypatch.setattr(observability.sys, "stdout", NullStream())
    if request.param == "stub":
        return stub_handler()
    return request.getfixturevalue("lambda_module").lambda_handler


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc (Linux)")
def test_memory_does_not_grow_over_thousands_of_requests(handler):
    events = request_mix()
    context = Context()

    def run(count: int) -> set[int]:
        statuses = set()
        for i in range(count):
            answer = handler(events[i % len(events)], context)
            statuses.add(answer.get("statusCode", 200 if "error" not in answer else 400))
        return statuses

    run(WARM_UP)
    gc.collect()
    tracemalloc.start()
    try:
        heap_before, rss_before = tracemalloc.get_traced_memory()[0], rss_bytes()
        statuses = run(REQUESTS)
        gc.collect()
        heap_after, rss_after = tracemalloc.get_traced_memory()[0], rss_bytes()
    finally:
        tracemalloc.stop()
    assert statuses >= {200, 400, 405}  # the mix really exercised answers and errors
    heap_growth, rss_growth = heap_after - heap_before, rss_after - rss_before
    assert heap_growth < 1_000_000, f"Python heap grew by {heap_growth} bytes over {REQUESTS} requests"
    assert rss_growth < 40 * 2**20, f"RSS grew by {rss_growth / 2**20:.1f} MiB over {REQUESTS} requests"
