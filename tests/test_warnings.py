"""No warning a user cannot act on: held third-party notices, ignored local files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _stderr(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_the_cpu_4bit_kernel_notice_waits_until_4bit_is_used():
    # peft (through transformers.trainer_utils) imports bitsandbytes eagerly; on a CPU with
    # AVX512-BF16 that logs the notice at import, though only 4-bit weights use the kernel.
    assert NOTICE not in _stderr("import clear_rl, bitsandbytes, transformers.trainer_utils")
    err = _stderr(
        "import logging, sys, clear_rl\n"
        "from clear_rl.models.notices import BNB_CPU_LOGGER, release_4bit_notices\n"
        f"logging.getLogger(BNB_CPU_LOGGER).warning('{NOTICE}: no kernels')\n"
        "logging.getLogger(BNB_CPU_LOGGER).warning('another bitsandbytes warning')\n"
        "print('RELEASE', file=sys.stderr)\n"
        "release_4bit_notices()\n"
    )
    assert err.index("another bitsandbytes warning") < err.index("RELEASE") < err.index(NOTICE)
    assert err.count(NOTICE) == 1  # held, then logged once: not lost


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_venv_symlink_is_ignored_by_git():
    # `.venv/` matches folders only; a `.venv` symlink to a shared environment is a file to git.
    done = subprocess.run(["git", "check-ignore", "-q", "--no-index", ".venv"], cwd=ROOT)
    assert done.returncode == 0
