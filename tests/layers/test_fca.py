""" MultiSpectralAttention against the official FcaNet layer (cfzd/FcaNet, model/layer.py), written out here. """
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from timm_gct.layers.fca import MultiSpectralAttention, _pool_to_dct_size, dct_filter, freq_indices
from tests.helpers import randomize

# The official 'top16' selection on the 7 x 7 grid (get_freq_indices: all_top_indices_x / _y, first 16).
TOP16_U = [0, 0, 6, 0, 0, 1, 1, 4, 5, 1, 3, 0, 0, 0, 3, 2]
TOP16_V = [0, 1, 0, 5, 2, 0, 2, 0, 0, 6, 0, 4, 6, 3, 5, 2]
# The official per-stage DCT sizes, keyed by the block's planes (model/fcanet.py: c2wh).
C2WH = {64: 56, 128: 28, 256: 14, 512: 7}


def _official_filter(channels, size, u_list, v_list):
    """MultiSpectralDCTLayer.get_dct_filter, element by element with math.cos, in float64."""
    def build(pos, freq, n):
        value = math.cos(math.pi * freq * (pos + 0.5) / n) / math.sqrt(n)
        return value if freq == 0 else value * math.sqrt(2)

    out = torch.zeros(channels, size, size, dtype=torch.float64)
    part = channels // len(u_list)
    for i, (u, v) in enumerate(zip(u_list, v_list)):
        for h in range(size):
            for w in range(size):
                out[i * part:(i + 1) * part, h, w] = build(h, u, size) * build(w, v, size)
    return out


def _dct2_ortho_fft(x):
    """Orthonormal 2-D DCT-II of the last two dims, computed with FFTs of the even extension (independent of cos)."""
    def dct1(t):
        n = t.shape[-1]
        spectrum = torch.fft.fft(torch.cat([t, t.flip(-1)], dim=-1))[..., :n]
        k = torch.arange(n, dtype=torch.float64)
        coef = 0.5 * (spectrum * torch.exp(-1j * math.pi * k / (2 * n))).real
        scale = torch.full((n,), math.sqrt(2. / n), dtype=torch.float64)
        scale[0] = math.sqrt(1. / n)
        return coef * scale

    return dct1(dct1(x).transpose(-1, -2)).transpose(-1, -2)


def _reference(x, filt, w1, w2):
    """MultiSpectralAttentionLayer.forward: pool if the size differs, weighted sum, fc, sigmoid, scale."""
    n, c, h, w = x.shape
    pooled = x
    if h != filt.shape[1] or w != filt.shape[2]:
        pooled = F.adaptive_avg_pool2d(x, (filt.shape[1], filt.shape[2]))
    y = torch.sum(pooled * filt, dim=[2, 3])
    s = torch.sigmoid(F.linear(F.relu(F.linear(y, w1)), w2))
    return x * s.view(n, c, 1, 1)


def _random_fca(channels, **kwargs):
    return randomize(MultiSpectralAttention(channels, dtype=torch.float64, **kwargs), seed=4, scale=0.5)


@pytest.mark.parametrize('size', [7, 14, 28, 56])
def test_top16_indices_match_the_official_table(size):
    scale = size // 7
    expected = [(u * scale, v * scale) for u, v in zip(TOP16_U, TOP16_V)]
    assert freq_indices('top16', size) == expected


def test_top16_indices_at_56_spelled_out():
    # 56 // 7 = 8: the official stage-1 (planes 64) frequencies.
    assert freq_indices('top16', 56)[:6] == [(0, 0), (0, 8), (48, 0), (0, 40), (0, 16), (8, 0)]


