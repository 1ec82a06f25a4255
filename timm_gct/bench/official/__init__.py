""" Official-code references: every mechanism as its authors' code computes it, for the benchmark only.

Each module here is written from the official repository named in its docstring, keeping that code's operations in
their order (its extra passes over the feature map, its reshapes and copies), so that a benchmark row shows what
the official implementation costs at exactly our placement. A reference takes its settings and its parameter values
from one of our layers (``from_layer``), so a model with its layers swapped by ``to_official`` computes the same
function as ours; tests/bench/test_official.py checks that in float64.

The library never imports this package.
"""
from typing import Callable, Dict, Type

from torch import nn

from . import (
    bilinear, criss_cross, dia, eca, encoding, fca, gct, global_context, gsop, nam, soca, srm, triplet)

__all__ = ['to_official']

_REFERENCES: Dict[Type[nn.Module], Callable[[nn.Module], nn.Module]] = {
    m.LAYER: m.from_layer for m in (
        bilinear, criss_cross, dia, eca, encoding, fca, gct, global_context, gsop, nam, soca, srm, triplet)
}


def to_official(model: nn.Module) -> nn.Module:
    """Swap, in place, every timm_gct attention layer in ``model`` for its official-code reference; returns ``model``.

    A layer shared by several blocks (DIANet's stage cell) is replaced by one shared reference.
    """
    made: Dict[int, nn.Module] = {}

    def visit(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            make = _REFERENCES.get(type(child))
            if make is None:
                visit(child)
                continue
            if id(child) not in made:
                made[id(child)] = make(child)
            setattr(parent, name, made[id(child)])

    visit(model)
    if not made:
        raise ValueError(
            f'to_official: model {type(model).__name__} has no timm_gct attention layer to replace; expected a model '
            f'holding one of {sorted(t.__name__ for t in _REFERENCES)}.')
    return model
