"""The exported model on its peers: LiteRT against ONNX Runtime and OpenVINO, in one run.

    .venv-peers/bin/python benchmarks/peers.py --model artifacts/busi_mt128 \
        --data ../shared/busi/Dataset_BUSI_with_GT --rounds 200 --out peers.json --markdown peers.md

The peers are never in the Lambda image: they live in benchmarks/requirements-peers.txt,
installed into a venv of their own (.venv-peers; see the header of that file). The project
itself is found through this file's location (no install of it needed).

Engines, each on one thread, each fed the same raw RGB 0..255 float32 NHWC image:

* **LiteRT** (``ai_edge_litert``, ``num_threads=1``): every variant file of the run folder
  (model.tflite, model_float16.tflite, model_int8_dynamic.tflite, model_int8_full.tflite).
* **ONNX Runtime** (CPU provider, intra- and inter-op threads 1): model.tflite converted to
  ONNX with tf2onnx (``tf2onnx.convert.from_tflite``: the served file itself, every output
  of it, NHWC input kept); float32, dynamic int8 (``quantize_dynamic``) and static int8
  (``quantize_static``, QDQ format, per-channel weights, MinMax calibration on
  ``--calibration`` training images), both after ``quant_pre_process``.
* **OpenVINO** (CPU, ``INFERENCE_NUM_THREADS`` 1, latency hint): ``Core().read_model`` of
  model.tflite at the plugin's default precision (the ``INFERENCE_PRECISION_HINT`` it chose
  is reported: f32 on an AVX2 CPU, bf16 or f16 on CPUs with native support), and NNCF
  post-training int8 (``nncf.quantize``, default preset, on the same calibration images).
  Both with the input fixed at [1, S, S, 3], as LiteRT allocates it (the ONNX model too).

Calibration images: training images only, the ones export calibrates int8_full on when
``--calibration`` is REPRESENTATIVE_IMAGES (the same seeded pick); like export's, they are
among the gate images (the gate holds every training image). Agreement: every engine's
probabilities output (the output of shape [1, classes]) against the Keras model's
``probabilities`` on the gate images export checks the variants on (every train and
validation image of split.csv and one augmented view of each, at most GATE_MAX_IMAGES;
never a test image; ``benchmarks/quant_debug.py``'s selection), with
``busi_classifier.export.variants.agreement_evidence``; a row passes the gate at top-1
agreement >= MIN_TOP1_AGREEMENT and macro-F1 loss <= MAX_MACRO_F1_LOSS.

Timing: after ``--warmup`` rounds, ``--rounds`` interleaved rounds; each round runs every
engine once on the same gate image (the images rotate), in an order shuffled per round, so
a change in the machine's load reaches every engine alike. One call: set the input, run,
read the outputs. p50 and p90 per engine. A peer that fails to convert or load gets a row
that says why.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import io
import json
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402

ONNX_OPSET = 17
FAMILIES = {"litert": "LiteRT", "ort": "ONNX Runtime", "openvino": "OpenVINO"}
# the packages each family needs beyond the project's own (import name, distribution)
PEER_PACKAGES = {"ort": [("onnxruntime", "onnxruntime"), ("onnx", "onnx"), ("tf2onnx", "tf2onnx")],
                 "openvino": [("openvino", "openvino"), ("nncf", "nncf")]}
VERSIONS = ["ai-edge-litert", "onnxruntime", "onnx", "tf2onnx", "openvino", "nncf", "tensorflow-cpu", "tensorflow",
            "keras", "numpy", "protobuf"]
INSTALL_HINT = ("install benchmarks/requirements-peers.txt into its own venv: "
                "python3.11 -m venv .venv-peers && .venv-peers/bin/pip install -r benchmarks/requirements-peers.txt, "
                "then run .venv-peers/bin/python benchmarks/peers.py ... (never into .venv or the image)")


def parse_args(argv=None) -> argparse.Namespace:
    from busi_classifier.training.loop import REPRESENTATIVE_IMAGES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a train.py output folder (model.keras, model.json, "
                        "split.csv, the .tflite variants)")
    parser.add_argument("--data", type=Path, required=True, help="the dataset folder the run was trained on")
    parser.add_argument("--rounds", type=int, default=200, help="interleaved timing rounds (default: 200)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first (default: 5)")
    parser.add_argument("--calibration", type=int, default=REPRESENTATIVE_IMAGES,
                        help=f"training images that calibrate the static int8 peers (default: {REPRESENTATIVE_IMAGES}, "
                        "what export calibrates int8_full on)")
    parser.add_argument("--max-gate-images", type=int, default=None,
                        help="a seeded subset of the gate images, for quick checks (default: all of them; "
                        "a smaller number is no longer the export's gate)")
    parser.add_argument("--engines", default=",".join(FAMILIES),
                        help=f"comma-separated families to run (default: {','.join(FAMILIES)})")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the converted files here (default: a temporary folder, removed at the end)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table (and the run's details) here")
    args = parser.parse_args(argv)
    args.families = [f.strip() for f in args.engines.split(",") if f.strip()]
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown --engines {unknown}; choose from {list(FAMILIES)}")
    if args.rounds < 1 or args.calibration < 1:
        parser.error("--rounds and --calibration must be at least 1")
    return args


def check_peers(families: list[str]) -> None:
    """Every peer package the chosen families need, importable; else one clear message."""
    missing = []
    for family in families:
        for module, dist in PEER_PACKAGES.get(family, []):
            try:
                importlib.import_module(module)
            except ImportError as exc:
                missing.append(f"{dist} ({exc})")
    if missing:
        raise SystemExit(f"peers.py: missing peer packages for {', '.join(families)}: {'; '.join(missing)}\n"
                         f"{INSTALL_HINT}")


@contextlib.contextmanager
def quiet():
    """Converters' stdout and native stderr out of the way; Python warnings too."""
    import warnings

    from busi_classifier.console import native_stderr_silenced

    with contextlib.redirect_stdout(io.StringIO()), native_stderr_silenced(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def machine() -> dict:
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    return {"cpu": model, "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "flags": {f: f in flags for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
                                              "amx_int8")}}


