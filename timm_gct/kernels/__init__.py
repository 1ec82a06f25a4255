""" Fused Triton kernels for the channel gates (GCT, NAM, ECA, SRM, FcaNet) and the switch that chooses them.

Importing this package does not import Triton: the kernel modules (``gct``, ``nam``, ...) are imported by the layers
the first time a tensor takes the fused path, so ``TRITON_INTERPRET=1`` set before that first call is honoured.
"""
from .switch import ENV_VAR, KERNEL_MODES, MIN_TRITON, get_kernels, set_kernels, triton_status, use_triton

__all__ = ['ENV_VAR', 'KERNEL_MODES', 'MIN_TRITON', 'get_kernels', 'set_kernels', 'triton_status', 'use_triton']
