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

# All-zero channels: mode 'l2' is smooth there (eps under the root), the l1 modes are not (|s_c| in the channel
# normalisation has a kink at 0, where finite differences mean nothing), NAM and SRM are.
CASES = [(name, False) for name in FUSED] + [('gct_l2', True), ('nam', True), ('srm', True)]


def _setup(name, zero_channels=False):
    layer = randomize(FUSED[name](), seed=4).train()
    # NAM's channel weights |gamma| / sum |gamma| are detached by design (official: weight.data), so finite
    # differences in gamma see a dependence that no gradient has; gamma stays fixed here.
    names = [n for n, _ in layer.named_parameters() if not (name == 'nam' and n == 'bn.weight')]
    params = tuple(layer.get_parameter(n).detach().clone().requires_grad_() for n in names)
    x = torch.randn(3, 4, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    if name == 'gct_l1_after_relu':
        x = x.abs()  # that mode sums x, assuming a ReLU in front
    if zero_channels:  # as timm's zero_init_last makes the last BN's output, and as dead ReLU channels are
        x[:, 1] = 0.
        x[0, 2] = 0.

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


@pytest.mark.parametrize('name,zero_channels', CASES)
def test_second_derivatives_pass_gradgradcheck(name, zero_channels):
    """Against finite differences of the first derivatives, for the input and every parameter; all-zero channels
    too (the derivative of a norm is not smooth there)."""
    fn, x, params = _setup(name, zero_channels)
    assert torch.autograd.gradgradcheck(fn, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('name,zero_channels', CASES)
def test_input_gradient_penalty_of_the_layer_output_itself(name, zero_channels):
    """The case once_differentiable got silently wrong: the layer's output is what is differentiated, so the incoming
    gradient needs no grad and the input gradient came back without a graph."""
    fn, x, params = _setup(name, zero_channels)

    def penalty(x, *params):
        grad, = torch.autograd.grad(fn(x, *params).sum(), x, create_graph=True)
        return grad.square().sum()

    out = penalty(x, *params)
    assert out.requires_grad
    assert torch.autograd.gradcheck(penalty, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('layer_cls', [GatedChannelTransform, NormalizationAttention, StyleRecalibration])
def test_gradient_penalty_through_a_zero_init_timm_block_is_finite(layer_cls):
    """timm's zero_init_last zeroes the last BN's scale, so the attention layer sees all-zero channels at init."""
    from timm.models.resnet import BasicBlock
    block = BasicBlock(8, 8, attn_layer=layer_cls).double().train()
    block.zero_init_last()
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    grad, = torch.autograd.grad(block(x).square().sum(), x, create_graph=True)
    grad.square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
    assert torch.isfinite(x.grad).all()
