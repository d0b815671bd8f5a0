"""`python -m busi_classifier invoke`: run the Lambda handler in this process on a few images
of each class, through every event shape, and print the answers (what `make demo` shows)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys


def invoke_main(argv) -> int:
    """Run the Lambda handler in this process on a few images of each class,
    through every event shape, and print the answers (what `make demo` shows)."""
    from busi_classifier.console import HelpFormatter, native_stderr_silenced, positive_int

    p = argparse.ArgumentParser(prog="python -m busi_classifier invoke", formatter_class=HelpFormatter,
                                description="Run the Lambda handler in this process on a few images of each class, "
                                "through every event\nshape, and print the answers (what `make demo` shows).",
                                epilog="example:\n  python -m busi_classifier invoke --model artifacts/model "
                                "--data data/synthetic --per-class 2")
    p.add_argument("--model", default=None,
                   help="model folder (serves its default variant, or MODEL_VARIANT) or one .tflite file, served as is "
                        "(default: MODEL_PATH, else artifacts/model)")
    p.add_argument("--data", required=True, help="dataset folder in the BUSI layout")
    p.add_argument("--per-class", type=positive_int, default=2, metavar="N",
                   help="images of each class to send, each through every event shape (the first N in file order)")
    args = p.parse_args(argv)

    from busi_classifier.data.dataset import DatasetError, read_dataset
    from busi_classifier.local.server import local_settings
    from busi_classifier.serving.api import make_handler
    from busi_classifier.serving.events import direct_event, http_v2_event, rest_v1_event

    # the answers are printed for a person: readable log lines, warnings only, no metric lines
    settings = dataclasses.replace(local_settings(args.model), log_level="WARNING", emf_metrics=False)
    with native_stderr_silenced():  # LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        handler = make_handler(settings)
    if handler.predictor is None:
        print(f"error: {handler.load_error}", file=sys.stderr)
        return 1
    try:
        samples = read_dataset(args.data)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    def show(kind: str, answer: dict) -> None:
        body = json.loads(answer["body"]) if "body" in answer else answer
        # direct invocations carry no status code: show the one API Gateway would give
        status = answer.get("statusCode") or ("error" if "error" in body else "ok")
        print(f"  {kind:<28} -> {status} {json.dumps(body)}")

    print("GET /health")
    show("REST API (1.0)", handler(rest_v1_event("GET", "/health"), None))
    show("HTTP API (2.0)", handler(http_v2_event("GET", "/health"), None))
    correct = total = 0
    for label in handler.predictor.classes:
        for sample in [s for s in samples if s.label == label][: args.per_class]:
            data = sample.path.read_bytes()
            print(f"{sample.path.name} (true: {label})")
            answers = {
                "direct {image}": handler(direct_event(data), None),
                "REST API (1.0) JSON body": handler(rest_v1_event("POST", "/predict", {"image": direct_event(data)["image"]}), None),
                "HTTP API (2.0) raw PNG body": handler(http_v2_event("POST", "/predict", raw=data), None),
            }
            for kind, answer in answers.items():
                show(kind, answer)
            if getattr(handler.predictor, "segment_available", False):
                lesion = handler({**direct_event(data), "segment": True}, None).get("lesion")
                print(f"  {'direct {image, segment}':<28} -> {lesion_summary(lesion)}")
            total += 1
            correct += answers["direct {image}"].get("prediction") == label
    print("bad input:")
    show("REST API, body not an image", handler(rest_v1_event("POST", "/predict", raw=b"hello"), None))
    show("direct, missing image", handler({"picture": "x"}, None))
    print(f"{correct}/{total} shown images predicted correctly")
    return 0


def lesion_summary(lesion: dict | None) -> str:
    """One line of a segment answer's ``lesion`` (without its mask PNG and outline)."""
    if not lesion:
        return "no lesion object in the answer"
    if not lesion["found"]:
        return f"no lesion found (peak probability {lesion['peak_probability']:.2f} < threshold {lesion['threshold']:g})"
    return (f"lesion {100 * lesion['area_fraction']:.1f} % of the image, {lesion['regions']} region(s), largest in "
            f"bbox {lesion['bbox']}, outline of {len(lesion['outline'])} points, peak probability "
            f"{lesion['peak_probability']:.2f}")
