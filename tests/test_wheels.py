"""Every pin in requirements.txt has a wheel for the image's Python (CPython 3.12) on
manylinux x86_64 and aarch64 (Lambda's x86_64 and arm64 architectures), so that
`docker build` and `docker buildx build --platform linux/arm64` install the same
versions without compiling anything. Asks the package index (`pip download
--only-binary=:all: --no-deps`); skipped when the index cannot be reached."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import urllib.parse

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow
PYTHON_VERSION = "3.12"  # the Dockerfile's base image, public.ecr.aws/lambda/python:3.12
IMAGE_GLIBC_MINOR = 34  # Amazon Linux 2023, the base image's OS: glibc 2.34
# pip takes --platform literally (no older manylinux tags implied): every tag the image's
# glibc accepts (ai-edge-litert ships manylinux_2_27 wheels, for example)
PLATFORMS = {arch: [f"manylinux2014_{arch}"] + [f"manylinux_2_{minor}_{arch}" for minor in range(17, IMAGE_GLIBC_MINOR + 1)]
             for arch in ("x86_64", "aarch64")}


def pins() -> list[str]:
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    return [line for line in lines if line]


def index_host() -> str:
    """The host of pip's index (PIP_INDEX_URL or pip's configuration, else PyPI)."""
    result = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                            capture_output=True, text=True)
    url = result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "https://pypi.org/simple"
    return urllib.parse.urlsplit(url).hostname or "pypi.org"


@pytest.fixture(scope="module")
def reachable_index():
    host = index_host()
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as exc:
        pytest.skip(f"the package index {host} cannot be reached ({exc}); the wheel check needs it")


def test_requirements_are_all_pinned():
    assert pins() and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.]+", pin) for pin in pins()), pins()


@pytest.mark.parametrize("arch", sorted(PLATFORMS))
def test_every_pin_has_a_cpython_312_wheel(reachable_index, arch, tmp_path):
    platform_flags = [flag for platform in PLATFORMS[arch] for flag in ("--platform", platform)]
    missing = []
    for pin in pins():
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
             "--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp",
             *platform_flags, "--progress-bar=off", "-d", str(tmp_path / arch), pin],
            capture_output=True, text=True, timeout=300,
        )
        if result.returncode != 0:
            missing.append(f"{pin}: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else '?'}")
    assert missing == [], f"no CPython {PYTHON_VERSION} manylinux {arch} wheel for: {missing}"
    wheels = sorted(p.name for p in (tmp_path / arch).iterdir())
    assert len(wheels) == len(pins()) and all(w.endswith(".whl") for w in wheels), wheels
    platform_wheels = [w for w in wheels if not w.endswith("-none-any.whl")]
    assert platform_wheels and all(arch in w for w in platform_wheels), platform_wheels
