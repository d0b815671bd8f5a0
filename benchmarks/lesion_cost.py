"""What the lesion output costs: the decoder in every invoke, and ``segment`` in the answer.
Writes the "lesion" section of BENCHMARKS.md.

    python benchmarks/lesion_cost.py --model artifacts/model [--size 224] [--requests 100]

Two measurements, both end to end through the Lambda handler with direct events, one
interpreter thread, the request kinds alternating on the same images:

1. The graph: a classify model and a multitask model of the same input size (``--size``,
   224 by default) built with seeded random weights and exported as training exports
   (float32 and int8_dynamic; int8_dynamic served, the usual default). The invoke's work
   does not depend on the weights' values, so this is what the decoder adds to every
   request, ``segment`` or not. Their multiply-adds are counted too.
2. The answer: a trained multitask model (``--model``, e.g. ``make demo``'s) with and
   without ``"segment": true``: what turning the map into the outline, box and mask PNG
   adds, and the answer's size.

Images: the real BUSI PNGs as users send them (RGB, original size) where ../shared/busi
exists, else synthetic ones (said so).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.explain import user_images  # noqa: E402
from benchmarks.report import write_section  # noqa: E402


def export_graph(task: str, size: int, out: Path) -> int:
    """Export a seeded random-weight model of ``task``; returns its multiply-adds."""
    import keras

    from busi_classifier.config import TrainConfig
    from busi_classifier.training.loop import export_model
    from busi_classifier.training.model import build_model, multiply_adds

    keras.utils.set_random_seed(0)
    config = TrainConfig(data_dir="-", out_dir=str(out), weights="none", image_size=size, task=task,
                         variants=("float32", "int8_dynamic"))
    model, _ = build_model(config)
    rng = __import__("numpy").random.default_rng(0)
    representative = rng.integers(0, 256, (4, size, size, 3), dtype="uint8")
    export_model(model, out, config, {"root": "-", "fingerprint_sha256": "-", "images": 0, "per_split": {},
                                      "split": "none", "split_file": "-", "synthetic": True},
                 representative=representative, progress=False)
    return multiply_adds(model)


def handler_for(model: Path, variant: str | None):
    from busi_classifier.console import native_stderr_silenced
    from busi_classifier.serving.api import make_handler
    from busi_classifier.serving.settings import ServingSettings

    os.environ.update(MODEL_PATH=str(model.resolve()), NUM_THREADS="1", LOG_LEVEL="ERROR", EMF_METRICS="off")
    if variant:
        os.environ["MODEL_VARIANT"] = variant
    else:
        os.environ.pop("MODEL_VARIANT", None)
    with native_stderr_silenced():
        handler = make_handler(ServingSettings.from_env())
    if handler.predictor is None:
        raise SystemExit(f"error: {handler.load_error}")
    return handler


def timed(kinds: dict[str, tuple], events: list[dict], requests: int) -> tuple[dict, dict]:
    """p50-ready times (ms) and answer sizes per kind; kinds: name -> (handler, extra event fields)."""
    times = {name: [] for name in kinds}
    sizes = {name: [] for name in kinds}
    names = list(kinds)
    for handler, extra in kinds.values():  # warm-up
        for e in events[:3]:
            handler({**e, **extra}, None)
    for i in range(requests):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            handler, extra = kinds[name]
            t0 = time.perf_counter()
            answer = handler({**events[i % len(events)], **extra}, None)
            times[name].append((time.perf_counter() - t0) * 1000)
            assert "error" not in answer, answer
            sizes[name].append(len(json.dumps(answer)))
    return times, sizes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="artifacts/model", help="a trained multitask model folder (its default "
                   "variant is served)")
    p.add_argument("--size", type=int, default=224, help="input side of the two random-weight graphs")
    p.add_argument("--requests", type=int, default=100, help="requests of each kind")
    p.add_argument("--images", type=int, default=20, help="distinct images cycled through")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = p.parse_args(argv)

    from busi_classifier.console import quiet_tensorflow

    quiet_tensorflow(False)
    load_before = os.getloadavg()[0]
    images, source = user_images(args.images)
    events = [{"image": base64.b64encode(data).decode()} for data in images]
    scratch = Path(tempfile.mkdtemp(prefix="lesion-cost-"))
    macs = {task: export_graph(task, args.size, scratch / task) for task in ("classify", "multitask")}
    graphs = {task: handler_for(scratch / task, "int8_dynamic") for task in macs}
    t_graph, _ = timed({task: (h, {}) for task, h in graphs.items()}, events, args.requests)

    trained = handler_for(Path(args.model), None)
    if not getattr(trained.predictor, "segment_available", False):
        print(f"error: {args.model} has no lesion output (train it with --task multitask)", file=sys.stderr)
        return 1
    t_answer, s_answer = timed({"without": (trained, {}), "with": (trained, {"segment": True})}, events,
                               args.requests)
    card = trained.predictor.card

    def p50(values):
        return statistics.median(values)

    def p95(values):
        return statistics.quantiles(values, n=100)[94]

    g, a = {k: p50(v) for k, v in t_graph.items()}, {k: p50(v) for k, v in t_answer.items()}
    demo = " (a demo model, trained on synthetic data)" if card.dataset.get("synthetic") else ""
    load = f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    body = f"""Images: {source}; 1 interpreter thread, {args.requests} requests of each kind, alternating, through
`lambda_handler` with direct events. Load average of the machine (1 min): {load}; on a busy machine the
absolute times are inflated, the alternating kinds see the same load, so read the differences.

**The decoder in every invoke** ({args.size} px, seeded random weights: the invoke's work does not depend
on the weights' values; int8_dynamic served):

| graph | multiply-adds | p50 ms | p95 ms |
|---|---|---|---|
| classify (ResNet50 + head + class maps) | {macs['classify'] / 1e9:.3f} G | {g['classify']:.1f} | {p95(t_graph['classify']):.1f} |
| multitask (+ lesion decoder) | {macs['multitask'] / 1e9:.3f} G (+{(macs['multitask'] / macs['classify'] - 1):.1%}) | {g['multitask']:.1f} | {p95(t_graph['multitask']):.1f} |
| added to every request | | **{g['multitask'] - g['classify']:+.1f}** ({g['multitask'] / g['classify'] - 1:+.0%}) | |

**`segment` in the answer** (`{args.model}`{demo}: {trained.predictor.variant}, {card.input.size} px, lesion map
{card.lesion.shape[1]}x{card.lesion.shape[2]}):

| request | p50 ms | p95 ms | answer size (median, JSON bytes) |
|---|---|---|---|
| without `segment` | {a['without']:.1f} | {p95(t_answer['without']):.1f} | {p50(s_answer['without']):,.0f} |
| with `segment: true` | {a['with']:.1f} | {p95(t_answer['with']):.1f} | {p50(s_answer['with']):,.0f} |
| added by `segment` | **{a['with'] - a['without']:+.1f}** | | **{p50(s_answer['with']) - p50(s_answer['without']):+,.0f}** |

The decoder runs in every invoke (one graph gives the probabilities, the class maps and the lesion map);
`segment` adds only the post-processing of the map (sampling it over the image, the regions, the traced
and simplified outline, the mask PNG at most 256 px a side).
"""
    print(body)
    if not args.no_write:
        write_section("lesion", "What the lesion output costs (the decoder and `segment`)",
                      f"python benchmarks/lesion_cost.py --model {args.model} --size {args.size} "
                      f"--requests {args.requests}", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
