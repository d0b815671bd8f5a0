"""How far the served model is from what this core can do, and which kernels run it.

    python benchmarks/floor.py --model artifacts/busi_mt128 --out floor.json

1. **Work per image.** The multiply-adds of every CONV_2D, DEPTHWISE_CONV_2D,
   TRANSPOSE_CONV and FULLY_CONNECTED op of the model's float32 file, from the tensor
   shapes LiteRT reports (``output elements x kernel height x kernel width x input
   channels`` for a convolution); the element-wise ops (ADD, RESIZE, pooling) are not
   counted: they are a few per cent of the work and no multiply-add unit runs them.
2. **Which kernels run.** For each variant file, the ops LiteRT hands to its default
   delegate (XNNPACK) and the ones it runs with its own reference kernels, found from the
   delegate nodes' inputs and outputs in the interpreter's node list; and the CPU's vector
   extensions (XNNPACK picks its micro-kernels for them when it starts: AVX2 with
   ``vpmaddwd`` for int8 where there is no AVX-512 VNNI or AVX-VNNI, ``vpdpbusd`` where there is).
3. **The peak.** The core's multiply-add rate on one thread, measured by a loop of
   independent vector instructions with no memory traffic (compiled here with gcc), for
   the instruction sequences the kernels use: float32 FMA (``vfmadd231ps``, 8 per ymm);
   int8 on AVX2 (``vpmaddubsw`` then ``vpmaddwd`` by ones, 32 u8 x s8 products per pair);
   int16 (``vpmaddwd``, 16 per instruction: XNNPACK's AVX2 int8 kernels widen to int16 and use
   this one); and AVX-512 VNNI (``vpdpbusd``, 64 per zmm) where the CPU has it. A
   measured peak, not a datasheet figure: it is what the core gives that instruction
   stream, at whatever clock it runs.
4. **The floor.** For each variant: multiply-adds / its median invoke time on one
   thread (interleaved rounds, the same random image), against the peak of the unit
   that runs it (float32 and float16 files run in float32; int8 files on the int8
   kernels): the fraction of the hardware limit the model reaches.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED")

PEAK_SOURCE = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

/* 8 independent accumulators, each in its own register (named, so that the compiler
   cannot keep them in memory): more than the latency x throughput of every instruction
   here. The empty asm makes the operand opaque at each step, so the compiler cannot
   compute the loop-invariant products once and keep only the additions. */
#define CHAINS(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7)
#define N_CHAINS 8.0

__attribute__((noinline, target("avx2,fma"))) static double fma32(long n) {
    __m256 b = _mm256_set1_ps(1.0000001f), c = _mm256_set1_ps(1e-7f);
#define DECL(i) __m256 a##i = _mm256_set1_ps((float)i);
#define STEP(i) a##i = _mm256_fmadd_ps(a##i, b, c);
#define SUM(i) s += _mm256_cvtss_f32(a##i);
    CHAINS(DECL)
    double t0 = now();
    for (long k = 0; k < n; k++) { CHAINS(STEP) }
    double t = now() - t0;
    float s = 0; CHAINS(SUM)
    if (s == 12345.f) puts("");
    return N_CHAINS * 8.0 * n / t;  /* chains x 8 lanes */
#undef DECL
#undef STEP
#undef SUM
}

__attribute__((noinline, target("avx2"))) static double u8s8(long n) {
    __m256i x = _mm256_set1_epi8(3), w = _mm256_set1_epi8(-2), ones = _mm256_set1_epi16(1);
#define DECL(i) __m256i a##i = _mm256_set1_epi32(i);
#define STEP(i) a##i = _mm256_add_epi32(a##i, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w), ones)); \
    __asm__("" : "+x"(x));
#define SUM(i) s += _mm256_extract_epi32(a##i, 0);
    CHAINS(DECL)
    double t0 = now();
    for (long k = 0; k < n; k++) { CHAINS(STEP) }
    double t = now() - t0;
    int s = 0; CHAINS(SUM)
    if (s == 12345) puts("");
    return N_CHAINS * 32.0 * n / t;  /* chains x 32 u8 x s8 products */
#undef DECL
#undef STEP
#undef SUM
}

__attribute__((noinline, target("avx2"))) static double s16(long n) {
    __m256i x = _mm256_set1_epi16(3), w = _mm256_set1_epi16(-2);
#define DECL(i) __m256i a##i = _mm256_set1_epi32(i);
#define STEP(i) a##i = _mm256_add_epi32(a##i, _mm256_madd_epi16(x, w)); __asm__("" : "+x"(x));
#define SUM(i) s += _mm256_extract_epi32(a##i, 0);
    CHAINS(DECL)
    double t0 = now();
    for (long k = 0; k < n; k++) { CHAINS(STEP) }
    double t = now() - t0;
    int s = 0; CHAINS(SUM)
    if (s == 12345) puts("");
    return N_CHAINS * 16.0 * n / t;  /* chains x 16 s16 x s16 products */
#undef DECL
#undef STEP
#undef SUM
}

#ifdef WITH_VNNI
__attribute__((noinline, target("avx512f,avx512vnni"))) static double vnni(long n) {
    __m512i x = _mm512_set1_epi8(3), w = _mm512_set1_epi8(-2);
#define DECL(i) __m512i a##i = _mm512_set1_epi32(i);
#define STEP(i) a##i = _mm512_dpbusd_epi32(a##i, x, w);
#define SUM(i) s += _mm_cvtsi128_si32(_mm512_castsi512_si128(a##i));
    CHAINS(DECL)
    double t0 = now();
    for (long k = 0; k < n; k++) { CHAINS(STEP) }
    double t = now() - t0;
    int s = 0; CHAINS(SUM)
    if (s == 12345) puts("");
    return N_CHAINS * 64.0 * n / t;  /* chains x 64 u8 x s8 products */
#undef DECL
#undef STEP
#undef SUM
}
#endif

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 20000000L;
    double best[4] = {0, 0, 0, 0};
    for (int r = 0; r < 5; r++) {  /* best of 5: the rate the core gives when nothing else runs */
        double v;
        if ((v = fma32(n)) > best[0]) best[0] = v;
        if ((v = u8s8(n)) > best[1]) best[1] = v;
        if ((v = s16(n)) > best[2]) best[2] = v;
#ifdef WITH_VNNI
        if ((v = vnni(n)) > best[3]) best[3] = v;
#endif
    }
    printf("{\"fp32_fma\": %.6g, \"int8_avx2_maddubs\": %.6g, \"int16_avx2_madd\": %.6g", best[0], best[1], best[2]);
    if (best[3] > 0) printf(", \"int8_avx512_vnni\": %.6g}\n", best[3]); else printf(", \"int8_avx512_vnni\": null}\n");
    return 0;
}
"""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a train.py output folder (model.json, the .tflite files)")
    parser.add_argument("--rounds", type=int, default=30, help="timed interleaved rounds (default: 30)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def cpu() -> dict:
    """The CPU's model name and the vector extensions that decide XNNPACK's kernels."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"model_name": fields.get("model name", platform.processor()), "cpu_family": fields.get("cpu family"),
            "model": fields.get("model"), "mhz": fields.get("cpu MHz"),
            "extensions": {f: f in flags for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")}}


def macs_of(path: Path) -> dict:
    """Multiply-adds per image of the MAC_OPS of a .tflite file, by op type."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    shapes = {t["index"]: tuple(int(v) for v in t["shape"]) for t in interpreter.get_tensor_details()}
    by_op: dict[str, int] = collections.Counter()
    for op in interpreter._get_ops_details():  # noqa: SLF001 (LiteRT's only listing of the graph's nodes)
        name, inputs, outputs = op["op_name"], list(op["inputs"]), list(op["outputs"])
        if name not in MAC_OPS:
            continue
        out = shapes[int(outputs[0])]
        if name == "CONV_2D":  # weights (O, kh, kw, I), output (1, H, W, O)
            _, kh, kw, cin = shapes[int(inputs[1])]
            by_op[name] += int(np.prod(out)) * kh * kw * cin
        elif name == "DEPTHWISE_CONV_2D":  # weights (1, kh, kw, O)
            _, kh, kw, _ = shapes[int(inputs[1])]
            by_op[name] += int(np.prod(out)) * kh * kw
        elif name == "TRANSPOSE_CONV":  # (output_shape, weights (O, kh, kw, I), input (1, H, W, I))
            _, kh, kw, _ = shapes[int(inputs[1])]
            by_op[name] += int(np.prod(shapes[int(inputs[2])])) * kh * kw * shapes[int(inputs[1])][0]
        else:  # FULLY_CONNECTED: weights (O, I), output (N, O)
            by_op[name] += int(np.prod(out)) * shapes[int(inputs[1])][1]
    return {"total": int(sum(by_op.values())), "by_op": dict(by_op)}


def kernels_of(path: Path) -> dict:
    """The ops of a .tflite file that XNNPACK (LiteRT's default delegate) takes, and the
    ones left to LiteRT's own kernels: each delegate node replaces the ops between its
    inputs and its outputs, found by walking back from its outputs to its inputs."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    ops = interpreter._get_ops_details()  # noqa: SLF001
    original = {op["index"]: op for op in ops if op["op_name"] != "DELEGATE"}
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    producer = {int(t): op["index"] for op in original.values() for t in op["outputs"]}
    inside: set[int] = set()
    for node in delegates:
        stop = {int(t) for t in node["inputs"]}
        stack, seen = [int(t) for t in node["outputs"]], set()
        while stack:
            tensor = stack.pop()
            if tensor in seen or tensor in stop or tensor not in producer:
                continue
            seen.add(tensor)
            inside.add(producer[tensor])
            stack.extend(int(t) for t in original[producer[tensor]]["inputs"] if t >= 0)
    left = collections.Counter(original[i]["op_name"] for i in original if i not in inside)
    return {"ops": len(original), "xnnpack_ops": len(inside), "partitions": len(delegates),
            "xnnpack_op_types": dict(collections.Counter(original[i]["op_name"] for i in inside)),
            "litert_kernel_ops": dict(left)}


def peak(info: dict) -> dict:
    """The measured multiply-add rates (per second, one thread) of PEAK_SOURCE, or why not."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return {"error": "gcc not found: the peak loop is compiled here"}
    with tempfile.TemporaryDirectory(prefix="floor-") as tmp:
        source, binary = Path(tmp) / "peak.c", Path(tmp) / "peak"
        source.write_text(PEAK_SOURCE)
        flags = ["-DWITH_VNNI"] if info["extensions"]["avx512_vnni"] else []
        built = subprocess.run([gcc, "-O2", *flags, str(source), "-o", str(binary)], capture_output=True, text=True)
        if built.returncode:
            return {"error": f"gcc failed: {built.stderr.strip()[:300]}"}
        run = subprocess.run(["taskset", "-c", "0", str(binary)] if shutil.which("taskset") else [str(binary)],
                             capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def latencies(paths: dict[str, Path], size: int, rounds: int) -> dict[str, dict]:
    """Median and p90 ms of one invoke on one thread, every file once per round, the
    order rotated each round."""
    from ai_edge_litert.interpreter import Interpreter

    image = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    interpreters = {}
    for name, path in paths.items():
        interpreter = Interpreter(model_path=str(path), num_threads=1)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
        for _ in range(3):
            interpreter.invoke()
        interpreters[name] = interpreter
    times: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            interpreters[name].invoke()
            times[name].append((time.perf_counter() - t0) * 1000)
    return {name: {"p50_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90))} for name, t in times.items()}


def main(argv=None) -> int:
    args = parse_args(argv)
    from busi_classifier.serving.constants import VARIANT_FILES

    card = json.loads((args.model / "model.json").read_text())
    size = int(card["input"]["size"])
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"load average: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPUs")
    info = cpu()
    print(f"CPU: {info['model_name']} (family {info['cpu_family']}, model {info['model']}, {info['mhz']} MHz); "
          + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["extensions"].items()))
    paths = {v: args.model / f for v, f in VARIANT_FILES.items() if (args.model / f).is_file()}
    work = macs_of(paths["float32"])
    print(f"\nmultiply-adds per image ({size} px): {work['total'] / 1e9:.3f} G "
          + "(" + ", ".join(f"{k} {v / 1e9:.3f} G" for k, v in work["by_op"].items()) + ")")
    kernels = {v: kernels_of(p) for v, p in paths.items()}
    print("\n| variant | ops | taken by XNNPACK | partitions | left to LiteRT's kernels |\n|---|---:|---:|---:|---|")
    for v, k in kernels.items():
        left = ", ".join(f"{n} x{c}" for n, c in k["litert_kernel_ops"].items()) or "none"
        print(f"| {v} | {k['ops']} | {k['xnnpack_ops']} | {k['partitions']} | {left} |")
    rates = peak(info)
    if "error" in rates:
        print(f"\npeak: not measured ({rates['error']})")
    else:
        print("\nmeasured peak, one thread (G multiply-adds/s): " + ", ".join(
            f"{k} {v / 1e9:.1f}" for k, v in rates.items() if v is not None))
    timing = latencies(paths, size, args.rounds)
    int8_peak = max((rates.get(k) or 0) for k in ("int8_avx2_maddubs", "int16_avx2_madd", "int8_avx512_vnni")) \
        if "error" not in rates else None
    rows = []
    print("\n| variant | invoke p50 (1 thread) | G multiply-adds/s | unit | its peak | fraction of the peak |\n"
          "|---|---:|---:|---|---:|---:|")
    for v, t in timing.items():
        achieved = work["total"] / (t["p50_ms"] / 1000)
        unit, unit_peak = ("float32 FMA", rates.get("fp32_fma")) if v in ("float32", "float16") else \
            ("int8 (best AVX2/VNNI sequence)", int8_peak)
        fraction = achieved / unit_peak if unit_peak else None
        rows.append({"variant": v, **t, "macs_per_s": achieved, "unit": unit, "peak_macs_per_s": unit_peak,
                     "fraction_of_peak": fraction})
        print(f"| {v} | {t['p50_ms']:.1f} ms | {achieved / 1e9:.1f} | {unit} | "
              f"{(unit_peak or 0) / 1e9:.1f} | {'-' if fraction is None else f'{fraction:.0%}'} |")
    print(f"\nload average {os.getloadavg()[0]:.2f}")
    if args.out:
        args.out.write_text(json.dumps({"command": f"python {shlex.join(sys.argv)}", "model": str(args.model),
                                        "model_version": card.get("model_version"), "size": size, "cpu": info,
                                        "macs": work, "kernels": kernels, "peak_macs_per_s": rates,
                                        "variants": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
