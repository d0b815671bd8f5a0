"""The Lambda image without Docker: its task root laid out from the Dockerfile itself,
and the real AWS Lambda Runtime Interface Emulator (RIE) running it on loopback.

Used by tests/test_container.py, tests/test_emulator.py and benchmarks/cold_start.py.

``build_image`` interprets the Dockerfile's instructions: every stage gets a folder of
its own standing for its filesystem; COPY (from the build context, filtered by
.dockerignore, or ``--from`` an earlier stage), ARG, ENV and CMD do what Docker does;
RUN is carried out for the two forms the Dockerfile uses: ``pip install -r
requirements.txt --target ${LAMBDA_TASK_ROOT}`` (stood in for by a clean venv of that
file: ``make_serving_venv``) and ``python3 SCRIPT ARGS`` (run with this Python, paths
mapped into the stage). Any other instruction fails with a message, so the Dockerfile
and this stand-in cannot drift apart silently.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
RIE = ROOT.parent / "shared" / "tools" / "aws-lambda-rie"
RIE_MISSING = (f"the AWS Lambda Runtime Interface Emulator is not at {RIE} (a clone without ../shared; "
               "CI has it; build it with ../shared/tools/build-aws-lambda-rie.sh)")
INVOKE_PATH = "/2015-03-31/functions/function/invocations"
# what public.ecr.aws/lambda/python:3.12 sets before the Dockerfile's first line
BASE_ENV = {"LAMBDA_TASK_ROOT": "/var/task", "LAMBDA_RUNTIME_DIR": "/var/runtime"}
KEPT_ENV = ("PATH", "HOME", "LANG", "TMPDIR")


class LayoutError(AssertionError):
    """The Dockerfile holds something this stand-in does not know how to lay out."""


@dataclass
class Stage:
    name: str
    root: Path
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=lambda: dict(BASE_ENV))

    def path(self, image_path: str) -> Path:
        """Where a path of this stage's filesystem lies on the host."""
        return self.root / image_path.lstrip("/")

    def expand(self, text: str) -> str:
        values = {**self.env, **self.args}
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), ""), text)


@dataclass
class Image:
    task_root: Path
    env: dict[str, str]  # the final stage's ENV, paths mapped to the host, plus LAMBDA_TASK_ROOT
    handler: str
    requirements: list[Path]  # what the pip install lines install (-r files in the task root)
    context_sources: list[str]  # build-context paths the COPY lines name (relative to ROOT)
    run_lines: list[str]


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, rest) per instruction; comments dropped, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def dockerignore_rules(root: Path = ROOT) -> list[tuple[bool, str]]:
    path = root / ".dockerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(line.startswith("!"), line.lstrip("!").strip().rstrip("/")) for line in lines
            if line.strip() and not line.startswith("#")]


def _matches(pattern: str, rel: str) -> bool:
    """Docker's rule: a pattern excludes a path when it matches the path or a parent."""
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        if fnmatch.fnmatchcase(prefix, pattern):
            return True
        if pattern.startswith("**/") and fnmatch.fnmatchcase(prefix, pattern[3:]):
            return True
    return False


def ignored(rel: str, rules: list[tuple[bool, str]]) -> bool:
    """Whether .dockerignore keeps ``rel`` (a path in the build context) out of the context."""
    result = False
    for negate, pattern in rules:
        if _matches(pattern, rel):
            result = not negate
    return result


def _context_files(source: Path, rel: str, rules) -> list[tuple[Path, str]]:
    """(file, path under the source) that the build context holds of ``source``."""
    if source.is_file():
        return [] if ignored(rel, rules) else [(source, source.name)]
    files = []
    for path in sorted(source.rglob("*")):
        inner = path.relative_to(source).as_posix()
        if path.is_file() and not ignored(f"{rel}/{inner}", rules):
            files.append((path, inner))
    return files


