""" Second derivatives through the layers with a written-out backward (timm_gct/layers/_double_backward.py). """
import pytest
import torch
from torch.func import functional_call

from timm_gct.layers import GatedChannelTransform, NormalizationAttention, StyleRecalibration
from tests.helpers import randomize

FUSED = {
    'gct_l2': lambda: GatedChannelTransform(4, dtype=torch.float64),
    'gct_l1': lambda: GatedChannelTransform(4, mode='l1', dtype=torch.float64),
    'gct_l1_after_relu': lambda: GatedChannelTransform(4, mode='l1', after_relu=True, dtype=torch.float64),
    'nam': lambda: NormalizationAttention(4, dtype=torch.float64),
    'srm': lambda: StyleRecalibration(4, dtype=torch.float64),
}


def _setup(name):
    layer = randomize(FUSED[name](), seed=4).train()
    # NAM's channel weights |gamma| / sum |gamma| are detached by design (official: weight.data), so finite
    # differences in gamma see a dependence that no gradient has; gamma stays fixed here.
    names = [n for n, _ in layer.named_parameters() if not (name == 'nam' and n == 'bn.weight')]
    params = tuple(layer.get_parameter(n).detach().clone().requires_grad_() for n in names)
    x = torch.randn(3, 4, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    if name == 'gct_l1_after_relu':
        x = x.abs()  # that mode sums x, assuming a ReLU in front

    def fn(x, *params):
        return functional_call(layer, dict(zip(names, params)), (x,))

    return fn, x.requires_grad_(), params


@pytest.mark.parametrize('name', list(FUSED))
def test_eager_training_takes_the_written_out_backward(name):
    fn, x, params = _setup(name)
    node, seen = fn(x, *params).grad_fn, set()
    stack = [node]
    while stack:  # the Function may sit a few nodes below the output (SRM's gate follows its pooling)
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node.name().endswith('FunctionBackward') or node.name() == '_StylePoolBackward':
            return
        stack.extend(n for n, _ in node.next_functions)
    pytest.fail(f'{name}: no hand-written autograd.Function in the graph')


@pytest.mark.parametrize('name', list(FUSED))
def test_second_derivatives_pass_gradgradcheck(name):
    """Against finite differences of the first derivatives, for the input and every parameter."""
    fn, x, params = _setup(name)
    assert torch.autograd.gradgradcheck(fn, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('name', list(FUSED))
def test_input_gradient_penalty_of_the_layer_output_itself(name):
    """The case once_differentiable got silently wrong: the layer's output is what is differentiated, so the incoming
    gradient needs no grad and the input gradient came back without a graph."""
    fn, x, params = _setup(name)

    def penalty(x, *params):
        grad, = torch.autograd.grad(fn(x, *params).sum(), x, create_graph=True)
        return grad.square().sum()

    out = penalty(x, *params)
    assert out.requires_grad
    assert torch.autograd.gradcheck(penalty, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-4)
