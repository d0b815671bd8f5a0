"""The container under the real AWS Lambda Runtime Interface Emulator: cold start, warm
Duration, peak RSS and cost per million predictions; what the image carries; what the
images users send cost to decode. Writes three sections of BENCHMARKS.md.

    python benchmarks/cold_start.py [--model DIR] [--runs 5] [--requests 20] [--cpus 1,2]

The task root is laid out from the Dockerfile (tests/container_layout.py) with a clean
venv of requirements.txt, and ../shared/tools/aws-lambda-rie starts it fresh ``--runs``
times per TFLite variant (MODEL_VARIANT) and per CPU count (`taskset -c`), exactly as the
base image's entrypoint does. Cold start = process start to the first answer, split into
interpreter start (`python -c pass`), imports (`import lambda_function` with MODEL_PATH
at a missing folder), model load (the function's "function initialised" log line,
model_load_ms; else init with the model minus imports) and the first request (its
latency_ms log field); the rest is the emulator, awslambdaric and HTTP. Warm: the REPORT
lines' Duration of the ``--requests`` following requests. Peak RSS: VmHWM of the Python
runtime. CPU time per request: the runtime's utime+stime over the warm requests.

Model: a 224 px one (``artifacts/bench224``: `train.py --data data/synthetic --out
artifacts/bench224 --weights none --image-size 224 --epochs-head 1 --epochs-fine-tune 0`);
latency does not depend on accuracy, so a one-epoch model on synthetic data measures the
same network as the real one. Requests: real BUSI PNGs (../shared/busi) where present.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from container_layout import RIE, Emulator, build_image, cached_serving_venv, clean_env  # noqa: E402

from benchmarks.report import write_section  # noqa: E402

BUSI = ROOT.parent / "shared" / "busi" / "Dataset_BUSI_with_GT"
MEMORY_SIZES = [1024, 1769, 2048, 3008]
FULL_VCPU_MB = 1769  # Lambda: one vCPU's worth of CPU time at 1769 MB, in proportion to memory
PRICES = {"x86_64": 0.0000166667, "arm64": 0.0000133334}  # USD per GB-second, us-east-1
PRICE_PER_REQUEST = 0.20 / 1e6
CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def median_run(command: list[str], env: dict, cwd: Path, repeat: int) -> float:
    """Median wall time (ms) of a short command."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, env=env, cwd=cwd, check=True, capture_output=True)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


IMPORT_PROBE = ("import time; t = time.perf_counter(); import lambda_function; "
                "print('INIT_MS', (time.perf_counter() - t) * 1000)")


