"""What the benchmark ran on: CPU, cores, memory, OS, Python, runtime versions, GPUs (name, driver, CUDA)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from ..utils.cpus import usable_cpus
from ..utils.memory import memory_bytes

# Distributions whose versions are recorded (distribution name -> label); missing ones are left out.
PACKAGES = {
    "yolox-deploy": "yolox-deploy", "torch": "torch", "numpy": "numpy", "opencv-python-headless": "opencv",
    "opencv-python": "opencv", "onnx": "onnx", "onnxruntime": "onnxruntime", "onnxruntime-gpu": "onnxruntime",
    "openvino": "openvino", "ncnn": "ncnn", "pnnx": "pnnx", "tensorrt": "tensorrt", "tensorrt-cu12": "tensorrt",
    "cuda-python": "cuda-python",
}


# Environment variables that change CPU/GPU timings; recorded when set.
TIMING_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OMP_PROC_BIND", "OMP_PLACES", "GOMP_SPINCOUNT", "KMP_BLOCKTIME",
              "KMP_AFFINITY", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TBB_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
              "CUDA_LAUNCH_BLOCKING", "TF32_OVERRIDE", "NVIDIA_TF32_OVERRIDE")


@dataclass
class GpuInfo:
    name: str
    memory_gb: float | None = None
    driver: str | None = None
    cuda: str | None = None
    compute_capability: str | None = None


@dataclass
class HostInfo:
    """The machine and software a benchmark ran on."""

    cpu_model: str
    physical_cores: int | None
    logical_cores: int | None
    ram_gb: float | None
    os: str
    python: str
    torch_threads: int | None
    packages: dict[str, str] = field(default_factory=dict)
    gpus: list[GpuInfo] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    usable_cpus: int | None = None  # the CPUs this process may run on (its affinity mask; None in older reports)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HostInfo:
        d = dict(d)
        gpus = [GpuInfo(**g) for g in d.pop("gpus", [])]
        return cls(**d, gpus=gpus)

    def summary(self) -> str:
        """One line: ``CPU (P cores / L threads), RAM, OS, Python, versions; GPU ...``."""
        cores = f"{self.physical_cores or '?'} cores / {self.logical_cores or '?'} threads"
        if self.usable_cpus and self.logical_cores and self.usable_cpus < self.logical_cores:
            cores += f", {self.usable_cpus} usable by this process"
        parts = [f"{self.cpu_model} ({cores})"]
        if self.ram_gb:
            parts.append(f"{self.ram_gb:.0f} GB RAM")
        parts += [self.os, f"Python {self.python}"]
        parts.append(", ".join(f"{k} {v}" for k, v in self.packages.items()))
        if self.gpus:
            parts.append("GPU: " + "; ".join(_gpu_text(g) for g in self.gpus))
        else:
            parts.append("no GPU")
        if self.env:
            parts.append("env " + " ".join(f"{k}={v}" for k, v in self.env.items()))
        return ", ".join(p for p in parts if p)


def _gpu_text(g: GpuInfo) -> str:
    bits = [g.name]
    if g.memory_gb:
        bits.append(f"{g.memory_gb:.0f} GB")
    if g.driver:
        bits.append(f"driver {g.driver}")
    if g.cuda:
        bits.append(f"CUDA {g.cuda}")
    return " ".join(bits)


def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo`` on Linux, else ``platform``)."""
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Model") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _cores() -> tuple[int | None, int | None]:
    logical = os.cpu_count()
    try:
        import psutil

        return psutil.cpu_count(logical=False), psutil.cpu_count(logical=True)
    except ImportError:
        pass
    info = Path("/proc/cpuinfo")
    if info.exists():
        pairs = set()
        phys = core = None
        for line in info.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                phys = value.strip()
            elif key == "core id":
                core = value.strip()
            elif not line.strip() and core is not None:
                pairs.add((phys, core))
                phys = core = None
        if core is not None:
            pairs.add((phys, core))
        if pairs:
            return len(pairs), logical
    return None, logical


def _ram_gb() -> float | None:
    total = memory_bytes("MemTotal")
    return None if total is None else total / 1e9


def package_versions() -> dict[str, str]:
    """Installed versions of the runtimes and libraries the benchmark can use (without importing them)."""
    out: dict[str, str] = {}
    for dist, label in PACKAGES.items():
        if label in out:
            continue
        try:
            out[label] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def _nvidia_smi() -> list[dict[str, str]]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        text = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in text.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) >= 3:
            rows.append({"name": fields[0], "driver": fields[1], "memory_mib": fields[2]})
    return rows


def gpu_info() -> list[GpuInfo]:
    """CUDA GPUs seen by torch, with the driver version from ``nvidia-smi`` when it is installed."""
    smi = _nvidia_smi()
    gpus: list[GpuInfo] = []
    try:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                driver = smi[i]["driver"] if i < len(smi) else None
                gpus.append(GpuInfo(p.name, p.total_memory / 1e9, driver, torch.version.cuda, f"{p.major}.{p.minor}"))
            return gpus
    except ImportError:
        pass
    for row in smi:
        try:
            mem = float(row["memory_mib"]) * 1024**2 / 1e9
        except ValueError:
            mem = None
        gpus.append(GpuInfo(row["name"], mem, row["driver"]))
    return gpus


def collect_host_info() -> HostInfo:
    """Describe this machine (a second or so: ``nvidia-smi`` is called when present)."""
    physical, logical = _cores()
    try:
        import torch

        threads: int | None = torch.get_num_threads()
    except ImportError:
        threads = None
    return HostInfo(
        cpu_model=cpu_model(), physical_cores=physical, logical_cores=logical, ram_gb=_ram_gb(),
        os=f"{platform.system()} {platform.release()}", python=platform.python_version(), torch_threads=threads,
        packages=package_versions(), gpus=gpu_info(),
        env={k: os.environ[k] for k in TIMING_ENV if k in os.environ},
        usable_cpus=usable_cpus(),
    )