def _copy(stage: Stage, words: list[str], stages: dict[str, Stage], build_args: dict, rules, context: list[str]):
    origin = None
    if words and words[0].startswith("--from="):
        origin = stages[words.pop(0).split("=", 1)[1]]
    if any(w.startswith("--") for w in words):
        raise LayoutError(f"COPY flag {words} is not known to tests/container_layout.py")
    *sources, dest = [stage.expand(w) for w in words]
    dest_path = stage.path(dest)
    into_folder = dest.endswith("/") or len(sources) > 1
    for source in sources:
        if origin is not None:
            host, files = origin.path(source), None
            files = [(host, host.name)] if host.is_file() else [(p, p.relative_to(host).as_posix())
                                                               for p in sorted(host.rglob("*")) if p.is_file()]
        else:
            host = Path(source) if os.path.isabs(source) else ROOT / source
            if not host.exists():
                raise LayoutError(f"the Dockerfile copies {source}, which does not exist")
            try:
                rel = host.relative_to(ROOT).as_posix()
                context.append(rel + ("/" if host.is_dir() else ""))
            except ValueError:  # a MODEL_DIR outside the repository (tests): matched as model/...
                rel = "model" if host.is_dir() else f"model/{host.name}"
            files = _context_files(host, rel, rules)
        for path, inner in files:
            target = dest_path / inner if (host.is_dir() or into_folder) else dest_path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def _run(stage: Stage, command: str, python: str, requirements: list[Path]):
    words = shlex.split(stage.expand(command))
    if words[:2] == ["pip", "install"]:
        flags = [w for w in words[2:] if w.startswith("-")]
        if not set(flags) <= {"--no-cache-dir", "-r", "--target"} or "-r" not in words or "--target" not in words:
            raise LayoutError(f"RUN {command}: only `pip install [--no-cache-dir] -r FILE --target DIR` is known")
        if words[words.index("--target") + 1] != stage.env["LAMBDA_TASK_ROOT"]:
            raise LayoutError(f"RUN {command}: packages must go to the task root")
        requirement = stage.path(words[words.index("-r") + 1])
        if not requirement.is_file():
            raise LayoutError(f"RUN {command}: {requirement.name} was not copied before")
        requirements.append(requirement)
        return
    if words and re.fullmatch(r"python3?(\.\d+)?", words[0]):
        mapped = [str(stage.path(w)) if w.startswith("/") else w for w in words[1:]]
        result = subprocess.run([python, *mapped], capture_output=True, text=True)
        if result.returncode != 0:
            raise LayoutError(f"RUN {command} failed: {(result.stderr or result.stdout).strip()}")
        return
    raise LayoutError(f"RUN {command}: not a form tests/container_layout.py knows how to lay out")


def build_image(target: Path, build_args: dict[str, str] | None = None, python: str = sys.executable,
                dockerfile: Path = DOCKERFILE) -> Image:
    """Lay out the Dockerfile's image under ``target`` (one folder per stage)."""
    build_args = dict(build_args or {})
    rules = dockerignore_rules(dockerfile.parent)
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    handler, requirements, context, runs = None, [], [], []
    for keyword, rest in instructions(dockerfile.read_text()):
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"stage{len(stages)}"
            if not words[0].startswith("public.ecr.aws/lambda/python:"):
                raise LayoutError(f"FROM {words[0]}: the layout assumes the Lambda Python base image")
            stage = stages[name] = Stage(name, target / name)
            stage.root.mkdir(parents=True)
        elif stage is None:
            raise LayoutError(f"{keyword} before FROM is not known to tests/container_layout.py")
        elif keyword == "ARG":
            key, _, default = rest.partition("=")
            stage.args[key] = build_args.get(key, default.strip('"'))
        elif keyword == "ENV":
            key, _, value = rest.partition("=")
            stage.env[key] = stage.expand(value.strip('"'))
        elif keyword == "COPY":
            _copy(stage, rest.split(), stages, build_args, rules, context)
        elif keyword == "RUN":
            runs.append(rest)
            _run(stage, rest, python, requirements)
        elif keyword == "CMD":
            [handler] = json.loads(rest)
        else:
            raise LayoutError(f"{keyword} is not known to tests/container_layout.py")
    task_root = stage.path(stage.env["LAMBDA_TASK_ROOT"])
    env = {k: (str(stage.path(v)) if v.startswith("/") else v) for k, v in stage.env.items()}
    return Image(task_root, env, handler, requirements, context, runs)


