"""The function against the original approach, end to end, as issue 24 measures it.

    python benchmarks/end_to_end.py --model artifacts/busi_mt128 --data ../shared/busi/Dataset_BUSI_with_GT \
        --out end_to_end.json

One CPU (the process pinned to CPU 0 with ``taskset`` where it exists, one interpreter
thread), the run's held-back images (the ``test`` rows of its ``split.csv``) saved as RGB
PNGs, as the public download sends them, each sent as a direct ``{"image": base64}`` event:

* **the function**: ``lambda_function.lambda_handler`` with ``MODEL_PATH`` the model
  folder (its default variant, or ``--variant``), in a fresh process: base64, decode and
  resize, inference, the input check, calibration, the answer;
* **the original approach**: a new float32 interpreter per request (``model.tflite``),
  Pillow decode, nearest-neighbour resize, float32 input, in the same process.

Interleaved: each round sends every image once to each, in alternating order, after a
warm-up. Then a profile of the function's requests: what base64, ``decode_image`` and the
interpreter's invoke take of its p50 (the rest is the input check, calibration and the answer).
The ratio is the original's p50 over the function's.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import base64, io, json, os, sys, time
import numpy as np
from PIL import Image
spec = json.loads(open(sys.argv[1]).read())
events = [{"image": base64.b64encode(open(p, "rb").read()).decode()} for p in spec["paths"]]
import lambda_function
from ai_edge_litert.interpreter import Interpreter
from busi_classifier.serving.decode import decode_image
handler = lambda_function.lambda_handler
assert handler.predictor is not None, handler.load_error
size = spec["size"]

def original(event):
    interpreter = Interpreter(model_path=spec["float32"], num_threads=1)
    interpreter.allocate_tensors()
    image = Image.open(io.BytesIO(base64.b64decode(event["image"]))).convert("RGB").resize((size, size), Image.NEAREST)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.asarray(image, dtype=np.float32)[None])
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

for e in events[:3]:
    handler(e, None); original(e)
ours, theirs = [], []
for r in range(spec["rounds"]):
    for i, e in enumerate(events):
        pair = [(ours, lambda: handler(e, None)), (theirs, lambda: original(e))]
        for out, call in (pair if (r + i) % 2 == 0 else pair[::-1]):
            t = time.perf_counter(); answer = call(); out.append((time.perf_counter() - t) * 1000)
            if out is ours:
                assert "prediction" in answer, answer
# the profile: the function's parts on the same events
predictor = handler.predictor
b64, decode, invoke = [], [], []
for e in events:
    t = time.perf_counter(); data = base64.b64decode(e["image"]); b64.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter(); image = decode_image(data, size); decode.append((time.perf_counter() - t) * 1000)
    interp = predictor.interpreter
    interp.set_tensor(interp.get_input_details()[0]["index"], image[None].astype(np.float32))
    t = time.perf_counter(); interp.invoke(); invoke.append((time.perf_counter() - t) * 1000)
print(json.dumps({"ours_ms": ours, "original_ms": theirs, "b64_ms": b64, "decode_ms": decode, "invoke_ms": invoke,
                  "variant": predictor.variant, "threads": predictor.num_threads}))
"""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a train.py output folder (model.json, split.csv)")
    parser.add_argument("--data", type=Path, required=True, help="the dataset folder the run was trained on")
    parser.add_argument("--images", type=int, default=40, help="held-back images (default: 40, spread over the test rows)")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the images (default: 3)")
    parser.add_argument("--variant", default="", help="MODEL_VARIANT for the function (default: model.json's default)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def main(argv=None) -> int:
    args = parse_args(argv)
    from PIL import Image

    card = json.loads((args.model / "model.json").read_text())
    size = int(card["input"]["size"])
    with open(args.model / "split.csv", newline="") as f:
        test = [row["path"] for row in csv.DictReader(f) if row["split"] == "test"]
    if not test:
        print(f"{args.model / 'split.csv'} has no test rows", file=sys.stderr)
        return 2
    step = max(1, len(test) // args.images)
    chosen = test[::step][:args.images]
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"load average: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="end-to-end-") as tmp:
        paths = []
        for k, rel in enumerate(chosen):
            with Image.open(args.data / rel) as image:
                path = Path(tmp) / f"{k:03d}.png"
                image.convert("RGB").save(path)  # the public download's form
                paths.append(str(path))
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"paths": paths, "size": size, "rounds": args.rounds,
                                    "float32": str((args.model / "model.tflite").resolve())}))
        env = {**os.environ, "MODEL_PATH": str(args.model.resolve()), "NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
               "EMF_METRICS": "off", "PYTHONPATH": str(ROOT)}
        if args.variant:
            env["MODEL_VARIANT"] = args.variant
        pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
        done = subprocess.run([*pin, sys.executable, "-c", CHILD, str(spec)], cwd=ROOT, env=env, capture_output=True,
                              text=True)
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rgb_kb = median([Path(p).stat().st_size / 1024 for p in paths])
    ours, theirs = median(result["ours_ms"]), median(result["original_ms"])
    parts = {k: median(result[f"{k}_ms"]) for k in ("b64", "decode", "invoke")}
    print(f"{len(paths)} held-back images as RGB PNG (median {rgb_kb:.0f} KB), {args.rounds} rounds, "
          f"{'1 CPU (taskset -c 0)' if pin else 'not pinned (no taskset)'}, 1 thread; "
          f"variant {result['variant']}, {size} px")
    print("| path | p50 | p90 |\n|---|---:|---:|")
    for name, values in (("the function (lambda_handler, direct event)", result["ours_ms"]),
                         ("the original approach (interpreter per request, float32)", result["original_ms"])):
        print(f"| {name} | {median(values):.1f} ms | {sorted(values)[int(0.9 * (len(values) - 1))]:.1f} ms |")
    print(f"ratio (original p50 / function p50): x{theirs / ours:.2f}")
    print(f"the function's parts (p50): base64 {parts['b64']:.2f} ms, decode_image {parts['decode']:.2f} ms, "
          f"invoke {parts['invoke']:.1f} ms; the rest {ours - sum(parts.values()):.1f} ms")
    print(f"load average {os.getloadavg()[0]:.2f}")
    if args.out:
        args.out.write_text(json.dumps({
            "command": f"python {shlex.join(sys.argv)}", "model": str(args.model),
            "model_version": card.get("model_version"), "size": size, "variant": result["variant"],
            "images": len(paths), "rgb_png_median_kb": rgb_kb, "rounds": args.rounds, "pinned": bool(pin),
            "function_p50_ms": ours, "original_p50_ms": theirs, "ratio": theirs / ours,
            "parts_p50_ms": parts}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
