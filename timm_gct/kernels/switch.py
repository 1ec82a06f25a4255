""" Which implementation the channel gates run: fused Triton kernels or the plain PyTorch formula.

Like timm's ``TIMM_FUSED_ATTN``, the choice is read once from the environment when timm_gct is imported and can be
changed at run time:

* ``TIMM_GCT_KERNELS=auto`` (default): the Triton kernels for CUDA tensors when Triton imports and is recent enough,
  else PyTorch, quietly.
* ``TIMM_GCT_KERNELS=triton``: the Triton kernels for every eligible tensor, CPU tensors included (which Triton runs
  only in its interpreter, ``TRITON_INTERPRET=1``: that is how the kernels are tested without a GPU); an error that
  says why when they cannot run.
* ``TIMM_GCT_KERNELS=torch``: always the PyTorch formula.

Whatever the setting, TorchScript, torch.fx tracing, ``torch.compile`` (inductor fuses the plain formula itself) and
double backward run PyTorch, and so do inputs the kernels do not take: float64, other than 4-D, or strides other than
contiguous NCHW or channels_last.
"""
import importlib
import os
from typing import Optional, Tuple

import torch
import torch.fx

__all__ = ['ENV_VAR', 'KERNEL_MODES', 'MIN_TRITON', 'get_kernels', 'set_kernels', 'triton_status', 'use_triton']

ENV_VAR = 'TIMM_GCT_KERNELS'
KERNEL_MODES = ('auto', 'triton', 'torch')
MIN_TRITON = (3, 0)  # compiled for sm_90 with Triton 3.0-3.8 (sm_80: 3.8); run so far only in 3.8's interpreter
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _checked(mode: str, source: str) -> str:
    if mode not in KERNEL_MODES:
        raise ValueError(f'{source}={mode!r} is not allowed; expected one of {", ".join(KERNEL_MODES)}.')
    return mode


_mode = _checked(os.environ.get(ENV_VAR, 'auto').strip().lower() or 'auto', ENV_VAR)
_status: Optional[Tuple[bool, str]] = None


def get_kernels() -> str:
    """The current setting: 'auto', 'triton' or 'torch'."""
    return _mode


def set_kernels(mode: str) -> None:
    """Choose the implementation at run time ('auto', 'triton' or 'torch'); 'triton' fails here if Triton cannot
    run, with the reason, and the setting stays as it was."""
    global _mode
    mode = _checked(mode, 'set_kernels: mode')
    if mode == 'triton':
        available, reason = triton_status()
        if not available:
            raise RuntimeError(f"set_kernels('triton'): the Triton kernels cannot run: {reason}.")
    _mode = mode


def triton_status() -> Tuple[bool, str]:
    """Whether the fused kernels can run here, and why not (checked once: Triton's version and import)."""
    global _status
    if _status is None:
        _status = _check_triton()
    return _status


def _check_triton() -> Tuple[bool, str]:
    try:
        triton = importlib.import_module('triton')
    except Exception as e:  # ImportError, or a broken install raising anything at import
        return False, f'triton does not import ({type(e).__name__}: {e}); it ships with CUDA builds of PyTorch'
    version = getattr(triton, '__version__', '0')
    try:
        found = tuple(int(part) for part in version.split('+')[0].split('.')[:2])
    except ValueError:
        found = (0, 0)
    if found < MIN_TRITON:
        need = '.'.join(map(str, MIN_TRITON))
        return False, f'triton {version} is installed; the kernels need triton >= {need}'
    return True, f'triton {version}'


def _interpreted() -> bool:
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def _eligible(x: torch.Tensor) -> bool:
    """A tensor the kernels take: a non-empty 4-D float16 / bfloat16 / float32 map, NCHW or channels_last."""
    if x.dim() != 4 or x.dtype not in _DTYPES or x.numel() == 0:
        return False
    return x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)


@torch.jit.unused
def use_triton(x: torch.Tensor) -> bool:
    """Whether a channel gate called on ``x`` runs its fused Triton kernels (eager mode only)."""
    if _mode == 'torch' or torch.compiler.is_compiling() or isinstance(x, torch.fx.Proxy) or not _eligible(x):
        return False
    if _mode == 'auto':
        return x.device.type == 'cuda' and torch.version.hip is None and triton_status()[0]
    if x.device.type not in ('cuda', 'cpu'):
        return False  # e.g. 'meta', where model statistics are counted: nothing to compute
    available, reason = triton_status()
    if not available:
        raise RuntimeError(f'{ENV_VAR}=triton: the Triton kernels cannot run: {reason}.')
    if x.device.type == 'cpu' and not _interpreted():
        raise RuntimeError(
            f'{ENV_VAR}=triton: a CPU tensor reached the Triton kernels, which run CPU tensors only in Triton\'s '
            f'interpreter: set TRITON_INTERPRET=1 before timm_gct first uses them, or use {ENV_VAR}=auto.')
    return True
