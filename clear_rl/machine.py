"""Where a figure was measured: CPU model and vector extensions, cores, GPU, package versions.

A published figure (benchmarks/RESULTS.md, a demo SUMMARY) names these beside it because the same
code and seed give different numbers on CPUs whose kernels differ (AVX2 against AVX-512 or AMX
matmuls round differently) and on other package versions. Read from /proc/cpuinfo, which is what
`lscpu` reports; elsewhere the platform module's answer.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

# The extensions that change which matmul and convolution kernels run, in the order they appeared.
VECTOR_FLAGS = (
    "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8",
)  # fmt: skip
PACKAGES = ("torch", "transformers", "trl", "peft", "diffusers", "accelerate")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _field(cpuinfo: str, name: str) -> str | None:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name ('Intel(R) Xeon(R) Processor', 'AMD EPYC 7B13 64-Core Processor')."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    return _field(text, "model name") or platform.processor() or platform.machine() or "unknown CPU"


def vector_extensions(cpuinfo: str | None = None) -> list[str]:
    """The kernel-relevant vector extensions the CPU reports, among VECTOR_FLAGS."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    flags = set((_field(text, "flags") or "").split())
    return [flag for flag in VECTOR_FLAGS if flag in flags]


def _gpu() -> str:
    import torch

    if not torch.cuda.is_available():
        return "no GPU"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return ", ".join(f"{names.count(n)} x {n}" for n in dict.fromkeys(names))


def package_versions(packages: tuple[str, ...] = PACKAGES) -> str:
    versions = []
    for name in packages:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(versions)


def describe_machine(cpuinfo: str | None = None) -> str:
    """One line for a published figure: CPU model (vector extensions, torch's kernel level),
    cores, GPU or none; package versions."""
    import torch

    extensions = " ".join(vector_extensions(cpuinfo)) or "no AVX"
    kernels = torch.backends.cpu.get_cpu_capability()
    return (
        f"{cpu_model(cpuinfo)} ({extensions}; torch CPU kernels: {kernels}), {os.cpu_count()} cores, "
        f"{_gpu()}; {package_versions()}"
    )
