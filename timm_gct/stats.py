""" Model statistics measured from the model itself: parameter counts, MACs and activations.

Nothing here is typed in by hand. Models are built on the meta device, so measuring even a ResNet-152 allocates no
memory and runs no arithmetic: ``torch.utils.flop_counter`` counts the multiply-accumulates of convolutions,
matrix products and linear layers from tensor shapes alone (elementwise ops such as a channel gate are not counted,
as in timm's model cards). Activations follow the definition behind timm's cards (fvcore's activation count):
the number of output elements of every convolution and matrix product.
"""
from dataclasses import dataclass
from functools import lru_cache
from typing import List, Optional, Tuple

import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from timm.models.resnet import BasicBlock, Bottleneck

from .models import GctConv2d, model_mechanism

__all__ = ['ModelStats', 'count_activations', 'count_macs', 'count_params', 'measure', 'plain_twin']


@dataclass(frozen=True)
class ModelStats:
    name: str
    mechanism: str  # mechanism title, '-' for a plain ResNet
    attn_stages: Tuple[int, ...]  # stages (1-4) holding attention layers, () for none
    attn_layers: int  # distinct attention modules, the stem's included (one shared by a stage's blocks counts once)
    params: int
    plain_params: int  # parameters of the plain ResNet twin (same depth and stem)
    macs: int
    input_size: Tuple[int, int, int]

    @property
    def added_params(self) -> int:
        return self.params - self.plain_params


def plain_twin(model_name: str) -> str:
    """Plain ResNet of equal depth and stem: ``gct_resnet50`` -> ``resnet50``, ``*_cifar`` -> ``resnet*_cifar``,
    ``gct_resnet50_official`` -> ``resnet50``, timm's ``seresnet50`` -> ``resnet50``."""
    arch = model_name.split('.')[0].removesuffix('_official')
    return arch[arch.index('resnet'):]


def count_macs(model: torch.nn.Module, input_size: Tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass at batch size 1 (build the model on the meta device: no compute)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.empty(1, *input_size, device='meta'))
    return counter.get_total_flops() // 2


_aten = torch.ops.aten
# Convolutions and matrix products as they reach the dispatcher (nn.Linear and matmul/einsum decompose into these).
_ACTIVATION_OPS = {_aten.convolution.default, _aten.mm.default, _aten.addmm.default, _aten.bmm.default,
                   _aten.baddbmm.default}


class _ActivationCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _ACTIVATION_OPS:
            self.count += out.numel()
        return out


def count_activations(model: torch.nn.Module, input_size: Tuple[int, int, int]) -> int:
    """Output elements of the convolutions and matrix products of one forward pass at batch size 1."""
    with torch.no_grad(), _ActivationCounter() as counter:
        model(torch.empty(1, *input_size, device=next(model.parameters()).device))
    return counter.count


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _attn_modules(module: torch.nn.Module) -> List[torch.nn.Module]:
    """Distinct attention modules in a ResNet or one of its stages: the ``se`` of each residual block (timm's
    ``attn_layer`` hook; DIA's blocks share one per stage) and the GCT of each ``GctConv2d`` (the official GCT
    layout, which also has one in the stem)."""
    found = []
    for m in module.modules():
        if isinstance(m, (BasicBlock, Bottleneck)):
            found.append(m.se)
        elif isinstance(m, GctConv2d):
            found.append(m.gct)
    return list({id(m): m for m in found if m is not None}.values())


@lru_cache(maxsize=None)
def _plain_params(plain_name: str) -> int:
    # Eight twins serve all the registered models; building each once saves a sixth of measuring them all.
    return count_params(timm.create_model(plain_name, device='meta'))


def measure(model_name: str, input_size: Optional[Tuple[int, int, int]] = None) -> ModelStats:
    """Measure a model registered by timm_gct at its default input size (or ``input_size``), batch size 1."""
    mechanism = model_mechanism(model_name)
    model = timm.create_model(model_name, device='meta').eval()
    input_size = tuple(input_size or model.pretrained_cfg['input_size'])
    return ModelStats(
        name=model_name,
        mechanism=mechanism.title if mechanism is not None else '-',
        attn_stages=tuple(i for i in range(1, 5) if _attn_modules(getattr(model, f'layer{i}'))),
        attn_layers=len(_attn_modules(model)),
        params=count_params(model),
        plain_params=_plain_params(plain_twin(model_name)),
        macs=count_macs(model, input_size),
        input_size=input_size,
    )
