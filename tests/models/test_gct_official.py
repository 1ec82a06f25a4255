""" gct_resnet*_official against the official GCT PyTorch ResNet (z-x-yang/GCT, PyTorch/resnet.py), written out here.

``OfficialGctResNet`` below follows the official file's structure and key layout (``stem.conv1 = Sequential(GCT(3),
Conv2d)``, ``layerX.Y.conv{1,2,3} = Sequential(GCT, Conv2d)``, ``downsample = Sequential(GCT, Conv2d, BN)``, stride in
the first 1x1 conv); tests/test_convert.py uses it to write checkpoints in the official layout.
"""
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.optim._param_groups import param_groups_weight_decay
from torch import nn

from timm_gct.models.gct_official import GctConv2d
from tests.helpers import randomize
from tests.layers.test_gct import _reference as gct_reference
from tests.models.test_attn_resnet import _randomized_state_dict

NAMES = ['gct_resnet101_official', 'gct_resnet152_official', 'gct_resnet50_official']


class OfficialGCT(nn.Module):
    """GCT.py: parameters of shape (1, C, 1, 1), mode 'l2', epsilon 1e-5."""

    def __init__(self, channels):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x):
        return gct_reference(x, self.alpha, self.gamma, self.beta, 1e-5, 'l2', False)


def _gct_conv(cin, cout, kernel_size, stride=1, padding=0):
    return nn.Sequential(OfficialGCT(cin), nn.Conv2d(cin, cout, kernel_size, stride, padding, bias=False))


class OfficialBottleneck(nn.Module):
    """resnet.py Bottleneck with stride_in_1x1=True, dilation 1, one group, nn.BatchNorm2d."""

    def __init__(self, cin, width, cout, stride):
        super().__init__()
        self.downsample = None
        if cin != cout:
            self.downsample = nn.Sequential(
                OfficialGCT(cin), nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.conv1 = _gct_conv(cin, width, 1, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _gct_conv(width, width, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _gct_conv(width, cout, 1)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class OfficialStem(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = _gct_conv(3, 64, 7, 2, 3)
        self.bn1 = nn.BatchNorm2d(64)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.bn1(self.conv1(x))), kernel_size=3, stride=2, padding=1)


class OfficialGctResNet(nn.Module):
    """resnet.py ResNet: stem, four stages of Bottlenecks (first stride 1, then 2), average pool, Linear."""

    def __init__(self, blocks=(3, 4, 6, 3), num_classes=1000):
        super().__init__()
        self.stem = OfficialStem()
        cin = 64
        for stage, count in enumerate(blocks):
            width = 64 * 2 ** stage
            layers = []
            for i in range(count):
                layers.append(OfficialBottleneck(cin, width, width * 4, 2 if stage > 0 and i == 0 else 1))
                cin = width * 4
            setattr(self, f'layer{stage + 1}', nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for stage in range(1, 5):
            x = getattr(self, f'layer{stage}')(x)
        return self.fc(self.avgpool(x).flatten(1))


def random_official_gct_resnet50():
    """The official GCT-ResNet-50 in float64, eval mode, with random parameters and BN statistics."""
    return randomize(OfficialGctResNet().double(), seed=3, scale=0.2).eval()


def _copy_conv(src, dst):
    """Official Sequential(GCT, Conv2d) -> GctConv2d, module by module (independent of timm_gct.convert)."""
    dst.weight.copy_(src[1].weight)
    for name in ('alpha', 'gamma', 'beta'):
        getattr(dst.gct, name).copy_(getattr(src[0], name).reshape(getattr(dst.gct, name).shape))


def _copy_from_official(ref, model):
    with torch.no_grad():
        _copy_conv(ref.stem.conv1, model.conv1)
        model.bn1.load_state_dict(ref.stem.bn1.state_dict())
        for stage in range(1, 5):
            for src, dst in zip(getattr(ref, f'layer{stage}'), getattr(model, f'layer{stage}'), strict=True):
                for i in (1, 2, 3):
                    _copy_conv(getattr(src, f'conv{i}'), getattr(dst, f'conv{i}'))
                    getattr(dst, f'bn{i}').load_state_dict(getattr(src, f'bn{i}').state_dict())
                assert (src.downsample is None) == (dst.downsample is None)
                if src.downsample is not None:
                    _copy_conv(src.downsample[:2], dst.downsample[0])
                    dst.downsample[1].load_state_dict(src.downsample[2].state_dict())
        model.fc.load_state_dict(ref.fc.state_dict())


def test_registered_with_cfgs_and_no_weights():
    assert sorted(timm.list_models(module='gct_official')) == NAMES
    assert sorted(timm.list_models('*_official')) == NAMES
    assert timm.list_models(module='gct_official', pretrained=True) == []
    for name in NAMES:
        cfg = timm.get_pretrained_cfg(name)
        assert cfg.hf_hub_id is None and cfg.url == ''
        assert cfg.paper_ids == 'arXiv:1909.11519' and cfg.license == 'apache-2.0'
        assert (cfg.first_conv, cfg.classifier, cfg.input_size) == ('conv1', 'fc', (3, 224, 224))
    assert 'timm-gct convert' in timm.get_pretrained_cfg('gct_resnet50_official').notes[0]


def test_matches_the_official_network_in_float64():
    ref = random_official_gct_resnet50()
    model = randomize(timm.create_model('gct_resnet50_official').double(), seed=9).eval()  # nothing left at init
    _copy_from_official(ref, model)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = ref(x)
        assert expected.std() > 1e-3
        torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)


def test_a_gct_before_every_conv_and_timms_conv_keys():
    model = timm.create_model('gct_resnet50_official', device='meta')
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 16 * 3 + 4  # stem, three per bottleneck, four downsample convs
    assert all(type(c) is GctConv2d and c.gct.alpha.shape[1] == c.in_channels for c in convs)
    assert model.conv1.gct.alpha.shape[1] == 3  # on the RGB input
    plain = timm.create_model('resnet50', device='meta').state_dict()
    ours = model.state_dict()
    assert set(plain) <= set(ours)
    extra = {k for k in ours if k not in plain}
    conv_weights = [k for k in plain if k.endswith('.weight') and plain[k].ndim == 4]
    assert extra == {f'{w[:-len("weight")]}gct.{p}' for w in conv_weights for p in ('alpha', 'gamma', 'beta')}


def test_parameter_count_is_resnet50_plus_the_official_gct_count():
    def count(name):
        return sum(p.numel() for p in timm.create_model(name, device='meta').parameters())
    assert count('gct_resnet50_official') - count('resnet50') == 67_593  # 3 per input channel of every conv


def test_stride_is_in_the_first_1x1_conv():
    model = timm.create_model('gct_resnet50_official', device='meta')
    assert all(b.conv1.stride == b.conv2.stride == (1, 1) for b in model.layer1)
    for stage in (model.layer2, model.layer3, model.layer4):
        first = stage[0]
        assert (first.conv1.stride, first.conv2.stride, first.downsample[0].stride) == ((2, 2), (1, 1), (2, 2))
        assert all(b.conv1.stride == b.conv2.stride == (1, 1) for b in stage[1:])


def test_official_init():
    model = timm.create_model('gct_resnet50_official')
    for m in model.modules():
        if isinstance(m, GctConv2d):
            bound = math.sqrt(3. / (m.in_channels * m.kernel_size[0] * m.kernel_size[1]))  # kaiming_uniform_(a=1)
            assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.9 * bound
            assert torch.equal(m.gct.alpha, torch.ones_like(m.gct.alpha))
            assert not m.gct.gamma.any() and not m.gct.beta.any()
        elif isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)), 'the official code does not zero the last BN'
    assert not timm.create_model('gct_resnet50_official', zero_init_last=True).layer1[0].bn3.weight.any()


