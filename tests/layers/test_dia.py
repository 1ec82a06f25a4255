""" DIA (DenseImplicitAttention shared by a DIAStage) against the official DIANet math (gbup-group/DIANet,
models/cifar/dia_resnet.py: LSTMCell with small_cell, and the Attention stage loop). """
import copy
import io

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock
from torch import nn

from timm_gct.layers.dia import DenseImplicitAttention, DIAStage
from tests.helpers import randomize


def _cell(m, h, c, attn):
    """Official LSTMCell (one layer), written out: gates = W_ih(m) + W_hh(h); h' = o * sigmoid(c')."""
    def small(x, seq):
        return F.linear(F.relu(F.linear(x, seq[0].weight, seq[0].bias)), seq[2].weight, seq[2].bias)
    i, f, g, o = (small(m, attn.w_ih) + small(h, attn.w_hh)).chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.sigmoid(c), c


def _reference_stage(x, stage, attn):
    """The official Attention.forward over timm BasicBlocks: each block yields (out, residual) and the stage gates
    out with the shared cell's h before adding the residual; h = c = 0 at the first block."""
    h = c = None
    for block in stage.children():
        out = block.bn2(block.conv2(block.act1(block.bn1(block.conv1(x)))))
        residual = block.downsample(x) if block.downsample is not None else x
        m = out.mean((2, 3))
        if h is None:
            h, c = torch.zeros_like(m), torch.zeros_like(m)
        h, c = _cell(m, h, c, attn)
        x = F.relu(out * h[:, :, None, None] + residual)
    return x


def _randomize(module, seed=5):
    return randomize(module, seed=seed, scale=0.5)


def _stage(channels=8, num_blocks=3, in_channels=4):
    """A DIA stage of timm BasicBlocks in float64, the first with a projection shortcut."""
    dd = dict(dtype=torch.float64)
    downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, bias=False, **dd), nn.BatchNorm2d(channels, **dd))
    blocks = [BasicBlock(in_channels, channels, downsample=downsample, **dd)]
    blocks += [BasicBlock(channels, channels, **dd) for _ in range(num_blocks - 1)]
    return _randomize(DIAStage(nn.Sequential(*blocks), channels, **dd))


@pytest.mark.parametrize('training', [True, False])
def test_stage_matches_official_math_in_float64(training):
    stage = _stage().train(training)
    attn = stage.get_submodule('0').se
    x = torch.randn(3, 4, 6, 5, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    reference = copy.deepcopy(stage)
    expected = _reference_stage(x_ref, reference, reference.get_submodule('0').se)
    out = stage(x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    ref_params = dict(reference.named_parameters())
    for name, p in stage.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, msg=name)
    assert attn.h is None and attn.c is None  # nothing left behind after the stage


def test_one_cell_is_shared_by_the_blocks_of_a_stage():
    stage = _stage()
    cells = {id(block.se) for block in stage.children()}
    assert len(cells) == 1
    assert stage.get_submodule('0').se.recurrent


def test_gradcheck_stage_and_cell():
    stage = _stage(channels=4, num_blocks=2).train()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(stage, (x,), eps=1e-6, atol=1e-5)
    cell = _randomize(DenseImplicitAttention(8, dtype=torch.float64))
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(cell, (x,), eps=1e-6, atol=1e-5)


def test_no_state_leaks_between_calls_or_models():
    a, b = _stage().eval(), _stage().eval()
    _randomize(b, seed=9)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    ya, yb = a(x), b(x)
    assert torch.equal(b(x), yb) and torch.equal(a(x), ya)  # interleaved calls, same results
    assert a(torch.randn(5, 4, 5, 5, dtype=torch.float64)).shape[0] == 5  # a new batch size: no stale state
    assert torch.equal(a(x), ya)


def test_standalone_cell_keeps_no_state():
    cell = _randomize(DenseImplicitAttention(8, dtype=torch.float64))
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    first = cell(x)
    assert cell.h is None and torch.equal(cell(x), first)


def test_state_dict_holds_the_shared_cell_once_and_round_trips():
    stage = _stage()
    state = stage.state_dict()
    assert any(k.startswith('0.se.') for k in state)
    assert not any(k.startswith(('1.se.', '2.se.')) for k in state)
    fresh = _randomize(_stage(), seed=11)
    fresh.load_state_dict(state)  # strict: the aliases are restored from block 0's keys
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(fresh.eval()(x), stage.eval()(x), rtol=0, atol=0)
    buffer = io.BytesIO(safetensors.torch.save(state))  # safetensors refuses tensors that share memory
    assert buffer.getbuffer().nbytes > 0


def test_model_state_dict_loads_strictly_and_saves_as_safetensors(tmp_path):
    model = timm.create_model('dia_resnet18_cifar')
    state = model.state_dict()
    assert sorted(k for k in state if '.se.' in k) == sorted(
        k for k in state if '.0.se.' in k)
    safetensors.torch.save_file(state, tmp_path / 'model.safetensors')
    other = timm.create_model('dia_resnet18_cifar')
    other.load_state_dict(safetensors.torch.load_file(tmp_path / 'model.safetensors'))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(other.eval()(x), model.eval()(x), rtol=0, atol=0)


def test_gradient_checkpointing_recomputes_whole_stages():
    model = timm.create_model('dia_resnet18_cifar', dtype=torch.float64).train()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    torch.manual_seed(0)
    model(x).sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    torch.manual_seed(0)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], msg=n)


def test_dia_models_place_one_stage_wrapper_per_stage():
    model = timm.create_model('dia_resnet50', device='meta')
    for i in range(1, 5):
        stage = getattr(model, f'layer{i}')
        assert isinstance(stage, DIAStage)
        assert all(block.se is stage.get_submodule('0').se for block in stage.children())
    model = timm.create_model('dia_resnet18', attn_stages=(3, 4), device='meta')
    assert isinstance(model.layer2, torch.nn.Sequential) and isinstance(model.layer3, DIAStage)


def test_parameter_count_matches_the_official_formula():
    """2 * (1.25 C^2 + 4.25 C) per stage (two small cells: C -> C/4 -> 4C)."""
    added = sum(p.numel() for p in timm.create_model('dia_resnet50', device='meta').parameters()) - sum(
        p.numel() for p in timm.create_model('resnet50', device='meta').parameters())
    assert added == sum(int(2 * (1.25 * c * c + 4.25 * c)) for c in (256, 512, 1024, 2048)) == 13_959_040


def test_channels_below_four_is_a_value_error():
    with pytest.raises(ValueError, match=r'DenseImplicitAttention: channels=3 is not allowed.*channels >= 4'):
        DenseImplicitAttention(3)


def test_stage_rejects_blocks_that_already_have_attention():
    model = timm.create_model('gct_resnet18', device='meta')
    with pytest.raises(ValueError, match=r'DIAStage: block 0 already has an attention layer \(GatedChannelTransform\)'):
        DIAStage(model.layer1, 64, device='meta')
