""" Compile the fused gates' Triton kernels for NVIDIA GPUs on a machine without one.

Triton's interpreter (how the other kernel tests run on the CPU) never compiles: it misses what only the compiler
rejects or crashes on, such as layouts, tl.dot shapes, or a pass that aborts the process (Triton 3.0 and 3.1 did,
on a loop-carried reduction used twice). This script drives every fused mechanism over dtypes, memory formats,
sizes, train / eval and split statistics, and compiles each kernel specialization it launches, through Triton's own
JIT path with ``warmup=True`` (compile, never launch) against a stand-in driver that names the target GPU. Nothing
runs, so outputs are meaningless; ptxas is Triton's own, so no CUDA toolkit is needed.

Run in its own process, without ``TRITON_INTERPRET=1`` (tests/kernels/test_compile_for_gpu.py does)::

    python -m tests.kernels.compile_for_gpu --arch 80 90

It prints one line per target, ``sm_90: 123 specializations compiled, 0 failed``, then each failure, and exits 1
if any failed.
"""
import argparse
import itertools
import os
import sys
import traceback
from typing import List, Optional, Sequence, Set, Tuple

import torch

_SHAPES = ((3, 7, 7), (2, 1, 2), (2, 14, 14), (2, 56, 56))
_PRECISIONS = (  # (input dtype, autocast dtype)
    (torch.float32, None), (torch.bfloat16, None), (torch.float16, None), (torch.float32, torch.bfloat16),
    (torch.float32, torch.float16))
_QUICK = 1, 2  # shapes and precisions of --quick (float32 and bfloat16): every kernel branch, fewer tile sizes


class _TargetDriver:
    """What Triton's JIT asks its active driver before compiling: a device, a stream and the target."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget
        self.target = GPUTarget('cuda', arch, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_current_target(self):
        return self.target

    def get_active_torch_device(self) -> torch.device:
        return torch.device('cpu')


def compile_all(arch: int, quick: bool = False) -> Tuple[int, List[str]]:
    """Compile every specialization the fused gates launch for sm_``arch``: (how many, failures)."""
    from triton.runtime import driver
    from timm_gct.kernels import _maps, switch
    from tests.kernels.helpers import FUSED, _kernel_modules, make_input, make_layer, routed_launches, run

    shapes, precisions = (_SHAPES[:_QUICK[0]], _PRECISIONS[:_QUICK[1]]) if quick else (_SHAPES, _PRECISIONS)
    compiled: Set[Tuple[str, str]] = set()  # (kernel, binary hash)
    failures: List[str] = []

    def launch(kernel, grid, *args, **meta):
        try:
            binary = kernel.run(*args, grid=grid, warmup=True, **meta)
            compiled.add((kernel.fn.__name__, binary.hash))
        except Exception:
            failures.append(f'{kernel.fn.__name__} {meta}:\n{traceback.format_exc(limit=-3)}')

    modules = _kernel_modules()
    previous = driver.active if torch.cuda.is_available() else None  # without a GPU there is no driver to restore
    driver.set_active(_TargetDriver(arch))
    _forget_targets(modules)
    interpreted, programs = switch._interpreted, _maps.target_programs
    switch._interpreted = lambda: True  # lets CPU tensors reach launch(), which compiles instead of running
    cases = itertools.product(
        (None, 64),  # target programs: whole maps per program, and statistics split along H x W
        FUSED, (torch.contiguous_format, torch.channels_last), precisions, shapes, (True, False))
    try:
        with routed_launches(launch):
            for target_programs, key, fmt, (dtype, autocast), shape, train in cases:
                _maps.target_programs = target_programs
                layer = make_layer(key, dtype=dtype).train(train)
                x = make_input(key, shape=shape, fmt=fmt, dtype=dtype)
                upstream = torch.ones(x.shape, dtype=autocast or dtype) if train else None
                run(layer, x, 'triton', upstream=upstream, autocast=autocast)
    finally:
        switch._interpreted, _maps.target_programs = interpreted, programs
        _forget_targets(modules)
        if previous is not None:
            driver.set_active(previous)
    return len(compiled), failures


def _forget_targets(modules: Sequence[object]) -> None:
    """Drop each kernel's per-device binder, which holds the target it was first asked for."""
    from triton.runtime.jit import JITFunction
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, JITFunction) and hasattr(value, 'device_caches'):  # Triton >= 3.2
                value.device_caches.clear()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', type=int, nargs='+', default=[80, 90], help='compute capabilities, e.g. 80 90')
    parser.add_argument('--quick', action='store_true', help='one map size, float32 and bfloat16 only (what CI runs)')
    args = parser.parse_args(argv)
    if os.environ.get('TRITON_INTERPRET', '0') == '1':
        parser.error('TRITON_INTERPRET=1 is set: the kernels would be interpreted, not compiled; unset it.')
    failed = False
    for arch in args.arch:
        count, failures = compile_all(arch, args.quick)
        print(f'sm_{arch}: {count} specializations compiled, {len(failures)} failed', flush=True)
        for failure in failures:
            print(failure, flush=True)
        failed = failed or bool(failures) or count == 0
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
