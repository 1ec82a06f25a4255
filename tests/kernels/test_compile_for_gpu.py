""" The fused kernels compile for a GPU with the installed Triton, checked on a machine without one: the interpreter
the other kernel tests run in never compiles (tests/kernels/compile_for_gpu.py says what this adds). """
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


def test_every_kernel_specialization_compiles_for_sm90():
    """Each kernel the fused gates launch (every branch, float32 and bfloat16, both memory formats, train and eval,
    split statistics) compiles for sm_90 through Triton's own JIT and ptxas. Compiled binaries land in Triton's
    cache as usual; a failure is never cached, so a cached run checks the same thing."""
    triton = pytest.importorskip('triton')
    from triton.backends import backends
    if 'nvidia' not in backends:
        pytest.skip(f"triton {triton.__version__} has no NVIDIA backend (it has {', '.join(backends) or 'none'})")
    env = {name: value for name, value in os.environ.items() if name != 'TRITON_INTERPRET'}
    result = subprocess.run(
        [sys.executable, '-m', 'tests.kernels.compile_for_gpu', '--arch', '90', '--quick'],
        cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    compiled = re.search(r'sm_90: (\d+) specializations compiled, 0 failed', result.stdout)
    assert compiled and int(compiled.group(1)) >= 38, output  # 38 kernel / constexpr combinations at least
