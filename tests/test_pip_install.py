"""`pip install .` (not editable) into a fresh venv, then `python -m busi_classifier serve
--model DIR` from another folder answers /health: the local tools build the handler from
the installed package (no top-level lambda_function.py, no sys.path tricks)."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, ServeProcess


@pytest.mark.slow
def test_serve_works_after_a_plain_pip_install(trained_model, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    source = tmp_path / "src"  # a copy, so that a build folder never lands in the repository
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "artifacts", "data", "*.egg-info",
                                                                 "build", "__pycache__", "imgs", "tests"))
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    for args in (["-r", str(ROOT / "requirements.txt")], [str(source)]):
        result = subprocess.run(pip + args, capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
    model = tmp_path / "model"
    shutil.copytree(trained_model, model, ignore=shutil.ignore_patterns("*.keras"))
    where = tmp_path / "elsewhere"
    where.mkdir()
    probe = subprocess.run([str(python), "-c", "import busi_classifier; print(busi_classifier.__file__)"],
                           cwd=where, capture_output=True, text=True)
    assert str(venv) in probe.stdout, probe.stdout + probe.stderr  # the installed copy, not the checkout
    server = ServeProcess([str(python), "-m", "busi_classifier", "serve", "--model", str(model), "--port", "0"],
                          cwd=where)
    try:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
        connection.request("GET", "/health")
        response = connection.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["status"] == "ok"
        connection.close()
    finally:
        server.stop()