def probe_ms(python: Path, env: dict, cwd: Path, cpus: str, repeat: int) -> float:
    values = []
    for _ in range(repeat):
        out = subprocess.run(["taskset", "-c", cpus, str(python), "-c", IMPORT_PROBE], env=env, cwd=cwd,
                             check=True, capture_output=True, text=True).stdout
        values.append(float(next(line.split()[1] for line in out.splitlines() if line.startswith("INIT_MS"))))
    return statistics.median(values)


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def request_images(count: int) -> tuple[list[bytes], str]:
    if BUSI.is_dir():
        files = sorted(p for p in BUSI.glob("*/*.png") if "_mask" not in p.name)
        step = max(1, len(files) // count)
        return [p.read_bytes() for p in files[::step][:count]], f"{count} real BUSI PNGs (../shared/busi, as stored)"
    from busi_classifier.data.synthetic import generate_dataset

    folder = generate_dataset(Path(tempfile.mkdtemp()) / "synthetic", per_class=4, seed=0, progress=False)
    files = sorted(p for p in folder.glob("*/*.png") if "_mask" not in p.name)
    return [p.read_bytes() for p in files[:count]], f"{count} synthetic PNGs (../shared/busi absent)"


def one_cold_start(python, image, variant, cpus, events, requests, log_path) -> dict:
    env = {**image.env, "MODEL_VARIANT": variant}
    with Emulator(python, image.task_root, env, log_path, cpus=cpus) as emulator:
        emulator.wait_listening()
        status, body = emulator.invoke(events[0])
        cold_ms = (time.perf_counter() - emulator.started) * 1000
        assert status == 200 and b"prediction" in body, body[:300]
        pid = emulator.runtime_pids()[-1]
        cpu_before = proc_cpu_s(pid)
        for i in range(requests):
            emulator.invoke(events[(i + 1) % len(events)])
        cpu_per_request_ms = (proc_cpu_s(pid) - cpu_before) * 1000 / requests
        rss = vm_hwm_mb(pid)
        records = emulator.log_records()
        durations = emulator.durations_ms()
    init = next((r for r in records if r.get("message") == "function initialised"), {})
    first = next(r for r in records if r.get("message") == "request")
    return {"cold_ms": cold_ms, "model_load_ms": init.get("model_load_ms"), "first_request_ms": first["latency_ms"],
            "warm_ms": durations[1:], "rss_mb": rss, "cpu_ms": cpu_per_request_ms}


def cold_start_rows(args, python, image, variants, events) -> list[dict]:
    rows = []
    missing_env = clean_env({**image.env, "MODEL_PATH": str(image.task_root / "no-model"), "LOG_LEVEL": "ERROR"})
    with_model = clean_env(image.env)
    logs = Path(tempfile.mkdtemp(prefix="rie-logs-"))
    for cpus in args.cpus.split(","):
        cpu_list = ",".join(str(i) for i in range(int(cpus)))
        for variant in variants:
            runs, interpreters, imports_ms = [], [], []
            for i in range(args.runs):
                # the parts are measured right before each cold start, under the same load
                interpreters.append(median_run(["taskset", "-c", cpu_list, str(python), "-c", "pass"], clean_env({}),
                                               image.task_root, 1))
                imports_ms.append(probe_ms(python, missing_env, image.task_root, cpu_list, 1))
                runs.append(one_cold_start(python, image, variant, cpu_list, events, args.requests,
                                           logs / f"{variant}-{cpus}-{i}.log"))
                print(f"{variant} cpus={cpus} run {i + 1}/{args.runs}: cold {runs[-1]['cold_ms']:.0f} ms", flush=True)
            interpreter, imports = statistics.median(interpreters), statistics.median(imports_ms)
            loads = [r["model_load_ms"] for r in runs if r["model_load_ms"] is not None]
            if loads:
                load, load_source = statistics.median(loads), "log"
            else:
                env = {**with_model, "MODEL_VARIANT": variant}
                load, load_source = probe_ms(python, env, image.task_root, cpu_list, 3) - imports, "init - imports"
            cold = [r["cold_ms"] for r in runs]
            warm = [d for r in runs for d in r["warm_ms"]]
            rows.append({
                "variant": variant, "cpus": int(cpus), "cold_p50": percentile(cold, 50), "cold_p95": percentile(cold, 95),
                "interpreter": interpreter, "imports": imports, "model_load": load, "load_source": load_source,
                "first_request": statistics.median(r["first_request_ms"] for r in runs),
                "warm_p50": percentile(warm, 50), "warm_p95": percentile(warm, 95),
                "cpu_ms": statistics.median(r["cpu_ms"] for r in runs), "rss": max(r["rss_mb"] for r in runs),
            })
    return rows


def estimated_ms(rows: dict[int, dict], memory: int) -> tuple[float, int]:
    """(Duration at ``memory`` MB, threads). Lambda gives memory/1769 vCPUs' worth of CPU
    time. One thread (d1 = warm p50 pinned to 1 CPU) runs at the share below 1769 MB:
    d1 * 1769 / memory, and at d1 from there on. Two threads (d2 = warm p50 pinned to 2
    CPUs), where the runtime uses them (it uses as many threads as CPUs it sees), are no
    faster than d2 and do no more work per second than the share allows:
    max(d2, d1 * 1769 / memory). The better of the two."""
    share = memory / FULL_VCPU_MB
    d1 = rows[1]["warm_p50"]
    best = (d1 / min(share, 1.0), 1)
    if 2 in rows and share > 1:
        two = max(rows[2]["warm_p50"], d1 / share)
        if two < best[0]:
            best = (two, 2)
    return best


def cost_table(rows: list[dict], variant: str) -> tuple[str, list[dict]]:
    by_cpus = {r["cpus"]: r for r in rows if r["variant"] == variant}
    lines = ["| memory | vCPU share | est. Duration | threads | billed ms | x86_64 $/million | arm64 $/million |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    table = []
    for memory in MEMORY_SIZES:
        duration, threads = estimated_ms(by_cpus, memory)
        billed = int(-(-duration // 1))
        cost = {arch: 1e6 * (memory / 1024 * billed / 1000 * price + PRICE_PER_REQUEST) for arch, price in PRICES.items()}
        table.append({"memory": memory, "duration": duration, "threads": threads, "cost": cost})
        lines.append(f"| {memory} MB | {memory / FULL_VCPU_MB:.2f} | {duration:.1f} ms | {threads} | {billed} | "
                     f"${cost['x86_64']:.2f} | ${cost['arm64']:.2f} |")
    return "\n".join(lines), table


# --------------------------------------------------------------------------- image contents


def tree_mb(path: Path, skip: tuple[str, ...] = ()) -> float:
    total = 0
    for p in path.rglob("*"):
        if p.is_file() and not any(part in skip for part in p.relative_to(path).parts[:1]):
            total += p.stat().st_size
    return total / 1e6


def image_contents(python: Path, model: Path, tmp: Path) -> str:
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the venv's own pip is not in the image (pip install --target installs only the requirements)
    skip = tuple(p.name for p in site.iterdir() if p.name.split("-")[0] in ("pip", "setuptools", "_distutils_hack",
                                                                               "distutils-precedence.pth"))
    packages = tree_mb(site, skip)
    biggest = sorted(((tree_mb(p), p.name) for p in site.iterdir() if p.is_dir() and p.name not in skip
                      and not p.name.endswith(".dist-info")), reverse=True)[:4]
    default = build_image(tmp / "default", {"MODEL_DIR": str(model)})
    everything = build_image(tmp / "all", {"MODEL_DIR": str(model), "EXTRA_VARIANTS": "all"})
    code = tree_mb(default.task_root, ("model",)) - sum(r.stat().st_size for r in default.requirements) / 1e6
    rows = ["| | model files | requirements.txt packages | code | total |", "|---|---|---:|---:|---:|"]
    card = json.loads((model / "model.json").read_text())
    sizes = {p.name: p.stat().st_size / 1e6 for p in (everything.task_root / "model").iterdir()}
    built = sorted(p.name for p in (default.task_root / "model").iterdir())
    options = [("before: every variant (`EXTRA_VARIANTS=all`)", sorted(sizes))]
    options.append((f"after: default (this model's default_variant, {card['default_variant']}; built)", built))
    for name, entry in card["variants"].items():
        if name != card["default_variant"]:
            options.append((f"after, were {name} the default", ["model.json", entry["file"]]))
    for label, files in options:
        model_mb = sum(sizes[f] for f in files)
        listing = ", ".join(f"{f} {sizes[f]:.1f} MB" for f in files)
        rows.append(f"| {label} | {listing} | {packages:.0f} MB | {code:.2f} MB | **{model_mb + packages + code:.0f} MB** |")
    return ("\n".join(rows) + "\n\nLargest packages: " + ", ".join(f"{name} {mb:.0f} MB" for mb, name in biggest)
            + ". Sizes are file bytes in the task root; the base image comes on top.")


# --------------------------------------------------------------------------- images users send

DECODE_PROBE = r"""
import base64, io, json, statistics, sys, time
import numpy as np
from PIL import Image, ImageOps
from busi_classifier.serving.decode import decode_image, open_image

def one_channel(data, size):
    # prototype: decode to L, resize, pad, repeat to 3 channels (not the served decode)
    image = open_image(data)
    if image.format == "JPEG":
        image.draft("L", (size, size))
    image = ImageOps.exif_transpose(image).convert("L")
    w, h = image.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = image.resize(new, Image.Resampling.BILINEAR)
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(resized, ((size - new[0]) // 2, (size - new[1]) // 2))
    return np.repeat(np.asarray(canvas, dtype=np.uint8)[:, :, None], 3, axis=2)

def p50(fn, items, rounds=3):
    times = []
    for _ in range(rounds):
        for item in items:
            t = time.perf_counter(); fn(item); times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)

sets = json.loads(open(sys.argv[1]).read())
size = int(sys.argv[2])
import lambda_function
handler = lambda_function.lambda_handler
out = {}
for name, paths in sets.items():
    blobs = [open(p, "rb").read() for p in paths]
    events = [{"image": base64.b64encode(b).decode()} for b in blobs]
    for e in events[:3]:
        handler(e, None)
    out[name] = {
        "decode": p50(lambda b: decode_image(b, size), blobs),
        "one_channel": p50(lambda b: one_channel(b, size), blobs),
        "end_to_end": p50(lambda e: handler(e, None), events),
        "max_abs_diff": max(int(np.abs(decode_image(b, size).astype(int) - one_channel(b, size)).max()) for b in blobs),
        "bytes": statistics.median(len(b) for b in blobs),
    }
print("RESULT " + json.dumps(out))
"""


def request_image_costs(python: Path, image, size: int, count: int, tmp: Path) -> tuple[str, dict]:
    if not BUSI.is_dir():
        return "Skipped: ../shared/busi is absent.", {}
    from PIL import Image

    files = sorted(p for p in BUSI.glob("*/*.png") if "_mask" not in p.name)
    gray = [p for p in files if Image.open(p).mode == "L"][:: max(1, len(files) // count)][:count]
    rgb_dir = tmp / "rgb"
    rgb_dir.mkdir(parents=True)
    rgb = []
    for p in gray:  # the public download's form: the same pixels as 8-bit RGB PNG
        target = rgb_dir / p.name
        Image.open(p).convert("RGB").save(target)
        rgb.append(target)
    sets = tmp / "sets.json"
    sets.write_text(json.dumps({"grayscale (as stored in ../shared)": [str(p) for p in gray],
                                "RGB (the public download's form)": [str(p) for p in rgb]}))
    env = clean_env({**image.env, "LOG_LEVEL": "ERROR", "EMF_METRICS": "off", "NUM_THREADS": "1"})
    out = subprocess.run(["taskset", "-c", "0", str(python), "-c", DECODE_PROBE, str(sets), str(size)], env=env,
                         cwd=image.task_root, capture_output=True, text=True, check=True).stdout
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    lines = ["| images | median PNG size | decode_image p50 | one-channel prototype p50 | end to end p50 "
             "(handler, 1 thread) | max pixel difference prototype vs decode_image |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in result.items():
        lines.append(f"| {name} | {r['bytes'] / 1e3:.0f} KB | {r['decode']:.1f} ms | {r['one_channel']:.1f} ms | "
                     f"{r['end_to_end']:.1f} ms | {r['max_abs_diff']} |")
    return "\n".join(lines), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_model = ROOT / "artifacts" / ("bench224" if (ROOT / "artifacts" / "bench224" / "model.json").exists()
                                          else "model")
    parser.add_argument("--model", type=Path, default=default_model, help="model folder (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=5, help="fresh emulator starts per variant and CPU count")
    parser.add_argument("--requests", type=int, default=20, help="warm requests after each cold start")
    parser.add_argument("--cpus", default="1,2", help="CPU counts to pin the emulator to (taskset)")
    parser.add_argument("--variants", default="", help="comma-separated variants (default: every one in model.json)")
    parser.add_argument("--cost-variant", default="",
                        help="variant of the cost table (default: model.json's default_variant)")
    parser.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "busi-serving-venv",
                        help="clean venv of requirements.txt (made if absent; default: %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="print, do not write BENCHMARKS.md")
    args = parser.parse_args(argv)
    if not RIE.is_file():
        parser.error(f"the emulator is not at {RIE}")
    if not (args.model / "model.json").is_file():
        parser.error(f"no model.json in {args.model}: train one (see this script's docstring)")
    card = json.loads((args.model / "model.json").read_text())
    variants = args.variants.split(",") if args.variants else list(card["variants"])
    default_variant = args.cost_variant or card["default_variant"]
    if default_variant not in variants:
        parser.error(f"--variants must include {default_variant} (the cost table's variant)")
    size = int(card["input"]["size"])
    load_before = os.getloadavg()

    python = cached_serving_venv(args.venv)
    tmp = Path(tempfile.mkdtemp(prefix="cold-start-"))
    image = build_image(tmp / "image", {"MODEL_DIR": str(args.model), "EXTRA_VARIANTS": "all"})
    blobs, images_note = request_images(10)
    events = [json.dumps({"image": base64.b64encode(b).decode()}).encode() for b in blobs]
    rows = cold_start_rows(args, python, image, variants, events)
    contents = image_contents(python, args.model, tmp / "contents")
    decode_table, decode_result = request_image_costs(python, image, size, 20, tmp / "decode")
    load_after = os.getloadavg()
    cost_text, table = cost_table(rows, default_variant)

    command = "python benchmarks/cold_start.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load = (f"Load average (1 min) {load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end on "
            f"{os.cpu_count()} CPUs: the machine was shared, so these are upper bounds; rerun on an idle machine.")
    header = ("| variant | CPUs | cold start p50 | p95 | interpreter | imports | model load | first request | "
              "rest (RIE, awslambdaric, HTTP) | warm Duration p50 | p95 | CPU ms / request | peak RSS |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    body_rows = []
    for r in rows:
        rest = r["cold_p50"] - r["interpreter"] - r["imports"] - r["model_load"] - r["first_request"]
        mark = " (default)" if r["variant"] == default_variant else ""
        body_rows.append(f"| {r['variant']}{mark} | {r['cpus']} | {r['cold_p50']:.0f} ms | {r['cold_p95']:.0f} ms | "
                         f"{r['interpreter']:.0f} ms | {r['imports']:.0f} ms | {r['model_load']:.0f} ms | "
                         f"{r['first_request']:.0f} ms | {rest:.0f} ms | {r['warm_p50']:.1f} ms | "
                         f"{r['warm_p95']:.1f} ms | {r['cpu_ms']:.1f} | {r['rss']:.0f} MB |")
    load_sources = {r["load_source"] for r in rows}
    cold_body = f"""Model `{card.get('model_version', '?')}`, {size} px (`{args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model}`), every variant in the image (`EXTRA_VARIANTS=all`, MODEL_VARIANT picks one).
Emulator: `../shared/tools/aws-lambda-rie` (v1.14), started fresh {args.runs} times per row, pinned with `taskset`;
{args.requests} warm requests after each cold start ({images_note}, direct `{{"image": base64}}` events).
{load}

Cold start = emulator process start to the first answer (the emulator starts the runtime at the first
request). Parts: interpreter = `python -c pass`; imports = `import lambda_function` with MODEL_PATH at a
missing folder; model load = {'the function log line `function initialised` (model_load_ms)' if load_sources == {'log'} else 'init with the model minus imports'};
first request = its `latency_ms` log field; the rest is the emulator, awslambdaric and HTTP. Warm Duration =
the REPORT lines of the following requests (pooled over the runs). CPU ms = the runtime's user+system time
per warm request. Peak RSS = VmHWM of the Python runtime.

{header}
{chr(10).join(body_rows)}

### Cost per million predictions (default variant `{default_variant}`)

Lambda prices, us-east-1: x86_64 $0.0000166667 per GB-second, arm64 $0.0000133334 per GB-second, plus
$0.20 per million requests; Duration billed per 1 ms. Model: Lambda gives CPU time in proportion to memory
(one vCPU's worth at 1769 MB; share = memory/1769). d1, d2 = warm Duration p50 pinned to 1 and 2 CPUs.
One thread: d1 x 1769/memory below 1769 MB, d1 from there on. Two threads (where the runtime uses them:
it takes as many threads as CPUs it sees; NUM_THREADS sets it): max(d2, d1 x 1769/memory), i.e. no
faster than on two full CPUs and no more work per second than the share. The better of the two is shown. arm64 assumes the x86_64 Duration (not measured here: no Graviton host);
cold starts (init is billed too) are left out: at one cold start per thousand requests they add well under 1 %.

{cost_text}
"""
    contents_body = f"""What the function's task root holds (`docker/select_model.py` picks the model files; the test lays
out the same task root from the Dockerfile). Model `{args.model.name}` ({size} px).

{contents}
"""
    decode_body = f"""Per request, on 20 real BUSI images: as stored in ../shared (8-bit grayscale PNG) and the same pixels
saved as RGB PNG (the public download's form; converted in a temporary folder). Default variant
`{default_variant}`, {size} px, 1 thread, in-process (`lambda_handler`, direct event), 3 rounds, p50.
The one-channel prototype decodes to L, resizes, pads and repeats to 3 channels (a prototype in this
script; `decode_image` is unchanged). It gives the same pixels for grayscale content (difference 0 above)
and would drop the colour of burned-in annotations.

{decode_table}
"""
    if args.no_write:
        print(cold_body, contents_body, decode_body, sep="\n")
    else:
        write_section("cold-start", "Cold start and cost under the Lambda emulator", command, cold_body)
        write_section("image-contents", "What the image carries", command, contents_body)
        write_section("request-images", "What the images users send cost (RGB against grayscale)", command, decode_body)
        print(cold_body, contents_body, decode_body, sep="\n")
    print(json.dumps({"rows": rows, "costs": table, "decode": decode_result}, default=str), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