def make_serving_venv(venv: Path, requirements: Path = ROOT / "requirements.txt") -> Path:
    """A clean venv holding exactly ``requirements`` (what the image's pip line installs);
    returns its python."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    result = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                             "-r", str(requirements)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stdout + result.stderr)
    return python


def cached_serving_venv(venv: Path, requirements: Path = ROOT / "requirements.txt") -> Path:
    """``make_serving_venv`` once per folder and requirements file (test modules share it)."""
    stamp = venv / ".requirements"
    if stamp.exists() and stamp.read_text() == requirements.read_text():
        return venv / "bin" / "python"
    shutil.rmtree(venv, ignore_errors=True)
    python = make_serving_venv(venv, requirements)
    stamp.write_text(requirements.read_text())
    return python


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in KEPT_ENV}
    return {**keep, **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """``aws-lambda-rie PYTHON -m awslambdaric HANDLER`` on two loopback ports, as the base
    image's entrypoint starts the function. Its output (the RIE's log, the function's
    stdout and stderr) goes to ``log_path``. The RIE starts the runtime at the first
    invocation and restarts it after a timeout; ``stop`` kills its whole process group."""

    def __init__(self, python: Path, task_root: Path, env: dict[str, str], log_path: Path,
                 handler: str = "lambda_function.lambda_handler", cpus: str | None = None, rie: Path = RIE):
        self.port, self.api_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}{INVOKE_PATH}"
        self.log_path = log_path
        command = [str(rie), "--runtime-interface-emulator-address", f"127.0.0.1:{self.port}",
                   "--runtime-api-address", f"127.0.0.1:{self.api_port}", str(python), "-m", "awslambdaric", handler]
        if cpus is not None:
            command = ["taskset", "-c", cpus, *command]
        self._log = open(log_path, "wb")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(command, cwd=task_root, env=clean_env(env), stdout=self._log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the emulator exited ({self.process.returncode}): {self.log()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.005)
        raise TimeoutError(f"the emulator did not listen within {timeout:g} s: {self.log()[-2000:]}")

    def invoke(self, payload: dict | bytes, timeout: float = 60.0) -> tuple[int, bytes]:
        """POST an event as `curl .../invocations -d EVENT` does: (HTTP status, body)."""
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        request = urllib.request.Request(self.url, data=data, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def invoke_json(self, payload: dict | bytes, timeout: float = 60.0):
        status, body = self.invoke(payload, timeout)
        assert status == 200, (status, body[:500])
        return json.loads(body)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def log_records(self) -> list[dict]:
        """The JSON lines of the log (the function's structured logs)."""
        records = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except ValueError:
                    pass
        return records

    def durations_ms(self) -> list[float]:
        """`Duration` of every REPORT line so far."""
        return [float(m) for m in re.findall(r"^REPORT .*?\tDuration: ([\d.]+) ms", self.log(), re.MULTILINE)]

    def runtime_pids(self) -> list[int]:
        """PIDs of the emulator's descendants (the Python runtime), nearest first."""
        found, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop(0)
            for task in Path(f"/proc/{pid}/task").glob("*") if Path(f"/proc/{pid}/task").exists() else []:
                try:
                    children = [int(c) for c in (task / "children").read_text().split()]
                except OSError:
                    continue
                found += children
                todo += children
        return found

    def stop(self) -> None:
        """Kill the emulator's process group and every runtime it started (the RIE may put
        a runtime in a process group of its own)."""
        descendants = self.runtime_pids() if self.process.poll() is None else []
        for pid, kill in [(self.process.pid, os.killpg)] + [(p, os.kill) for p in descendants]:
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.process.wait(timeout=10)
        finally:
            self._log.close()
