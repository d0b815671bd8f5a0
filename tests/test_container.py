"""The container contract without Docker.

* The task root is built exactly as the Dockerfile's COPY/ENV lines say.
* requirements.txt is installed into a clean venv (no TensorFlow anywhere).
* There, `import lambda_function` loads the exported model with the pinned ai-edge-litert
  and never imports TensorFlow/Keras.
* `python -m awslambdaric lambda_function.lambda_handler` runs against a loopback
  Lambda Runtime API and answers real events.
"""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, synthetic_images
from lambda_runtime_api import RuntimeAPI

from busi_classifier.serving.events import direct_event, http_v2_event, rest_v1_event

pytestmark = pytest.mark.slow
HEAVY = {"tensorflow", "keras", "tf_keras", "sklearn", "matplotlib", "scipy"}


def pinned(name: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        match = re.match(rf"^{re.escape(name)}==(\S+)", line.strip(), re.IGNORECASE)
        if match:
            return match.group(1)
    raise AssertionError(f"{name} is not pinned in requirements.txt")


def dockerfile_layout(model_dir: Path) -> tuple[list[tuple[list[str], str]], dict[str, str]]:
    """([(sources, destination)], env) from the Dockerfile, with ARG defaults replaced
    (MODEL_DIR by ``model_dir``) and ${LAMBDA_TASK_ROOT} kept as a placeholder."""
    text = (ROOT / "Dockerfile").read_text()
    args = {"MODEL_DIR": str(model_dir)}
    copies, env = [], {}
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        expand = lambda s: re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), s)  # noqa: E731
        if words[0] == "COPY":
            *sources, dest = [expand(w) for w in words[1:]]
            copies.append((sources, dest))
        elif words[0] == "ENV":
            key, value = words[1].split("=", 1)
            env[key] = expand(value)
    return copies, env


