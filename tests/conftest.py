"""Shared fixtures. One tiny model is trained per test session (synthetic data,
random init, 64 px) and shared by every test that needs an exported model."""

import importlib
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUSI_DIR = ROOT.parent / "shared" / "busi" / "Dataset_BUSI_with_GT"
TEST_IMAGE_SIZE = 64

sys.path.insert(0, str(ROOT))  # lambda_function.py and test.py live at the top level
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_collection_modifyitems(config, items):
    """A test that needs the trained model is slow, whatever its module says: `make
    test-fast` (-m "not slow") must never train a network."""
    for item in items:
        if "trained_model" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    from busi_classifier.data.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("synthetic"), per_class=12, seed=0, progress=False)


# The session model's settings (tests/test_training.py trains again with them to check determinism)
TRAINED_MODEL_ARGS = ["--weights", "none", "--image-size", str(TEST_IMAGE_SIZE), "--epochs-head", "2",
                      "--epochs-fine-tune", "0", "--batch-size", "8", "--lr-head", "1e-4", "--seed", "0", "--quiet"]


@pytest.fixture(scope="session")
def trained_model(synthetic_dir, tmp_path_factory) -> Path:
    """Output folder of `train.py` run as a user types it (tiny settings). Trained once per
    test run: with pytest-xdist (`make test` runs two workers) the first worker to need it
    trains it into the run's shared temporary folder under a file lock, the others wait
    for it and read the same folder."""
    import fcntl

    from busi_classifier.cli import train_main

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    shared = tmp_path_factory.getbasetemp().parent if worker else tmp_path_factory.getbasetemp()
    out = shared / "session-model"
    with open(shared / "session-model.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (out / "model.json").is_file():
                code = train_main(["--data", str(synthetic_dir), "--out", str(out), *TRAINED_MODEL_ARGS])
                assert code == 0
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return out


def fresh_lambda(monkeypatch, model_path, variant: str | None = None):
    """Import lambda_function anew with MODEL_PATH (and MODEL_VARIANT) set."""
    monkeypatch.setenv("MODEL_PATH", str(model_path))
    if variant:
        monkeypatch.setenv("MODEL_VARIANT", variant)
    else:
        monkeypatch.delenv("MODEL_VARIANT", raising=False)
    sys.modules.pop("lambda_function", None)
    return importlib.import_module("lambda_function")


@pytest.fixture
def lambda_module(trained_model, monkeypatch):
    """lambda_function imported fresh, MODEL_PATH = the trained model's folder: it serves
    model.json's default variant."""
    yield fresh_lambda(monkeypatch, trained_model)
    sys.modules.pop("lambda_function", None)


@pytest.fixture
def float32_lambda(trained_model, monkeypatch):
    """lambda_function serving the float32 reference variant (MODEL_VARIANT=float32)."""
    yield fresh_lambda(monkeypatch, trained_model, "float32")
    sys.modules.pop("lambda_function", None)


def synthetic_images(root: Path, per_class: int = 2) -> list[tuple[str, bytes]]:
    from busi_classifier.serving.constants import CLASSES

    images = []
    for label in CLASSES:
        files = sorted(p for p in (root / label).glob("*.png") if "_mask" not in p.name)
        images += [(label, p.read_bytes()) for p in files[:per_class]]
    return images


class ServeProcess:
    """`python -m busi_classifier serve ...` in a subprocess, as a user starts it: waits for
    its "serving ... on URL" line; ``stop()`` sends Ctrl-C and returns (stdout, stderr)."""

    def __init__(self, command: list[str], cwd, env=None):
        import re
        import subprocess

        self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        line = ""
        while "serving" not in line:
            line = self.process.stderr.readline()
            if not line:
                self.stop()
                raise AssertionError("the server stopped before serving")
        self.host, port = re.search(r"http://([\d.]+):(\d+)", line).groups()
        self.port = int(port)

    def stop(self) -> tuple[str, str]:
        import signal
        import subprocess

        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.communicate()
