"""What ran where: versions, device and threads, for the report cell of every notebook."""

from __future__ import annotations

import os
import platform
import sys


def resolve_device(device: str = "auto") -> str:
    """Return ``"cuda"`` when ``device`` is "auto" and a GPU is visible, else ``device`` ("cpu" for auto)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA GPU is visible; use DEVICE='cpu' or 'auto'")
    return device


def describe_environment() -> dict:
    """Return versions of Python and the key packages, the device and the CPU threads in use."""
    import open_clip
    import torch

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except Exception as err:  # torchvision is optional for the mini world
        info["torchvision"] = f"unavailable ({err.__class__.__name__})"
    return info
