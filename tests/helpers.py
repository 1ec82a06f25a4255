""" Shared test helpers. """
import copy

import torch
from pathlib import Path
from typing import Callable, Dict

from torch import nn

__all__ = [
    'RunsCodeWhenUnpickled', 'assert_float16_gate_matches', 'assert_gradients_match', 'attention_layers',
    'attention_model', 'randomize',
]


def randomize(module: nn.Module, seed: int = 0, scale: float = 1.) -> nn.Module:
    """Move a module away from its init so that no path through it is trivially zero.

    Every parameter gets N(0, scale^2) values; BatchNorm running statistics get N(0, 1) means and U(0.5, 1.5)
    variances; other buffers (e.g. FcaNet's fixed DCT filters) keep their values.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale)
        for name, b in module.named_buffers():
            if name.endswith('running_mean'):
                b.copy_(torch.randn(b.shape, generator=g, dtype=torch.float64))
            elif name.endswith('running_var'):
                b.copy_(torch.rand(b.shape, generator=g, dtype=torch.float64) + 0.5)
    return module


def assert_gradients_match(
        layer: nn.Module,
        x: torch.Tensor,
        reference: Callable[[torch.Tensor, Dict[str, torch.Tensor]], torch.Tensor],
) -> None:
    """Backpropagate one random upstream gradient through ``layer`` and through ``reference(x, params)`` (the
    official math written with the layer's parameters passed as leaf tensors), and require equal gradients for the
    input and every parameter (float64 tolerances)."""
    x = x.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    ref_params = {n: p.detach().clone().requires_grad_() for n, p in layer.named_parameters()}
    out = layer(x)
    upstream = torch.randn(out.shape, dtype=out.dtype)
    (out * upstream).sum().backward()
    (reference(x_ref, ref_params) * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-12)
    for n, p in layer.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[n].grad, rtol=1e-9, atol=1e-12, msg=n)


def assert_float16_gate_matches(layer: nn.Module, x: torch.Tensor, autocast: bool) -> None:
    """Run the float32 gating ``layer`` (eval) on the float16 ``x`` in pure float16 (a float16 copy of the layer) or
    under float16 autocast, and require a finite float16 output whose gate (out / x) is within 1e-3 of float32's (in
    pure float16, the float16 parameters run in float32) or 0.03 (under autocast, which also rounds the float32
    weights of the convs it runs in float16)."""
    with torch.no_grad():
        if autocast:
            expected = layer(x.float())
            with torch.autocast('cpu', dtype=torch.float16):
                out = layer(x)
        else:
            layer = copy.deepcopy(layer).half()
            expected = copy.deepcopy(layer).float()(x.float())
            out = layer(x)
    assert out.dtype == torch.float16 and bool(torch.isfinite(out).all())
    gate_tol = 0.03 if autocast else 1e-3
    assert bool(((out.float() - expected).abs() <= gate_tol * x.float().abs() + 1e-2).all())


class RunsCodeWhenUnpickled:
    """A pickled object that runs code when unpickled: it creates the file ``marker``. Safe loading must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)



def attention_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """The attention layers of a model by call site (timm_gct.inspection.attention_modules, as a dict)."""
    from timm_gct.inspection import attention_modules
    return dict(attention_modules(model))


def attention_model(name: str, num_classes: int = 4, **kwargs) -> nn.Module:
    """timm.create_model(name) with every attention layer away from its init (no layer starts as a no-op)."""
    import timm
    model = timm.create_model(name, num_classes=num_classes, zero_init_last=False, **kwargs)
    for layer in attention_layers(model).values():
        randomize(layer, seed=1, scale=0.3)
    return model
