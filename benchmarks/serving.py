"""Serving benchmarks: what a Lambda request costs, per TFLite variant, against the
original approach. Writes the "serving" section of BENCHMARKS.md (`make bench`).

    python benchmarks/serving.py --model artifacts/model [--images DIR] [--requests 100]

Measured, each in fresh processes so nothing is shared between variants:
* init: `import lambda_function` including the model load (median of fresh processes);
* warm latency per image, p50 / p95, end to end through `lambda_handler` with a direct
  `{"image": base64}` event (base64 decode, PNG decode, resize, inference, calibration,
  JSON-ready answer), for every variant at 1 and 2 threads, and the peak RSS;
* the shared preprocessing alone (`decode_image`);
* the batch path (`{"images": [16 images]}`) throughput;
* the original approach on the same images: a new interpreter per request, nearest-
  neighbour resize, ImageNet mean subtracted by hand, float32 (timing replica: with this
  project's model, whose mean subtraction is inside, its answers are wrong, which is
  also what the original did once the model changed), on LiteRT and on the original's
  runtime, `tflite-runtime` (installed into a throwaway venv; skipped, and said so,
  where pip cannot install it or it cannot load the model: no wheels past Python 3.11);
* installed size of requirements.txt in a clean venv against a TensorFlow serving venv.

Images: the real BUSI PNGs at their original sizes (../shared/busi), or synthetic ones
where that folder is absent (said so in the output).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUSI = ROOT.parent / "shared" / "busi" / "Dataset_BUSI_with_GT"

# Runs in a fresh process: times lambda_handler on the images listed in argv[1].
WARM = r"""
import base64, json, resource, sys, time
import numpy as np
paths = json.loads(open(sys.argv[1]).read())
requests, batch = int(sys.argv[2]), int(sys.argv[3])
t0 = time.perf_counter()
import lambda_function
init_s = time.perf_counter() - t0
assert lambda_function.lambda_handler.predictor is not None, lambda_function.lambda_handler.load_error
events = [{"image": base64.b64encode(open(p, "rb").read()).decode()} for p in paths]
for e in events[:5]:
    lambda_function.lambda_handler(e, None)
times = []
for i in range(requests):
    t = time.perf_counter()
    answer = lambda_function.lambda_handler(events[i % len(events)], None)
    times.append((time.perf_counter() - t) * 1000)
    assert "prediction" in answer, answer
batch_event = {"images": [e["image"] for e in events[:batch]]}
lambda_function.lambda_handler(batch_event, None)
t = time.perf_counter()
rounds = 3
for _ in range(rounds):
    answer = lambda_function.lambda_handler(batch_event, None)
