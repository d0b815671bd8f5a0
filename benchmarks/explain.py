"""What ``explain`` costs: latency added per request (p50/p95, one interpreter thread) and
the answer's size, with and without the explanation. Writes the "explain" section of
BENCHMARKS.md.

    python benchmarks/explain.py --model artifacts/model [--requests 200]

Both are measured end to end through the Lambda handler with direct ``{"image": b64}``
events (base64, decode, resize, invoke, calibration, and with explain: normalising the
map and encoding the overlay PNG), alternating the two kinds of request on the same
images so that both see the same machine. Images: the real BUSI PNGs as users send them
(RGB, original size: the shared copy's grayscale files converted to RGB), or synthetic
ones where ../shared/busi is absent (said so). The payload limits compared against:
Lambda's 6 MB synchronous response and API Gateway's 10 MB.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUSI = ROOT.parent / "shared" / "busi" / "Dataset_BUSI_with_GT"
LAMBDA_RESPONSE_LIMIT = 6 * 1024 * 1024
API_GATEWAY_LIMIT = 10 * 1024 * 1024


def user_images(n: int) -> tuple[list[bytes], str]:
    from PIL import Image

    if BUSI.is_dir():
        paths = sorted(p for label in ("benign", "malignant", "normal") for p in (BUSI / label).glob("*.png")
                       if "_mask" not in p.name)[::7][:n]
        images = []
        for path in paths:
            with Image.open(path) as image:
                buffer = io.BytesIO()
                image.convert("RGB").save(buffer, format="PNG")
                images.append(buffer.getvalue())
        return images, f"{len(images)} BUSI images as RGB PNGs at their original size (every 7th file)"
    import tempfile

    from busi_classifier.data.synthetic import generate_dataset

    root = generate_dataset(Path(tempfile.mkdtemp()), per_class=max(1, n // 3), seed=0, progress=False)
    paths = sorted(p for p in root.rglob("*.png") if "_mask" not in p.name)[:n]
    return [p.read_bytes() for p in paths], f"{len(paths)} synthetic images (../shared/busi not found)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="artifacts/model", help="model folder (its default variant is served)")
    p.add_argument("--requests", type=int, default=200, help="requests of each kind")
    p.add_argument("--images", type=int, default=20, help="distinct images cycled through")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = p.parse_args(argv)

    os.environ.update(MODEL_PATH=str(Path(args.model).resolve()), NUM_THREADS="1", LOG_LEVEL="ERROR", EMF_METRICS="off")
    from busi_classifier.console import native_stderr_silenced
    from busi_classifier.serving.api import make_handler
    from busi_classifier.serving.settings import ServingSettings

    with native_stderr_silenced():
        handler = make_handler(ServingSettings.from_env())
    if handler.predictor is None:
        print(f"error: {handler.load_error}", file=sys.stderr)
        return 1
    if not handler.predictor.has_maps:
        print("error: this model has no class maps (exported before format_version 3)", file=sys.stderr)
        return 1
    images, source = user_images(args.images)
    events = [{"image": base64.b64encode(data).decode()} for data in images]
    times: dict[bool, list[float]] = {False: [], True: []}
    sizes: dict[bool, list[int]] = {False: [], True: []}
    for e in events[:3]:  # warm-up
        handler(e, None), handler({**e, "explain": True}, None)
    for i in range(args.requests):
        for explain in (False, True) if i % 2 == 0 else (True, False):
            event = {**events[i % len(events)], "explain": True} if explain else events[i % len(events)]
            t0 = time.perf_counter()
            answer = handler(event, None)
            times[explain].append((time.perf_counter() - t0) * 1000)
            assert "error" not in answer, answer
            sizes[explain].append(len(json.dumps(answer)))

    def pct(values, q):
        return statistics.quantiles(values, n=100)[q - 1]

    p50 = {k: statistics.median(v) for k, v in times.items()}
    p95 = {k: pct(v, 95) for k, v in times.items()}
    size = {k: statistics.median(v) for k, v in sizes.items()}
    card = handler.predictor.card
    grid = card.explain.shape[1:3] if card and card.explain else "?"
    body = f"""Model: `{args.model}` ({handler.predictor.variant}, {card.input.size if card else '?'} px, map grid
{grid[0]}x{grid[1]}), 1 interpreter thread, {args.requests} requests of each kind, alternating, through
`lambda_handler` with direct events. Images: {source}.

| | p50 ms | p95 ms | answer size (median, JSON bytes) |
|---|---|---|---|
| without `explain` | {p50[False]:.1f} | {p95[False]:.1f} | {size[False]:,.0f} |
| with `explain: true` | {p50[True]:.1f} | {p95[True]:.1f} | {size[True]:,.0f} |
| added by `explain` | **{p50[True] - p50[False]:+.1f}** | {p95[True] - p95[False]:+.1f} | **{size[True] - size[False]:+,.0f}** |

The largest answer with `explain` was {max(sizes[True]):,} bytes: {max(sizes[True]) / LAMBDA_RESPONSE_LIMIT:.1%} of
Lambda's 6 MB response limit and {max(sizes[True]) / API_GATEWAY_LIMIT:.1%} of API Gateway's 10 MB; a batch
of 16 with `explain` stays under {16 * max(sizes[True]) / 1e6:.1f} MB. The class maps come out of the same
invoke as the probabilities (a 1x1 convolution over the last feature map: {grid[0]}x{grid[1]}x2048x3 =
{grid[0] * grid[1] * 2048 * 3:,} multiply-adds, next to ResNet50's ~4 billion at 224 px); a request
without `explain` reads only the probabilities and gets the same answer fields as before the maps existed.
What `explain` adds is normalising the map and encoding the overlay PNG.
"""
    print(body)
    if not args.no_write:
        write_section("explain", "What `explain` costs (class activation maps in the answer)",
                      f"python benchmarks/explain.py --model {args.model} --requests {args.requests}", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
