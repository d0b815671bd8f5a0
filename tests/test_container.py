"""The container contract without Docker.

* The task root is built exactly as the Dockerfile says (tests/container_layout.py).
* requirements.txt is installed into a clean venv (no TensorFlow anywhere).
* There, `import lambda_function` loads the exported model with the pinned ai-edge-litert
  and never imports TensorFlow/Keras.
The same task root under the real Lambda Runtime Interface Emulator, driven over HTTP:
tests/test_emulator.py.
"""

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, synthetic_images
from container_layout import build_image, cached_serving_venv, clean_env

from busi_classifier.serving.events import direct_event

pytestmark = pytest.mark.slow
HEAVY = {"tensorflow", "keras", "tf_keras", "sklearn", "matplotlib", "scipy"}


def pinned(name: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        match = re.match(rf"^{re.escape(name)}==(\S+)", line.strip(), re.IGNORECASE)
        if match:
            return match.group(1)
    raise AssertionError(f"{name} is not pinned in requirements.txt")


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


def test_dockerfile_copies_every_module_the_handler_imports(trained_model, tmp_path):
    files, external = local_imports("lambda_function", ROOT)
    copied = set(build_image(tmp_path, {"MODEL_DIR": str(trained_model)}).context_sources)
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
    return cached_serving_venv(tmp_path_factory.getbasetemp() / "serving-venv")


@pytest.fixture(scope="session")
def task_root(trained_model, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    image = build_image(tmp_path_factory.mktemp("image"), {"MODEL_DIR": str(trained_model)})
    return image.task_root, image.env


PROBE = """
import json, sys, time
from importlib import metadata
start = time.perf_counter()
import lambda_function
init_s = time.perf_counter() - start
heavy = sorted(m for m in sys.modules if m.split('.')[0] in {heavy})
answer = lambda_function.lambda_handler({{"image": sys.stdin.read()}}, None)
print(json.dumps({{"heavy": heavy, "litert": metadata.version("ai-edge-litert"),
                  "load_error": lambda_function.lambda_handler.load_error, "answer": answer, "init_s": init_s,
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
    # the input check (issue 21): its file in the task root beside the model, scored with the pinned numpy
    card = json.loads((root / "model" / "model.json").read_text())
    assert card["input_check"] is not None and (root / "model" / card["input_check"]["file"]).is_file()
    check = probe["answer"]["input_check"]
    assert set(check) == {"score", "threshold", "in_distribution"} and check["threshold"] == \
        card["input_check"]["threshold"]
    # the venv really has no TensorFlow to fall back on
    check = subprocess.run([str(serving_venv), "-c", "import tensorflow"], capture_output=True)
    assert check.returncode != 0
