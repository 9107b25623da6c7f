"""What ran where: versions, device and threads, for the report cell of every notebook.

Also the device set-up of a run: :func:`resolve_device` (with a clear warning when a
GPU profile ends up on the CPU, e.g. a CUDA build of torch newer than the driver),
:func:`configure_torch` (TF32 matrix products, cuDNN autotuning) and
:func:`default_progress` (progress bars in interactive use, none in papermill / CI logs).
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import warnings
from pathlib import Path

import open_clip
import torch

#: Profiles meant for a GPU: resolving them to the CPU warns.
GPU_PROFILES = ("paper",)


def cuda_problem() -> str | None:
    """Return why torch cannot use a GPU here (None when it can)."""
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build (install a CUDA wheel of torch)"
    if not Path("/proc/driver/nvidia/version").exists() and shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU driver was found on this machine"
    try:
        torch.cuda.init()
    except Exception as err:  # noqa: BLE001  (torch says why: driver too old, no device, ...)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    else:
        reason = "torch.cuda.is_available() is False"
    return (f"a GPU driver is present but torch {torch.__version__} (built for CUDA {torch.version.cuda}) cannot "
            f"use it: {reason}. Usually this torch build is newer than the driver: install a torch wheel for the "
            "CUDA version nvidia-smi reports (https://pytorch.org/get-started/locally/), or update the driver")


def resolve_device(device: str = "auto", *, profile: str | None = None) -> str:
    """Return ``"cuda"`` when ``device`` is "auto" and a GPU is visible, else ``device`` ("cpu" for auto).

    With ``profile`` in :data:`GPU_PROFILES` (``"paper"``), resolving to the CPU warns
    with the reason (:func:`cuda_problem`), since such a run takes hours there.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA GPU is usable ({cuda_problem()}); "
                         "use DEVICE='cpu' or 'auto'")
    if profile in GPU_PROFILES and device == "cpu":
        warnings.warn(f"the {profile} profile runs on the CPU: {cuda_problem() or 'DEVICE is cpu'}. It is meant "
                      "for a GPU; on the CPU it takes hours (QUICK=True for a smoke test)", stacklevel=2)
    return device


def configure_torch(device, *, tf32: bool = True, benchmark: bool = True) -> dict:
    """Set up torch for fast GPU work and return what was set.

    ``tf32``: float32 matrix products and convolutions on TF32 tensor cores (Ampere and
    later; about 10 bits of mantissa in the products, float32 accumulation);
    ``benchmark``: cuDNN picks the fastest convolution algorithms for the shapes it sees.
    Nothing changes on the CPU.
    """
    if str(device).startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = benchmark
    return {"tf32": bool(torch.backends.cuda.matmul.allow_tf32), "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}


def _parent_command() -> str:
    try:
        return Path(f"/proc/{os.getppid()}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def default_progress() -> bool:
    """Return whether long loops should show progress bars.

    ``$CLIPUNLEARN_PROGRESS`` (0 / 1) decides when set; otherwise no bars when this
    process was started by papermill, nbval / pytest or nbconvert (their logs would fill
    with bar updates), bars in an interactive notebook or terminal.
    """
    value = os.environ.get("CLIPUNLEARN_PROGRESS", "").strip().lower()
    if value:
        return value not in ("0", "false", "no", "off")
    parent = _parent_command()
    if any(word in parent for word in ("papermill", "pytest", "nbval", "nbconvert", "nbclient")):
        return False
    if "ipykernel" in sys.modules:
        return True
    return sys.stderr.isatty()


def describe_environment() -> dict:
    """Return versions of Python and the key packages, the device and the CPU threads in use."""
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
        import torchvision  # optional

        info["torchvision"] = torchvision.__version__
    except Exception as err:  # torchvision is optional for the mini world
        info["torchvision"] = f"unavailable ({err.__class__.__name__})"
    return info


def describe_machine() -> dict:
    """Return the CPU model, core count and torch's CPU kernel level: what decides a trained model's last bits."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads()}