@pytest.mark.parametrize('size', [7, 10, 14])
def test_dct_filter_matches_the_official_construction(size):
    u = [f * (size // 7) for f in TOP16_U]
    v = [f * (size // 7) for f in TOP16_V]
    torch.testing.assert_close(dct_filter(32, size), _official_filter(32, size, u, v), rtol=0, atol=1e-15)


@pytest.mark.parametrize('size', [7, 14])
def test_dct_filter_is_the_orthonormal_dct2_basis(size):
    """Each filter picks coefficient (u, v) of the orthonormal 2-D DCT-II, computed here through FFTs."""
    filt = dct_filter(16, size)
    x = torch.randn(16, size, size, dtype=torch.float64)
    coefficients = _dct2_ortho_fft(x)
    for k, (u, v) in enumerate(freq_indices('top16', size)):
        torch.testing.assert_close((x[k] * filt[k]).sum(), coefficients[k, u, v], rtol=1e-12, atol=1e-12)
    # Orthonormal: distinct basis functions are orthogonal and each has unit norm.
    gram = torch.einsum('khw,jhw->kj', filt, filt)
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), rtol=0, atol=1e-12)


def test_buffer_is_persistent_and_named_like_the_official_layer():
    layer = MultiSpectralAttention(64, dct_size=14)
    assert set(layer.state_dict()) == {'dct_layer.weight', 'fc.0.weight', 'fc.2.weight'}
    assert layer.dct_layer.weight.shape == (64, 14, 14)
    assert layer.fc[0].weight.shape == (4, 64) and layer.fc[0].bias is None
    assert layer.fc[2].weight.shape == (64, 4) and layer.fc[2].bias is None
    assert list(layer.parameters()) == [layer.fc[0].weight, layer.fc[2].weight]  # the DCT filter is not learnt


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_buffer_honours_dtype_and_meta_device(dtype):
    layer = MultiSpectralAttention(32, dct_size=28, dtype=dtype)
    assert layer.dct_layer.weight.dtype == dtype
    torch.testing.assert_close(layer.dct_layer.weight, dct_filter(32, 28).to(dtype), rtol=0, atol=0)
    meta = MultiSpectralAttention(32, dct_size=28, device='meta', dtype=dtype)
    assert meta.dct_layer.weight.is_meta and meta.dct_layer.weight.dtype == dtype


def test_meta_construction_then_loading_or_reset_gives_the_real_layer():
    real = _random_fca(32, dct_size=14).float().eval()
    meta = MultiSpectralAttention(32, dct_size=14, device='meta')
    meta.load_state_dict(real.state_dict(), assign=True)
    x = torch.randn(2, 32, 14, 14)
    torch.testing.assert_close(meta.eval()(x), real(x), rtol=0, atol=0)
    # After to_empty() the buffer holds garbage; reset_parameters() recomputes it.
    empty = MultiSpectralAttention(32, dct_size=14, device='meta').to_empty(device='cpu')
    empty.dct_layer.reset_parameters()
    torch.testing.assert_close(empty.dct_layer.weight, real.dct_layer.weight, rtol=0, atol=0)


@pytest.mark.parametrize('dct_size,hw', [(7, (7, 7)), (14, (14, 14)), (7, (12, 9)), (14, (7, 7)), (56, (4, 4))])
def test_matches_official_math_in_float64(dct_size, hw):
    layer = _random_fca(32, dct_size=dct_size)
    x = torch.randn(3, 32, *hw, dtype=torch.float64)
    expected = _reference(x, _official_filter(32, dct_size, *zip(*freq_indices('top16', dct_size))),
                          layer.fc[0].weight, layer.fc[2].weight)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_gradients_match_official_math_in_float64():
    layer = _random_fca(32, dct_size=7)
    x = torch.randn(2, 32, 9, 8, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    w1, w2 = (p.detach().clone().requires_grad_() for p in (layer.fc[0].weight, layer.fc[2].weight))
    upstream = torch.randn(2, 32, 9, 8, dtype=torch.float64)
    (layer(x) * upstream).sum().backward()
    (_reference(x_ref, layer.dct_layer.weight, w1, w2) * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.fc[0].weight.grad, w1.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.fc[2].weight.grad, w2.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('hw', [(7, 7), (3, 5)])
def test_gradcheck(hw):
    layer = _random_fca(16, reduction=4)
    x = torch.randn(1, 16, *hw, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_pooling_is_skipped_when_the_size_matches():
    x = torch.randn(2, 16, 7, 7)
    assert _pool_to_dct_size(x, 7) is x  # as officially: no pooling, so no non-deterministic CUDA backward
    # and adaptive pooling to the same size would be the exact identity anyway
    assert torch.equal(F.adaptive_avg_pool2d(x, 7), x)
    torch.testing.assert_close(_pool_to_dct_size(torch.randn(2, 16, 9, 9), 7).shape, (2, 16, 7, 7))


@pytest.mark.parametrize('hw', [(1, 1), (3, 5), (7, 7), (32, 32), (56, 56), (112, 100)])
def test_any_input_size_is_sane(hw):
    layer = _random_fca(32, dct_size=56).float().eval()
    x = torch.randn(2, 32, *hw)
    out = layer(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_dc_component_is_sqrt_hw_times_the_mean():
    layer = MultiSpectralAttention(16, dct_size=14, dtype=torch.float64)
    x = torch.randn(2, 16, 14, 14, dtype=torch.float64)
    y = layer.dct_layer(x)
    torch.testing.assert_close(y[:, 0], 14 * x[:, 0].mean((1, 2)), rtol=1e-12, atol=1e-12)


def test_weighted_sum_accumulates_in_float32():
    layer = MultiSpectralAttention(16, dct_size=56, dtype=torch.float16)
    x = torch.randn(2, 16, 56, 56, dtype=torch.float16)
    assert layer.dct_layer(x).dtype == torch.float32
    expected = layer.double().dct_layer(x.double())
    torch.testing.assert_close(layer.half().dct_layer(x).double(), expected, rtol=1e-2, atol=2e-2)


def test_official_defaults():
    layer = MultiSpectralAttention(256)
    assert layer.dct_size == 7 and layer.reduction == 16
    assert layer.fc[0].out_features == 16
    assert layer.dct_layer.freq_sel_method == 'top16'


def test_released_checkpoint_layout_loads_after_renaming_att_to_se():
    """A state dict in the layout of the released fca50.pth (torchvision ResNet keys plus layerX.Y.att.*) loads
    strictly into timm's resnet50 with the official per-stage DCT sizes, after renaming '.att.' to '.se.'."""
    model = timm.create_model('resnet50', block_args=dict(attn_layer=MultiSpectralAttention))
    for stage, planes in enumerate((64, 128, 256, 512), start=1):
        for block in getattr(model, f'layer{stage}'):
            block.se = MultiSpectralAttention(planes * 4, dct_size=C2WH[planes])
    official = {k: v for k, v in timm.create_model('resnet50').state_dict().items()}
    g = torch.Generator().manual_seed(0)
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        channels, size = planes * 4, C2WH[planes]
        u, v = zip(*[(a * (size // 7), b * (size // 7)) for a, b in zip(TOP16_U, TOP16_V)])
        filt = _official_filter(channels, size, u, v).float()
        for i in range(blocks):
            prefix = f'layer{stage}.{i}.att.'
            official[prefix + 'dct_layer.weight'] = filt.clone()
            official[prefix + 'fc.0.weight'] = torch.randn(channels // 16, channels, generator=g)
            official[prefix + 'fc.2.weight'] = torch.randn(channels, channels // 16, generator=g)
    dct_before = model.layer1[0].se.dct_layer.weight.clone()
    model.load_state_dict({k.replace('.att.', '.se.'): v for k, v in official.items()}, strict=True)
    torch.testing.assert_close(model.layer1[0].se.dct_layer.weight, dct_before, rtol=0, atol=1e-7)
    assert model.layer4[2].se.fc[2].weight.shape == (2048, 128)


@pytest.mark.parametrize('kwargs,match', [
    (dict(dct_size=6), r'MultiSpectralAttention: dct_size=6 is not allowed; expected an int >= 7'),
    (dict(dct_size=0), r'dct_size=0 is not allowed'),
    (dict(dct_size=7.0), r'dct_size=7.0 is not allowed'),
    (dict(dct_size=True), r'dct_size=True is not allowed'),
    (dict(reduction=0), r'reduction=0 is not allowed; expected an int >= 1'),
    (dict(reduction=33), r'reduction=33 leaves 32 // 33 = 0 hidden channels'),
    (dict(freq_sel_method='low16'), r"freq_sel_method='low16' is not allowed; expected one of 'top1', 'top2'"),
    (dict(freq_sel_method='top3'), r"freq_sel_method='top3' is not allowed"),
])
def test_bad_arguments_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiSpectralAttention(32, **kwargs)


@pytest.mark.parametrize('channels', [8, 24, 100])
def test_channels_must_split_into_the_16_frequency_groups(channels):
    with pytest.raises(ValueError, match=rf"channels={channels} is not allowed with freq_sel_method='top16'; "
                                         r'expected a multiple of 16'):
        MultiSpectralAttention(channels)


def test_fewer_frequencies_allow_other_channel_counts():
    layer = MultiSpectralAttention(24, freq_sel_method='top8', reduction=8)
    assert layer(torch.randn(2, 24, 7, 7)).shape == (2, 24, 7, 7)