def test_identity_at_init_gives_resnet50_with_stride_in_1x1():
    """gct_resnet50_official holding a plain resnet50's weights is that resnet50 with its strides on conv1."""
    base = timm.create_model('resnet50').eval()
    base.load_state_dict(_randomized_state_dict(base))
    for stage in (base.layer2, base.layer3, base.layer4):
        stage[0].conv1.stride, stage[0].conv2.stride = (2, 2), (1, 1)
    model = timm.create_model('gct_resnet50_official').eval()
    result = model.load_state_dict(base.state_dict(), strict=False)
    assert not result.unexpected_keys and all('.gct.' in k for k in result.missing_keys)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = base(x)
        assert expected.abs().max() > 0
        assert torch.equal(model(x), expected)


def test_features_only():
    model = timm.create_model('gct_resnet50_official', features_only=True).eval()
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert model.feature_info.channels() == [64, 256, 512, 1024, 2048]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape[1:]) for o in out] == [(64, 32, 32), (256, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2)]


def test_output_stride_16_dilates_layer4():
    model = timm.create_model('gct_resnet50_official', output_stride=16, device='meta')
    assert model.layer4[0].conv1.stride == model.layer4[0].conv2.stride == (1, 1)
    assert model.layer4[1].conv2.dilation == (2, 2) and model.layer3[0].conv1.stride == (2, 2)


def test_beta_alone_is_left_out_of_weight_decay():
    """The official recipe decays every parameter except GCT's beta (PyTorch/main.py)."""
    model = timm.create_model('gct_resnet50_official', device='meta')
    no_decay, decay = param_groups_weight_decay(model, weight_decay=1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_gct = {names[id(p)].rsplit('.', 1)[1] for p in no_decay['params'] if '.gct.' in names[id(p)]}
    decay_gct = {names[id(p)].rsplit('.', 1)[1] for p in decay['params'] if '.gct.' in names[id(p)]}
    assert no_decay_gct == {'beta'} and decay_gct == {'alpha', 'gamma'}


@pytest.mark.parametrize('name', NAMES[:2])
def test_deeper_models_build(name):
    model = timm.create_model(name, device='meta')
    assert isinstance(model.layer3[-1].conv3, GctConv2d) and model.layer2[0].conv1.stride == (2, 2)