def versions() -> dict:
    out = {}
    for dist in VERSIONS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


@dataclass
class Engine:
    """One row: an engine and variant, its file, and ``run`` (an image (1, S, S, 3) float32 in,
    the probabilities (classes,) out) or the reason it has none."""
    family: str
    variant: str
    file: Path | None = None
    bytes: int | None = None
    conversion_s: float | None = None
    load_s: float | None = None
    notes: str = ""
    details: dict = field(default_factory=dict)
    run: Callable[[np.ndarray], np.ndarray] | None = None
    error: str | None = None
    times_ms: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.family} {self.variant}"


def failure(exc: BaseException) -> str:
    """An exception, short: its type and the last line of its message."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {(lines[-1] if lines else '')[:300]}"


def build(engine: Engine, make: Callable[[Engine], None]) -> Engine:
    """``make`` fills in ``engine`` (file, times, run); an exception becomes the row's error."""
    try:
        make(engine)
    except Exception as exc:  # noqa: BLE001  (a peer that fails is a row, not a crash)
        engine.error, engine.run = failure(exc), None
        print(f"  {engine.name}: FAILED ({engine.error})", flush=True)
        if os.environ.get("PEERS_TRACEBACK"):
            traceback.print_exc()
    else:
        print(f"  {engine.name}: ready ({engine.bytes / 1e6:.1f} MB"
              + (f", converted in {engine.conversion_s:.0f} s" if engine.conversion_s is not None else "")
              + (f", loaded in {engine.load_s:.1f} s" if engine.load_s is not None else "")
              + (f"; {engine.notes}" if engine.notes else "") + ")", flush=True)
    return engine


def probability_index(shapes: list, classes: int) -> int:
    """The one output of shape [1, classes] (the probabilities; the pooled features are [1, F]).
    ``shapes``: the outputs' shapes, of the engine's description or of one run."""
    hits = [i for i, s in enumerate(shapes) if s is not None and list(s) == [1, classes]]
    if len(hits) != 1:
        raise RuntimeError(f"expected one output of shape [1, {classes}], found shapes {shapes}")
    return hits[0]


def static_shape(dims) -> list[int] | None:
    """[1, 3] for a fully known shape, None where a dimension is symbolic or unknown."""
    try:
        return [int(d) for d in dims]
    except (TypeError, ValueError):
        return None


def files_size(*paths: Path) -> int:
    return sum(p.stat().st_size for p in paths if p.exists())


# --- LiteRT -------------------------------------------------------------------------------

