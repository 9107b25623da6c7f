"""What ran where: versions, device and threads, for the report cell of every notebook.

Also the device set-up of a run: :func:`resolve_device` (with a clear warning when a
GPU profile ends up on the CPU, e.g. a CUDA build of torch newer than the driver),
:func:`configure_torch` (TF32 matrix products, cuDNN autotuning) and
:func:`default_progress` (progress bars in interactive use, none in papermill / CI logs).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import subprocess
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

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
    return {"tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}


def _parent_command() -> str:
    try:
        return Path(f"/proc/{os.getppid()}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block with ``threads`` torch intra-op threads (None: as they are), then restore the count."""
    before = torch.get_num_threads()
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a whole number >= 1 or None, got {threads!r}")
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


def package_version(name: str) -> str | None:
    """Return the installed version of distribution ``name`` (None when absent): open_clip 2.24 has no
    ``__version__``."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def describe_environment() -> dict:
    """Return versions of Python and the key packages, the device and the CPU threads in use."""
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "open_clip": package_version("open_clip_torch"),
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


def read_driver() -> dict | None:
    """Return ``{"driver", "cuda", "gpus"}`` from ``nvidia-smi`` (the driver's version, the newest CUDA it runs,
    the cards' names), or None without an NVIDIA driver."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        header = subprocess.run([smi], capture_output=True, text=True, timeout=30).stdout
        names = subprocess.run([smi, "--query-gpu=name,driver_version", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    cuda = re.search(r"CUDA Version:\s*([0-9.]+)", header)
    rows = [r.split(",") for r in names.strip().splitlines() if "," in r]
    return {"driver": rows[0][1].strip() if rows else None, "cuda": cuda.group(1) if cuda else None,
            "gpus": [r[0].strip() for r in rows]}


def check_gpu(*, driver: dict | None = None, problem: str | None = None) -> tuple[bool, str]:
    """Return ``(ok, message)``: whether this torch can use the machine's GPU. Not ok only when a driver is there
    but torch cannot use it (its CUDA build newer than the driver, a CPU-only build): the message says what to
    install. No driver at all is ok (the CPU), with a message saying so. ``driver`` / ``problem``: for tests."""
    driver = read_driver() if driver is None else driver
    problem = cuda_problem() if problem is None and driver else problem
    build = f"torch {torch.__version__} (CUDA build {torch.version.cuda or 'none: CPU only'})"
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return True, f"{build}; the GPUs are hidden (CUDA_VISIBLE_DEVICES is empty): the run uses the CPU"
    if not driver:
        return True, f"{build}; no NVIDIA driver: the run uses the CPU"
    seen = f"driver {driver.get('driver')} (runs CUDA up to {driver.get('cuda')}), {', '.join(driver['gpus'])}"
    if not problem:
        return True, f"{build} uses the GPU: {seen}"
    hint = ""
    if torch.version.cuda and driver.get("cuda"):
        wheel = "cu" + "".join(driver["cuda"].split(".")[:2])
        hint = (f" The driver runs CUDA up to {driver['cuda']}: install a torch built for it, e.g. pip install torch "
                f"torchvision --index-url https://download.pytorch.org/whl/{wheel} (or the newest cuXY not above "
                f"it), in an environment you activate before ./run_all.sh, which then keeps it; or update the driver.")
    return False, f"{build} cannot use the GPU: {seen}. {problem}.{hint}"


def main(argv=None) -> int:
    """``python -m clipunlearn env [--check-gpu]``: print the environment; with ``--check-gpu`` exit 1 when a GPU
    driver is present but this torch cannot use it."""
    parser = argparse.ArgumentParser(prog="python -m clipunlearn env", description=main.__doc__.split(":")[0])
    parser.add_argument("--check-gpu", action="store_true", help="exit 1 when torch cannot use the GPU it sees")
    args = parser.parse_args(argv)
    ok, message = check_gpu()
    if args.check_gpu:
        print(message, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    for key, value in describe_environment().items():
        print(f"{key}: {value}")
    print(message)
    return 0