batch_s = (time.perf_counter() - t) / rounds
print(json.dumps({"init_s": init_s, "times_ms": times, "batch_images_per_s": batch / batch_s,
                  "variant": lambda_function.lambda_handler.predictor.variant, "threads": lambda_function.lambda_handler.predictor.num_threads,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

INIT = r"""
import json, time
t0 = time.perf_counter()
import lambda_function
print(json.dumps({"init_s": time.perf_counter() - t0, "error": lambda_function.lambda_handler.load_error}))
"""

# The original project's request path, replicated: new interpreter per request,
# nearest-neighbour resize, float32, ImageNet mean subtracted by hand.
ORIGINAL = r"""
import base64, io, json, sys, time
import numpy as np
from PIL import Image
from RUNTIME.interpreter import Interpreter
paths = json.loads(open(sys.argv[1]).read())
model, requests, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
events = [{"image": base64.b64encode(open(p, "rb").read()).decode()} for p in paths]

def handler(event):
    interpreter = Interpreter(model_path=model, num_threads=1)
    interpreter.allocate_tensors()
    image = Image.open(io.BytesIO(base64.b64decode(event["image"]))).convert("RGB").resize((size, size), Image.NEAREST)
    x = np.asarray(image, dtype=np.float32)[None, ..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.ascontiguousarray(x))
    interpreter.invoke()
    p = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]
    return {"prediction": int(np.argmax(p)), "probabilities": p.tolist()}

for e in events[:2]:
    handler(e)
times = []
for i in range(requests):
    t = time.perf_counter()
    handler(events[i % len(events)])
    times.append((time.perf_counter() - t) * 1000)
print(json.dumps({"times_ms": times}))
"""

PREPROCESS = r"""
import json, sys, time
from busi_classifier.serving.decode import decode_image
paths = json.loads(open(sys.argv[1]).read())
size = int(sys.argv[2])
data = [open(p, "rb").read() for p in paths]
for d in data[:3]:
    decode_image(d, size)
times = []
for d in data:
    t = time.perf_counter()
    decode_image(d, size)
    times.append((time.perf_counter() - t) * 1000)
print(json.dumps({"times_ms": times}))
"""


def run_python(python: str, code: str, args: list[str], env: dict) -> dict:
    result = subprocess.run([python, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def pct(values: list[float], q: float) -> float:
    return float(sorted(values)[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))])


def image_paths(folder: Path | None, limit: int) -> tuple[list[str], str]:
    if folder is None:
        folder = BUSI if BUSI.is_dir() else None
    if folder is not None and folder.is_dir():
        paths = sorted(str(p) for p in folder.rglob("*.png") if "_mask" not in p.name)
        step = max(1, len(paths) // limit)
        return paths[::step][:limit], f"{min(limit, len(paths))} real BUSI PNGs at their original sizes from {folder.name}"
    from busi_classifier.data.synthetic import generate_dataset

    tmp = generate_dataset(Path(tempfile.mkdtemp(prefix="bench-images-")), per_class=max(1, limit // 3), seed=0,
                           progress=False)
    paths = sorted(str(p) for p in tmp.rglob("*.png") if "_mask" not in p.name)
    return paths, f"{len(paths)} SYNTHETIC images (the real BUSI data was not found at {BUSI})"


def tflite_runtime_python() -> tuple[str | None, str, Path | None]:
    """A throwaway venv with the original project's runtime: (python, version or why not, folder)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-tflite-runtime-"))
    python = folder / "bin" / "python"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "tflite-runtime", "numpy<2", "pillow"], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        why = (exc.stderr or "").strip().splitlines()[-1:] or [str(exc)]
        return None, f"not installable for Python {sys.version_info.major}.{sys.version_info.minor} ({why[0][:120]})", None
    version = subprocess.run([str(python), "-c", "from importlib.metadata import version; print(version('tflite-runtime'))"],
                             capture_output=True, text=True).stdout.strip()
    return str(python), version, folder


def venv_size_mb(packages: list[str]) -> float:
    """Installed size (site-packages) of a fresh venv with ``packages`` (pip arguments)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-venv-"))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        subprocess.run([str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        *packages], check=True)
        site = next((folder / "lib").glob("python*/site-packages"))
        skip = {"pip", "setuptools", "_distutils_hack"}
        total = sum(f.stat().st_size for f in site.rglob("*") if f.is_file()
                    and f.relative_to(site).parts[0].split("-")[0] not in skip)
        return total / 2**20
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="artifacts/model", help="model folder written by train.py")
    p.add_argument("--images", default=None, help="folder of PNG images (default: ../shared/busi, else synthetic)")
    p.add_argument("--limit", type=int, default=60, help="images to cycle through")
    p.add_argument("--requests", type=int, default=100, help="timed requests per variant and thread count")
    p.add_argument("--init-runs", type=int, default=5, help="fresh processes for the init time")
    p.add_argument("--skip-sizes", action="store_true", help="skip the installed-size comparison (two venvs)")
    p.add_argument("--skip-tflite-runtime", action="store_true",
                   help="skip the original approach on tflite-runtime (a throwaway venv from PyPI)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)

    model_dir = Path(args.model).resolve()
    if not (model_dir / "model.json").is_file():
        print(f"error: no model in {model_dir}: run `make demo` or train.py first", file=sys.stderr)
        return 1
    meta = json.loads((model_dir / "model.json").read_text())
    size = int(meta["input"]["size"])
    paths, image_note = image_paths(Path(args.images) if args.images else None, args.limit)
    list_file = Path(tempfile.mkdtemp(prefix="bench-")) / "images.json"
    list_file.write_text(json.dumps(paths))
    python = sys.executable
    base_env = {k: v for k, v in os.environ.items() if k not in ("MODEL_VARIANT", "NUM_THREADS")}
    base_env.update({"MODEL_PATH": str(model_dir), "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING"})
    variants = list(meta.get("variants", {"float32": {}}))
    default = meta.get("default_variant", "float32")

    print(f"images: {image_note}; model {meta['model_version']} ({size} px); variants {variants}", flush=True)
    init = {}
    for variant in variants:
        env = {**base_env, "MODEL_VARIANT": variant}
        init[variant] = statistics.median(run_python(python, INIT, [], env)["init_s"] for _ in range(args.init_runs))
    warm = {}
    for variant in variants:
        for threads in (1, 2):
            env = {**base_env, "MODEL_VARIANT": variant, "NUM_THREADS": str(threads)}
            warm[variant, threads] = run_python(python, WARM, [str(list_file), str(args.requests), "16"], env)
            t = warm[variant, threads]["times_ms"]
            print(f"{variant} {threads} thread(s): p50 {pct(t, 50):.1f} ms, p95 {pct(t, 95):.1f} ms", flush=True)
    pre = run_python(python, PREPROCESS, [str(list_file), str(size)], base_env)["times_ms"]
    original_args = [str(list_file), str(model_dir / "model.tflite"), str(max(10, args.requests // 4)), str(size)]
    original = run_python(python, ORIGINAL.replace("RUNTIME", "ai_edge_litert"), original_args, base_env)["times_ms"]
    original_tfl, tfl_note = None, "skipped (--skip-tflite-runtime)"
    if not args.skip_tflite_runtime:
        print("installing tflite-runtime into a throwaway venv for the original approach ...", flush=True)
        tfl_python, tfl_note, tfl_folder = tflite_runtime_python()
        if tfl_python:
            try:
                original_tfl = run_python(tfl_python, ORIGINAL.replace("RUNTIME", "tflite_runtime"), original_args,
                                          base_env)["times_ms"]
                tfl_note = f"tflite-runtime {tfl_note}"
            except RuntimeError as exc:
                tfl_note = f"tflite-runtime {tfl_note} could not run the model ({str(exc).strip().splitlines()[-1][:160]})"
            finally:
                shutil.rmtree(tfl_folder, ignore_errors=True)
        else:
            tfl_note = f"tflite-runtime {tfl_note}"

    rows = ["| variant | file size | init (import + load) | p50 1 thread | p95 1 thread | p50 2 threads | "
            "p95 2 threads | batch of 16, images/s (2 threads) | peak RSS | top-1 agreement | macro-F1 diff |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for variant in variants:
        entry = meta.get("variants", {}).get(variant, {})
        ev = entry.get("evidence", {})
        w1, w2 = warm[variant, 1], warm[variant, 2]
        mark = " (default)" if variant == default else ""
        rows.append(
            f"| {variant}{mark} | {entry.get('bytes', 0) / 2**20:.1f} MB | {init[variant] * 1000:.0f} ms | "
            f"{pct(w1['times_ms'], 50):.1f} ms | {pct(w1['times_ms'], 95):.1f} ms | {pct(w2['times_ms'], 50):.1f} ms | "
            f"{pct(w2['times_ms'], 95):.1f} ms | {w2['batch_images_per_s']:.1f} | {w2['peak_rss_mb']:.0f} MB | "
            f"{ev.get('top1_agreement', float('nan')):.3f} | {ev.get('macro_f1_diff', float('nan')):+.3f} |")
    d1 = pct(warm[default, 1]["times_ms"], 50)
    o50 = pct(original, 50)
    if original_tfl:
        t50 = pct(original_tfl, 50)
        tfl_row = (f"| {tfl_note} (what the original project ran) | {t50:.1f} ms | {pct(original_tfl, 95):.1f} ms | "
                   f"**{t50 / d1:.1f}x** |")
    else:
        tfl_row = f"| {tfl_note} | - | - | - |"
    sizes = ""
    if not args.skip_sizes:
        print("measuring installed sizes (two fresh venvs) ...", flush=True)
        lean = venv_size_mb(["-r", str(ROOT / "requirements.txt")])
        heavy = venv_size_mb(["tensorflow-cpu", "pillow", "numpy"])
        sizes = (f"\n**Installed size** (site-packages of a fresh venv): `requirements.txt` (LiteRT serving) "
                 f"{lean:.0f} MB; TensorFlow-based serving (`tensorflow-cpu pillow numpy`) {heavy:.0f} MB "
                 f"({heavy / lean:.1f}x).\n")
    litert = subprocess.run([python, "-c", "from importlib.metadata import version as v; "
                             "print(v('ai-edge-litert'), v('numpy'), v('pillow'))"],
                            capture_output=True, text=True).stdout.split()
    body = f"""Model `{meta['model_version']}`, {size} px, trained on {meta['dataset'].get('images', '?')} images
(`{meta['training'].get('data_dir')}`). Images: {image_note}. {args.requests} timed requests per row after 5
warm-up requests, each row in its own fresh process. ai-edge-litert {litert[0] if litert else '?'}, NumPy
{litert[1] if len(litert) > 1 else '?'}, Pillow {litert[2] if len(litert) > 2 else '?'}.

Default variant: **{default}** ({meta.get('default_variant_reason', '')}).

{chr(10).join(rows)}

Latency is per image, end to end through `lambda_handler` (base64 + decode + resize + inference + calibration).
Preprocessing alone (`decode_image` of the original-size PNG to {size} px): p50 {pct(pre, 50):.1f} ms,
p95 {pct(pre, 95):.1f} ms.

**Against the original approach** (new float32 interpreter per request, nearest-neighbour resize, mean
subtracted by hand, 1 thread, same images), against the default variant on 1 thread (p50 {d1:.1f} ms):

| original approach on | p50 | p95 | default variant faster per request |
|---|---:|---:|---:|
| LiteRT (ai-edge-litert, this project's runtime) | {o50:.1f} ms | {pct(original, 95):.1f} ms | **{o50 / d1:.1f}x** |
{tfl_row}
{sizes}"""
    print(body)
    if not args.no_write:
        command = (f"python benchmarks/serving.py --model {args.model}" + (" --skip-sizes" if args.skip_sizes else "")
                   + (" --skip-tflite-runtime" if args.skip_tflite_runtime else ""))
        write_section("serving", "Serving: latency, init, variants, against the original approach", command, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