def litert_engines(model_dir: Path, classes: int) -> list[Engine]:
    from ai_edge_litert.interpreter import Interpreter

    from busi_classifier.serving.constants import VARIANT_FILES

    engines = []
    for variant, filename in VARIANT_FILES.items():
        path = model_dir / filename
        engine = Engine(FAMILIES["litert"], variant, path)
        if not path.exists():
            engine.error = f"{filename} not in {model_dir}"
            engines.append(engine)
            continue

        def make(e: Engine, path: Path = path) -> None:
            t0 = time.perf_counter()
            with quiet():
                interpreter = Interpreter(model_path=str(path), num_threads=1)
                interpreter.allocate_tensors()
            e.load_s = time.perf_counter() - t0
            e.bytes = path.stat().st_size
            e.notes = "the exported file"
            inputs = interpreter.get_input_details()
            if len(inputs) != 1 or inputs[0]["dtype"] != np.float32:
                raise RuntimeError(f"expected one float32 input, found {[(d['name'], d['dtype']) for d in inputs]}")
            outputs = interpreter.get_output_details()
            out = outputs[probability_index([list(d["shape"]) for d in outputs], classes)]["index"]
            index = inputs[0]["index"]

            def run(x: np.ndarray) -> np.ndarray:
                interpreter.set_tensor(index, x)
                interpreter.invoke()
                return interpreter.get_tensor(out)[0].copy()
            e.run = run
        engines.append(build(engine, make))
    return engines


# --- ONNX Runtime ---------------------------------------------------------------------------

def ort_session(path: Path, classes: int) -> tuple[Callable[[np.ndarray], np.ndarray], float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    t0 = time.perf_counter()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - t0
    (model_input,) = session.get_inputs()
    name = model_input.name
    shapes = [static_shape(o.shape) for o in session.get_outputs()]
    if None in shapes:  # symbolic dimensions: the shapes of one run
        probe = np.zeros([int(d) if static_shape([d]) else 1 for d in model_input.shape], np.float32)
        shapes = [list(o.shape) for o in session.run(None, {name: probe})]
    out = probability_index(shapes, classes)

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: x})[out][0].copy()  # every output, as LiteRT computes every output
    return run, load_s


class CalibrationReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over the calibration images."""

    def __init__(self, name: str, images: np.ndarray):
        self.name, self.images, self.i = name, images, 0

    def get_next(self):
        if self.i >= len(self.images):
            return None
        self.i += 1
        return {self.name: self.images[self.i - 1][None].astype(np.float32)}

    def rewind(self):
        self.i = 0


def ort_engines(tflite: Path, work: Path, size: int, classes: int, calibration: np.ndarray) -> list[Engine]:
    family = FAMILIES["ort"]
    onnx_file = work / "model.onnx"
    pre_file = work / "model.pre.onnx"

    def convert(e: Engine) -> None:
        import onnx
        from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_input_shape_fixed
        from tf2onnx import convert as tf2onnx_convert

        t0 = time.perf_counter()
        with quiet():
            model, _ = tf2onnx_convert.from_tflite(str(tflite), opset=ONNX_OPSET)
        # the batch dimension fixed to 1, as LiteRT allocates it (tf2onnx leaves it symbolic)
        make_input_shape_fixed(model.graph, model.graph.input[0].name, [1, size, size, 3])
        fix_output_shapes(model)
        onnx.save(model, str(onnx_file))
        e.conversion_s = time.perf_counter() - t0
        e.file, e.bytes = onnx_file, files_size(onnx_file)
        e.notes = f"tf2onnx from_tflite of {tflite.name}, opset {ONNX_OPSET}, input fixed at [1, {size}, {size}, 3]"
        e.run, e.load_s = ort_session(onnx_file, classes)

    engines = [build(Engine(family, "float32"), convert)]
    if engines[0].error:
        for variant in ("dynamic int8", "static QDQ int8"):
            engines.append(Engine(family, variant, error=f"no ONNX model ({engines[0].error})"))
        return engines

    done: dict[str, tuple[Path, float, str]] = {}

    def preprocessed() -> tuple[Path, float, str]:
        """quant_pre_process, once per run (shape inference and graph optimisation, what ORT
        recommends before quantising); the plain model where it fails. Its time counts in
        both quantised rows' conversion time."""
        if "pre" not in done:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            t0 = time.perf_counter()
            try:
                with quiet():
                    quant_pre_process(str(onnx_file), str(pre_file))
                done["pre"] = (pre_file, time.perf_counter() - t0, "after quant_pre_process")
            except Exception as exc:  # noqa: BLE001
                done["pre"] = (onnx_file, time.perf_counter() - t0, f"without quant_pre_process ({failure(exc)})")
        return done["pre"]

    def dynamic(e: Engine) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        source, pre_s, pre_note = preprocessed()
        tried = []
        for weight_type in (QuantType.QInt8, QuantType.QUInt8):
            path = work / f"model_dynamic_{weight_type.name.lower()}.onnx"
            t0 = time.perf_counter()
            with quiet():
                quantize_dynamic(str(source), str(path), weight_type=weight_type)
            e.conversion_s = pre_s + time.perf_counter() - t0
            try:
                e.run, e.load_s = ort_session(path, classes)
            except Exception as exc:  # noqa: BLE001  (int8 weights in ConvInteger: not on every CPU kernel)
                tried.append(f"{weight_type.name} weights: {failure(exc)}")
                continue
            e.file, e.bytes = path, files_size(path)
            e.details["weight_type"] = weight_type.name
            e.notes = "; ".join([f"quantize_dynamic, {weight_type.name} weights, {pre_note}", *tried])
            return
        raise RuntimeError("; ".join(tried))

    def static(e: Engine) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        source, pre_s, pre_note = preprocessed()
        path = work / "model_static_qdq_int8.onnx"
        import onnx

        name = onnx.load(str(source), load_external_data=False).graph.input[0].name
        t0 = time.perf_counter()
        with quiet():
            quantize_static(str(source), str(path), CalibrationReader(name, calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        e.conversion_s = pre_s + time.perf_counter() - t0
        e.file, e.bytes = path, files_size(path)
        e.notes = (f"quantize_static QDQ, per-channel, S8S8, MinMax on {len(calibration)} training images, {pre_note}")
        e.run, e.load_s = ort_session(path, classes)

    engines.append(build(Engine(family, "dynamic int8"), dynamic))
    engines.append(build(Engine(family, "static QDQ int8"), static))
    return engines


# --- OpenVINO ---------------------------------------------------------------------------------

def openvino_engines(tflite: Path, work: Path, size: int, classes: int, calibration: np.ndarray) -> list[Engine]:
    import openvino as ov

    family = FAMILIES["openvino"]
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}

    def compiled(e: Engine, model) -> None:
        t0 = time.perf_counter()
        with quiet():
            net = core.compile_model(model, "CPU", config)
        e.load_s = time.perf_counter() - t0
        precision = net.get_property("INFERENCE_PRECISION_HINT")
        precision = getattr(precision, "get_type_name", lambda: str(precision))()
        threads = net.get_property("INFERENCE_NUM_THREADS")
        e.details.update({"inference_precision_hint": precision, "inference_num_threads": threads,
                          "performance_hint": str(net.get_property("PERFORMANCE_HINT")),
                          "num_streams": str(net.get_property("NUM_STREAMS"))})
        e.notes += f"; INFERENCE_PRECISION_HINT {precision}, INFERENCE_NUM_THREADS {threads}, latency hint"
        request = net.create_infer_request()
        shapes = [list(o.get_partial_shape().to_shape()) if o.get_partial_shape().is_static else None
                  for o in net.outputs]
        if None in shapes:  # dynamic outputs: the shapes of one run
            request.infer({0: np.zeros((1, size, size, 3), np.float32)})
            shapes = [list(request.get_output_tensor(i).shape) for i in range(len(net.outputs))]
        out = probability_index(shapes, classes)

        def run(x: np.ndarray) -> np.ndarray:
            request.infer({0: x})
            return request.get_output_tensor(out).data[0].copy()
        e.run = run

    def read() -> ov.Model:
        """model.tflite through OpenVINO's TFLite frontend, its input fixed at [1, S, S, 3] (the
        file's batch dimension is dynamic; LiteRT allocates 1)."""
        model = core.read_model(str(tflite))
        model.reshape({model.inputs[0]: ov.PartialShape([1, size, size, 3])})
        return model

    def default(e: Engine) -> None:
        t0 = time.perf_counter()
        with quiet():
            model = read()
        e.conversion_s = time.perf_counter() - t0
        e.file, e.bytes = tflite, files_size(tflite)
        e.notes = f"read_model of {tflite.name} (its TFLite frontend; the size is that file's), input [1, {size}, {size}, 3]"
        compiled(e, model)

    def nncf_int8(e: Engine) -> None:
        import nncf

        t0 = time.perf_counter()
        with quiet():
            model = read()
            dataset = nncf.Dataset([image[None].astype(np.float32) for image in calibration])
            quantized = nncf.quantize(model, dataset, subset_size=len(calibration))
            xml = work / "model_nncf_int8.xml"
            ov.save_model(quantized, str(xml), compress_to_fp16=False)
            model = core.read_model(str(xml))
        e.conversion_s = time.perf_counter() - t0
        e.file, e.bytes = xml, files_size(xml, xml.with_suffix(".bin"))
        e.notes = f"nncf.quantize (default preset) on {len(calibration)} training images, saved as IR (.xml + .bin)"
        compiled(e, model)

    return [build(Engine(family, "default precision"), default), build(Engine(family, "NNCF int8"), nncf_int8)]


# --- the run --------------------------------------------------------------------------------

def gate_images(model_dir: Path, data_dir: Path, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gate images, their labels, the training images): export's selection, as
    ``benchmarks/quant_debug.py`` makes it."""
    import quant_debug

    images, labels, x_train, _ = quant_debug.gate_images(model_dir, data_dir, size, seed)
    return images, labels, x_train


def keras_reference(model_dir: Path, images: np.ndarray) -> np.ndarray:
    """The Keras model's ``probabilities`` output on ``images``."""
    import quant_debug

    graph = quant_debug.probabilities_graph(model_dir)
    return np.asarray(graph.predict(images.astype("float32"), batch_size=16, verbose=0), dtype=np.float64)


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def table(rows: list[dict], gate_n: int) -> str:
    from busi_classifier.export.variants import MAX_MACRO_F1_LOSS, MIN_TOP1_AGREEMENT

    lines = [f"On {gate_n} gate images; the gate: top-1 agreement >= {MIN_TOP1_AGREEMENT}, macro-F1 loss <= "
             f"{MAX_MACRO_F1_LOSS}. Times: one thread, one image (1 x S x S x 3 float32), interleaved rounds.", "",
             "| engine | variant | p50 | p90 | top-1 agreement | macro-F1 diff | largest probability diff | gate | size "
             "| conversion |", "|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        size = f"{r['bytes'] / 1e6:.1f} MB" if r.get("bytes") else "–"
        conversion = f"{r['conversion_s']:.0f} s" if r.get("conversion_s") is not None else "export's"
        if r.get("error"):
            lines.append(f"| {r['engine']} | {r['variant']} | – | – | – | – | – | failed: {r['error']} | {size} | – |")
            continue
        lines.append(f"| {r['engine']} | {r['variant']} | {r['p50_ms']:.1f} ms | {r['p90_ms']:.1f} ms | "
                     f"{r['top1_agreement']:.3f} | {r['macro_f1_diff']:+.3f} | {r['max_probability_diff']:.3f} | "
                     f"{'passes' if r['passes'] else 'fails'} | {size} | {conversion} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    check_peers(args.families)
    from tqdm import tqdm

    from busi_classifier.export.variants import MAX_MACRO_F1_LOSS, MIN_TOP1_AGREEMENT, agreement_evidence
    from busi_classifier.training.loop import GATE_MAX_IMAGES

    command = f"{Path(sys.executable).relative_to(ROOT) if Path(sys.executable).is_relative_to(ROOT) else 'python'} " \
              f"{shlex.join(sys.argv)}"
    load_before = load_average()
    started = time.time()
    print(f"command: {command}")
    print(f"load average: {load_before[0]:.2f} (1 min) on {os.cpu_count()} CPUs")
    info = machine()
    print(f"machine: {info['cpu']}; " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["flags"].items()))
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))

    card = json.loads((args.model / "model.json").read_text())
    size = int(card["input"]["size"])
    classes = len(card.get("classes", [])) or 3
    seed = int(card.get("training", {}).get("seed", 42))
    phases: dict[str, float] = {}
    t0 = time.time()
    images, labels, x_train = gate_images(args.model, args.data, size, seed)
    gate_description = f"{len(images)} gate images (train + val of split.csv and one view each, at most {GATE_MAX_IMAGES})"
    if args.max_gate_images is not None and args.max_gate_images < len(images):
        keep = np.sort(np.random.default_rng(seed + 1).permutation(len(images))[:args.max_gate_images])
        images, labels = images[keep], labels[keep]
        gate_description = f"{len(images)} of the {gate_description} (--max-gate-images: a quick check, not the gate)"
    calibration = x_train[np.sort(np.random.default_rng(seed).permutation(len(x_train))[:args.calibration])]
    print(f"gate: {gate_description}; calibration: {len(calibration)} training images")
    reference = keras_reference(args.model, images)
    phases["images_and_keras_reference_s"] = time.time() - t0
    print(f"Keras reference: {time.time() - t0:.0f} s (images decoded, views made, probabilities predicted)", flush=True)

    tflite = args.model / "model.tflite"
    engines: list[Engine] = []
    with contextlib.ExitStack() as stack:
        if args.work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="peers-")))
        else:
            work = args.work
            work.mkdir(parents=True, exist_ok=True)
        for family, make in (("litert", lambda: litert_engines(args.model, classes)),
                             ("ort", lambda: ort_engines(tflite, work, size, classes, calibration)),
                             ("openvino", lambda: openvino_engines(tflite, work, size, classes, calibration))):
            if family not in args.families:
                continue
            t0 = time.time()
            print(f"{FAMILIES[family]}: converting and loading ...", flush=True)
            engines.extend(make())
            phases[f"{family}_convert_and_load_s"] = time.time() - t0

        ready = [e for e in engines if e.run is not None]
        inputs = [np.ascontiguousarray(image[None], dtype=np.float32) for image in images]
        probabilities: dict[str, np.ndarray] = {}
        t0 = time.time()
        for e in ready:
            try:
                probabilities[e.name] = np.stack([e.run(x) for x in tqdm(inputs, desc=f"gate: {e.name}", leave=False,
                                                                           mininterval=2)]).astype(np.float64)
            except Exception as exc:  # noqa: BLE001
                e.error, e.run = f"at inference: {failure(exc)}", None
                print(f"  {e.name}: FAILED ({e.error})", flush=True)
        phases["gate_inference_s"] = time.time() - t0
        ready = [e for e in ready if e.run is not None]

        t0 = time.time()
        rng = np.random.default_rng(seed)
        for r in tqdm(range(args.warmup + args.rounds), desc=f"timing: {len(ready)} engines, interleaved",
                      mininterval=2):
            x = inputs[r % len(inputs)]
            for i in rng.permutation(len(ready)):
                e = ready[i]
                start = time.perf_counter()
                e.run(x)
                elapsed = (time.perf_counter() - start) * 1000
                if r >= args.warmup:
                    e.times_ms.append(elapsed)
        phases["timing_s"] = time.time() - t0

    rows = []
    for e in engines:
        row = {"engine": e.family, "variant": e.variant, "file": str(e.file) if e.file else None, "bytes": e.bytes,
               "conversion_s": e.conversion_s, "load_s": e.load_s, "notes": e.notes.lstrip("; "), **e.details,
               "error": e.error}
        if e.error is None and e.name in probabilities:
            evidence = agreement_evidence(reference, probabilities[e.name], labels)
            row.update({k: evidence[k] for k in ("top1_agreement", "macro_f1_diff", "macro_auc_diff",
                                                 "max_probability_diff")})
            row["passes"] = bool(evidence["top1_agreement"] >= MIN_TOP1_AGREEMENT - 1e-12
                                 and evidence["macro_f1_diff"] >= -MAX_MACRO_F1_LOSS - 1e-12)
            row.update({"p50_ms": percentile(e.times_ms, 50), "p90_ms": percentile(e.times_ms, 90),
                        "timed_calls": len(e.times_ms), "times_ms": [round(t, 3) for t in e.times_ms]})
        rows.append(row)
    load_after = load_average()
    markdown = table(rows, len(images))
    print("\n" + markdown)
    notes = [f"* {r['engine']} {r['variant']}: {r['notes']}" for r in rows if r.get("notes")]
    print("\n" + "\n".join(notes))
    print(f"\ndone in {time.time() - started:.0f} s (" + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in phases.items())
          + f"); load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    result = {"command": command, "machine": info, "versions": versions(),
              "load_average": {"before": load_before, "after": load_after, "note": "1, 5, 15 min"},
              "model": str(args.model), "model_version": card.get("model_version"), "size": size,
              "gate": gate_description, "gate_images": int(len(images)), "calibration_images": int(len(calibration)),
              "rounds": args.rounds, "warmup": args.warmup, "onnx_opset": ONNX_OPSET, "phases_s": phases,
              "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
        print(f"wrote {args.out}")
    if args.markdown:
        flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["flags"].items())
        args.markdown.write_text(
            f"# Peers: {args.model.name} ({size} px)\n\n`{command}`\n\n{info['cpu']} ({info['cpus']} CPUs; {flags}); "
            f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after. "
            + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".\n\n"
            f"Gate: {gate_description}. Calibration: {len(calibration)} training images. "
            f"{args.rounds} rounds after {args.warmup} warm-up rounds.\n\n{markdown}\n\n" + "\n".join(notes) + "\n")
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
