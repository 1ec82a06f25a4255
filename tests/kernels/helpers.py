""" Helpers of the fused-kernel tests: the gate layers at small sizes, runs on either path, launch counting. """
import collections
import contextlib
import copy
from typing import Dict, List, NamedTuple, Optional

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from timm_gct.kernels import get_kernels, set_kernels
from timm_gct.layers import get_attn
from tests.helpers import randomize

# Every fused mechanism: (name, constructor keywords, channels). FcaNet needs a multiple of its 16 frequencies; the
# others take an odd, non-power-of-two count.
FUSED = {
    'gct': ('gct', {}, 13),
    'gct_l1': ('gct', {'mode': 'l1'}, 13),
    'gct_l1_relu': ('gct', {'mode': 'l1', 'after_relu': True}, 13),
    'eca': ('eca', {'kernel_size': 5}, 13),
    'srm': ('srm', {}, 13),
    'nam': ('nam', {}, 13),
    'fca': ('fca', {'dct_size': 7, 'reduction': 4}, 48),
}

# ATen operations that launch no kernel: allocations and views.
_NO_LAUNCH = ('aten.empty', 'aten.empty_like', 'aten.empty_strided', 'aten.view', 'aten._unsafe_view', 'aten.slice',
              'aten.as_strided', 'aten.alias', 'aten.detach')


def make_layer(key: str, scale: float = 0.5, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A fused mechanism's layer away from its init (BN statistics and every parameter random)."""
    name, kwargs, channels = FUSED[key]
    return randomize(get_attn(name)(channels, **kwargs), seed=1, scale=scale).to(dtype)


def make_input(key: str, shape=(3, 7, 7), fmt=torch.contiguous_format, dtype=torch.float32,
               device='cpu') -> torch.Tensor:
    n, h, w = shape
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, FUSED[key][2], h, w, generator=g) * 2
    if FUSED[key][1].get('after_relu'):
        x = x.relu()
    return x.to(device=device, dtype=dtype).contiguous(memory_format=fmt)


class Run(NamedTuple):
    out: torch.Tensor
    grad_x: Optional[torch.Tensor]
    grads: Dict[str, torch.Tensor]
    state: Dict[str, torch.Tensor]  # buffers after the call (running statistics, num_batches_tracked)
    grad_fn: str


def run(layer: nn.Module, x: torch.Tensor, kernels: str, upstream: Optional[torch.Tensor] = None,
        autocast: Optional[torch.dtype] = None) -> Run:
    """One forward and (with ``upstream``) backward of a copy of ``layer`` on a copy of ``x`` with the given
    TIMM_GCT_KERNELS setting."""
    layer = copy.deepcopy(layer)
    x = x.detach().clone().requires_grad_(upstream is not None)
    before = get_kernels()
    set_kernels(kernels)
    try:
        with torch.autocast(x.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            out = layer(x)
        if upstream is not None:
            (out * upstream).sum().backward()
    finally:
        set_kernels(before)
    grads = {n: p.grad for n, p in layer.named_parameters() if p.grad is not None}
    return Run(out.detach(), x.grad, grads, {n: b.clone() for n, b in layer.named_buffers()},
               type(out.grad_fn).__name__)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference over the largest magnitude (a scale-free error of a whole tensor)."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


class _AtenOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused:
            self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_launches():
    """Count what a fused call launches: Triton kernels (through the interpreter's grid executor, or the compiled
    launcher on a GPU) and ATen operations that launch a kernel (allocations and views do not). Yields a dict filled
    on exit with 'kernels' (names) and 'aten' (name -> count)."""
    from timm_gct.kernels import _maps
    found: Dict[str, object] = {'kernels': [], 'aten': {}}
    ops = _AtenOps()
    original = _maps.launch

    def launch(kernel, grid, *args, **meta):
        found['kernels'].append(kernel.fn.__name__)
        ops.paused = True  # the interpreter's own tensor copies are not the layer's operations
        try:
            original(kernel, grid, *args, **meta)
        finally:
            ops.paused = False

    with routed_launches(launch), ops:
        yield found
    found['aten'] = {name: n for name, n in ops.ops.items() if not name.startswith(_NO_LAUNCH)}


@contextlib.contextmanager
def routed_launches(launch):
    """Every kernel launch of the fused gates goes to ``launch(kernel, grid, *args, **meta)`` instead, until exit."""
    from timm_gct.kernels import _maps
    original = _maps.launch
    modules = _kernel_modules()
    for module in modules:
        module.launch = launch
    try:
        yield
    finally:
        for module in modules:
            module.launch = original


def _kernel_modules() -> List[object]:
    from timm_gct.kernels import _maps, eca, fca, gct, nam, srm
    return [_maps, eca, fca, gct, nam, srm]
