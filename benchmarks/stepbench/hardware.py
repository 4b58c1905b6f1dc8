"""The machine a result was measured on, and how close a step came to its peak arithmetic rate.

Achieved FLOP/s is the variant's counted FLOPs (torch's FLOP counter: matrix products and
attention) over its median step time. On a GPU in bf16/fp16 it is also given as a share of the
device's dense peak from the table below. CPUs have no such entry: their peak depends on the
core count, vector units and clock the job got, so CPU results report the rate alone.
"""

from __future__ import annotations

import datetime
import os
import platform
from importlib import metadata

import torch

# Dense (without structured sparsity) bf16/fp16 tensor-core peaks in TFLOP/s, by a substring of
# torch.cuda.get_device_name(); the first match wins, so variants come before their family. The
# vendors' datasheets headline the figures "with sparsity", twice these.
DENSE_BF16_TFLOPS = (
    ("H200 NVL", 835.5),  # NVIDIA H200 datasheet: BF16 Tensor Core 1,671 TFLOPS with sparsity (H200 NVL)
    ("H200", 989.5),  # NVIDIA H200 datasheet: 1,979 TFLOPS with sparsity (H200 SXM)
    ("H100 NVL", 835.5),  # NVIDIA H100 datasheet: 1,671 TFLOPS with sparsity (H100 NVL)
    ("H100 PCIe", 756.5),  # NVIDIA H100 datasheet: 1,513 TFLOPS with sparsity (H100 PCIe)
    ("H100", 989.5),  # NVIDIA H100 datasheet: 1,979 TFLOPS with sparsity (H100 SXM)
    ("A100", 312.0),  # NVIDIA A100 datasheet: BF16 Tensor Core 312 TFLOPS (624 with sparsity), SXM and PCIe
    ("L40S", 362.05),  # NVIDIA L40S datasheet: 733 TFLOPS with sparsity
    ("L4", 121.0),  # NVIDIA L4 datasheet: 242 TFLOPS with sparsity
    ("MI300X", 1307.4),  # AMD Instinct MI300X datasheet: BF16 1,307.4 TFLOPS (2,614.9 with sparsity)
)


def dense_peak_tflops(device: str, dtype: str) -> float | None:
    """The device's dense bf16 peak when the run was bf16/fp16 on a listed GPU, else None."""
    if not device.startswith("cuda") or dtype not in ("bfloat16", "float16"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((peak for key, peak in DENSE_BF16_TFLOPS if key in name), None)


def significant(value: float, digits: int = 4) -> float:
    """`value` to `digits` significant figures: a tiny model's GFLOPs and a GPU's TFLOP/s alike keep their precision."""
    return float(f"{value:.{digits}g}")


def achieved(gflops: dict[str, float], median_ms: dict[str, float], peak_tflops: float | None) -> dict:
    """Per variant: achieved TFLOP/s and, with a known peak, its share of it."""
    rates = {name: gflops[name] / median_ms[name] for name in gflops}  # GFLOP per ms = TFLOP/s
    return {
        "tflops_per_s": {name: significant(rate) for name, rate in rates.items()},
        "peak_tflops_per_s": peak_tflops,
        "share_of_peak": None if peak_tflops is None else {name: significant(rate / peak_tflops) for name, rate in rates.items()},
    }


def environment(settings) -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    machine = {"cpu": cpu, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "load_average": os.getloadavg()}
    if settings.device.startswith("cuda"):
        machine["gpu"] = torch.cuda.get_device_name()
    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers", "peft"):
        versions[package] = metadata.version(package)
    return {"date": datetime.date.today().isoformat(), "machine": machine, "versions": versions}
