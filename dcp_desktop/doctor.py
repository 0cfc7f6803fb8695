"""`dcp-chat doctor`: what this install runs on, for bug reports.

    dcp-chat doctor [--json]

llama.cpp: the commit and patches of the library loaded, its backends, the CPU variant ggml chose (and
every variant's score), the GPU backends compiled in, whether the per-cell attention bias (--mass-bias)
is there. PyTorch: its version and devices, whether this CPU runs bfloat16 natively, the number type and
device the vision tower picks by default, the threads. Reads facts only: nothing is downloaded or loaded
beyond the libraries.
"""

from __future__ import annotations

import platform
import sys

import torch

from . import llama_build, models
from .vision import pick_device, pick_dtype


def report() -> dict:
    device = pick_device("auto")
    return {
        "dcp_desktop": _version(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "llama_cpp": llama_build.build_info(),
        "torch": {
            "version": torch.__version__,
            "devices": _torch_devices(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_native": _bf16_native(),
            "vision_device": device,
            "vision_dtype": str(pick_dtype("auto", device)).removeprefix("torch."),
            "threads": torch.get_num_threads(),
        },
        "demo_model": {"present": not models.BUNDLED["demo"].missing_files()},
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dcp-desktop")
    except PackageNotFoundError:
        return "not installed"


def _torch_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def _bf16_native() -> bool:
    """Whether the vision tower's default bfloat16 runs on native instructions here (AVX-512 on x86, a
    bf16-capable GPU), the rule vision.pick_dtype follows."""
    return pick_dtype("auto", pick_device("auto")) == torch.bfloat16


def text(info: dict) -> str:
    """The report as lines a person reads."""
    llama, tensor = info["llama_cpp"], info["torch"]
    scores = ", ".join(f"{name} {score}" for name, score in sorted(llama["cpu_variant_scores"].items(),
                                                                    key=lambda item: -item[1]))
    lines = [
        f"dcp-desktop {info['dcp_desktop']}, Python {info['python']}, {info['platform']}",
        f"llama.cpp {llama['commit']} (llama-cpp-python {llama['llama_cpp_python']}, {llama['compiler']}), "
        f"from {llama['lib_path']}" + (" (LLAMA_CPP_LIB_PATH)" if llama["lib_overridden"] else ""),
        f"  patches: {', '.join(llama['patches']) or 'none'}",
        f"  backends loaded: {', '.join(llama['backends'])}; CPU variant: {llama['cpu_variant']} (scores: {scores})",
        f"  GPU backends built: {', '.join(llama['gpu_backends_built']) or 'none'}; "
        f"attention bias (--mass-bias): {'yes' if llama['attention_bias'] else 'no'}; "
        f"llama.cpp's own image encoder (mtmd): {'yes' if llama['mtmd'] else 'no'}",
        f"PyTorch {tensor['version']}: devices {', '.join(tensor['devices'])}; CPU {tensor['cpu_capability']}, "
        f"bfloat16 native: {'yes' if tensor['bf16_native'] else 'no'}",
        f"  vision tower by default: {tensor['vision_device']}, {tensor['vision_dtype']}; threads {tensor['threads']}",
        f"bundled demo model: {'present' if info['demo_model']['present'] else 'MISSING (reinstall dcp-desktop)'}",
    ]
    return "\n".join(lines)