def build_task_root(target: Path, model_dir: Path) -> dict[str, str]:
    """Copy what the Dockerfile copies into ``target``; return the Dockerfile's ENV."""
    copies, env = dockerfile_layout(model_dir)
    for sources, dest in copies:
        dest_dir = Path(dest.replace("${LAMBDA_TASK_ROOT}", str(target)))
        dest_dir.mkdir(parents=True, exist_ok=True)
        for source in sources:
            path = Path(source) if os.path.isabs(source) else ROOT / source
            assert path.exists(), f"Dockerfile copies {source}, which does not exist"
            if path.is_dir():  # COPY dir/ dest/ copies the folder's contents
                shutil.copytree(path, dest_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(path, dest_dir / path.name)
    return {k: v.replace("${LAMBDA_TASK_ROOT}", str(target)) for k, v in env.items()}


def local_imports(module: str, root: Path) -> tuple[set[str], set[str]]:
    """(project files, top-level third-party names) that ``module`` imports, transitively."""
    files, external, todo = set(), set(), [module]
    while todo:
        name = todo.pop()
        path = root / (name.replace(".", "/") + ".py")
        if not path.exists():
            path = root / name.replace(".", "/") / "__init__.py"
        if not path.exists():
            external.add(name.split(".")[0])
            continue
        rel = path.relative_to(root).as_posix()
        if rel in files:
            continue
        files.add(rel)
        if "/" in rel:
            files.add(rel.split("/")[0] + "/__init__.py")
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    todo.append(f"{base}.{node.module}" if node.module else base)
                    todo += [f"{base}.{a.name}" for a in node.names if not node.module]
                else:
                    todo.append(node.module)
    return files, external


def test_dockerfile_copies_every_module_the_handler_imports(trained_model):
    files, external = local_imports("lambda_function", ROOT)
    sources = [s for sources, _ in dockerfile_layout(trained_model)[0] for s in sources]
    copied = {s for s in sources if not os.path.isabs(s)}  # absolute: the model files (MODEL_DIR)
    covered = lambda f: any(f == s or (s.endswith("/") and f.startswith(s)) for s in copied)  # noqa: E731
    assert {f for f in files if not covered(f)} == set(), "the Dockerfile misses modules that lambda_function imports"
    assert not external & HEAVY, f"the serving path imports {external & HEAVY}"
    assert not any(s.startswith(("busi_classifier/training", "busi_classifier/data")) for s in copied)
    assert "train.py" not in copied
    dockerignore = (ROOT / ".dockerignore").read_text().splitlines()
    for source in copied:
        assert f"!{source}" in dockerignore, f".dockerignore excludes {source}"


@pytest.fixture(scope="session")
def serving_venv(tmp_path_factory) -> Path:
    """A clean venv with requirements.txt only (what the Lambda image installs)."""
    venv = tmp_path_factory.mktemp("serving") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-r", str(ROOT / "requirements.txt")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return python


@pytest.fixture(scope="session")
def task_root(trained_model, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("var_task")
    env = build_task_root(root, trained_model)
    return root, {**env, "LAMBDA_TASK_ROOT": str(root)}


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return {**keep, **extra}


PROBE = """
import json, sys, time
from importlib import metadata
start = time.perf_counter()
import lambda_function
init_s = time.perf_counter() - start
heavy = sorted(m for m in sys.modules if m.split('.')[0] in {heavy})
answer = lambda_function.lambda_handler({{"image": sys.stdin.read()}}, None)
print(json.dumps({{"heavy": heavy, "litert": metadata.version("ai-edge-litert"),
                  "load_error": lambda_function.LOAD_ERROR, "answer": answer, "init_s": init_s,
                  "python": sys.executable}}))
"""


def test_clean_venv_serves_without_tensorflow(serving_venv, task_root, synthetic_dir):
    root, env = task_root
    _, image = synthetic_images(synthetic_dir, 1)[0]
    result = subprocess.run(
        [str(serving_venv), "-c", PROBE.format(heavy=sorted(HEAVY))],
        cwd=root, env=clean_env(env), input=direct_event(image)["image"], capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    *log_lines, last = result.stdout.strip().splitlines()  # the handler logs JSON lines to stdout first
    probe = json.loads(last)
    logs = [json.loads(line) for line in log_lines]
    assert any(r.get("message") == "request" and r.get("status") == 200 for r in logs), log_lines
    assert direct_event(image)["image"][:64] not in result.stdout[: -len(last)], "image bytes in the logs"
    assert probe["python"].startswith(str(serving_venv.parent))
    assert probe["load_error"] is None
    assert probe["heavy"] == []
    assert probe["litert"] == pinned("ai-edge-litert")
    assert set(probe["answer"]["probabilities"]) == {"normal", "benign", "malignant"}
    # the venv really has no TensorFlow to fall back on
    check = subprocess.run([str(serving_venv), "-c", "import tensorflow"], capture_output=True)
    assert check.returncode != 0


def test_awslambdaric_against_a_loopback_runtime_api(serving_venv, task_root, synthetic_dir):
    root, env = task_root
    _, image = synthetic_images(synthetic_dir, 1)[0]
    with RuntimeAPI() as api:
        process = subprocess.Popen(
            [str(serving_venv), "-m", "awslambdaric", "lambda_function.lambda_handler"],
            cwd=root, env=clean_env({**env, "AWS_LAMBDA_RUNTIME_API": api.address}),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            kind, direct = api.invoke(direct_event(image))
            assert kind == "response" and direct["prediction"] in ("normal", "benign", "malignant")
            kind, http = api.invoke(http_v2_event("POST", "/predict", raw=image))
            assert kind == "response" and http["statusCode"] == 200
            assert json.loads(http["body"])["probabilities"] == direct["probabilities"]
            kind, health = api.invoke(rest_v1_event("GET", "/health"))
            assert kind == "response" and json.loads(health["body"])["status"] == "ok"
            kind, bad = api.invoke(rest_v1_event("POST", "/predict", raw=b"not an image"))
            assert kind == "response" and bad["statusCode"] == 400
            assert json.loads(bad["body"])["error"]["code"] == "invalid_image"
        finally:
            process.kill()
            output = process.communicate(timeout=10)[0]
    assert "Traceback" not in output, output
