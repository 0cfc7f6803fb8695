"""One line that names the machine a benchmark ran on (every report starts with it)."""

from __future__ import annotations

import os
import platform


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}, torch {_torch_version()}"


def _torch_version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # no torch import: the llama.cpp worker stays lean

    try:
        return version("torch")
    except PackageNotFoundError:
        return "not installed"
