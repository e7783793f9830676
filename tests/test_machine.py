"""A published figure's machine line names the CPU model, its vector extensions, cores and versions."""

from __future__ import annotations

import importlib.metadata
import os

from clear_rl.machine import cpu_model, describe_machine, vector_extensions

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2 sha_ni
"""
XEON = """model name\t: Intel(R) Xeon(R) Processor
flags\t\t: sse4_2 avx avx2 fma avx512f avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_int8 amx_tile
"""


def test_an_avx2_cpu_and_an_avx512_one_are_told_apart():
    assert cpu_model(EPYC) == "AMD EPYC 7B13 64-Core Processor"
    assert vector_extensions(EPYC) == ["avx", "avx2", "fma"]
    assert vector_extensions(XEON) == [
        "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8",
    ]  # fmt: skip


def test_the_line_holds_model_extensions_cores_gpu_and_versions():
    line = describe_machine(EPYC)
    assert line.startswith("AMD EPYC 7B13 64-Core Processor (avx avx2 fma; torch CPU kernels: ")
    assert f"{os.cpu_count()} cores" in line
    assert "GPU" in line
    for package in ("torch", "transformers", "trl", "peft"):
        assert f"{package} {importlib.metadata.version(package)}" in line


def test_a_cpu_without_cpuinfo_still_gets_a_name():
    assert cpu_model("") and vector_extensions("") == []
    assert "(no AVX;" in describe_machine("")
