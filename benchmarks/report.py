"""Write one benchmark's section of BENCHMARKS.md (between its own markers), leaving the
other sections as they are; each section says what machine and command made it."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nEvery section is written by a script in `benchmarks/`; rerun it to refresh that section.\n"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        memory = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
        mem = f", {memory:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        mem = ""
    return f"{cpu}, {cores} cores available{mem}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        # Code changes not yet committed (BENCHMARKS.md itself and figures aside) make the commit an approximation.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "*.py", "Makefile",
                                "requirements.txt", "pyproject.toml"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.strip()
        return commit + (" with uncommitted code changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_section(name: str, title: str, command: str, body: str, path: Path = BENCHMARKS) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"{start}\n## {title}\n\nCommand: `{command}`  \nMachine: {machine()}  \n"
               f"Run: {stamp}, commit {git_commit()}\n\n{body.strip()}\n{end}")
    text = path.read_text() if path.exists() else HEADER
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
