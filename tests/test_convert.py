""" timm_gct.convert: official checkpoints, written here in each official layout and container, load into our models;
FcaNet's release loads through the fca_resnet*.official_in1k tags (checkpoint_filter_fn in timm's own loader) and
keeps its provenance when re-published with `timm-gct convert` / `push`.

Each reference network is written from the official code (FcaNet and ECA-Net blocks on torchvision's ResNet, as
cfzd/FcaNet model/fcanet.py does and as BangguWu/ECANet models/eca_resnet.py mirrors; the GCT ResNet from
tests/models/test_gct_official.py), randomised, saved as the official training scripts save it, converted, loaded
strictly into timm.create_model(name) and compared on the logits in float64.
"""
import argparse
import hashlib
import json
from functools import lru_cache

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.models.resnet import ResNet as TorchvisionResNet

from timm_gct.cli import main
from timm_gct.convert import SUPPORTED, convert_checkpoint, convert_state_dict
from tests.helpers import RunsCodeWhenUnpickled, randomize
from tests.layers.test_eca import _reference as eca_reference
from tests.layers.test_fca import C2WH, TOP16_U, TOP16_V, _official_filter
from tests.layers.test_fca import _reference as fca_reference
from tests.models.test_gct_official import random_official_gct_resnet50

ECA18_KERNELS = {64: 3, 128: 5, 256: 7, 512: 7}  # eca_resnet18_k3577, keyed by planes
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@lru_cache(maxsize=None)
def _top16_filter(channels, size):
    scale = size // 7
    return _official_filter(channels, size, [u * scale for u in TOP16_U], [v * scale for v in TOP16_V])


class OfficialFcaLayer(nn.Module):
    """layer.py MultiSpectralAttentionLayer: ``dct_layer.weight`` buffer, ``fc`` = Linear, ReLU, Linear, Sigmoid."""

    def __init__(self, channels, size):
        super().__init__()
        self.dct_layer = nn.Module()
        self.dct_layer.register_buffer('weight', _top16_filter(channels, size).clone())
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // 16, bias=False), nn.ReLU(inplace=True),
            nn.Linear(channels // 16, channels, bias=False), nn.Sigmoid())

    def forward(self, x):
        return fca_reference(x, self.dct_layer.weight, self.fc[0].weight, self.fc[2].weight)


class OfficialEcaLayer(nn.Module):
    """eca_module.py eca_layer: one Conv1d(1, 1, k, padding (k - 1) // 2, no bias)."""

    def __init__(self, kernel_size):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)

    def forward(self, x):
        return eca_reference(x, self.conv.weight)


class _OfficialBasicBlock(nn.Module):
    """FcaBasicBlock / ECABasicBlock: conv-bn-relu, conv-bn, attention, add, relu; built by torchvision's ResNet."""
    expansion = 1
    attn_name = ''

    def __init__(self, inplanes, planes, stride=1, downsample=None, *args, **kwargs):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        setattr(self, self.attn_name, self.make_attn(planes))
        self.downsample = downsample

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = getattr(self, self.attn_name)(self.bn2(self.conv2(out)))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class FcaBasicBlock(_OfficialBasicBlock):
    attn_name = 'att'

    def make_attn(self, planes):
        return OfficialFcaLayer(planes, C2WH[planes])


class EcaBasicBlock(_OfficialBasicBlock):
    attn_name = 'eca'

    def make_attn(self, planes):
        return OfficialEcaLayer(ECA18_KERNELS[planes])


def _official_resnet(block, seed, layers=(2, 2, 2, 2)):
    net = TorchvisionResNet(block, list(layers)).double()
    return randomize(net, seed=seed, scale=0.2).eval()  # randomize keeps the DCT buffers


def _ddp_container(state_dict, acc_key):
    """What the official main.py files save: DataParallel keys, the optimizer state and the best accuracy."""
    params = [nn.Parameter(torch.zeros(2))]
    return {
        'epoch': 100, 'arch': 'resnet', 'state_dict': {f'module.{k}': v for k, v in state_dict.items()},
        acc_key: torch.tensor(77.2), 'optimizer': torch.optim.SGD(params, lr=0.1, momentum=0.9).state_dict(),
    }


@pytest.fixture(scope='module')
def fca_net():
    return _official_resnet(FcaBasicBlock, seed=1)


@pytest.fixture(scope='module')
def eca_net():
    return _official_resnet(EcaBasicBlock, seed=2)


@pytest.fixture(scope='module')
def gct_net():
    return random_official_gct_resnet50()


def _load_and_compare(name, state_dict, reference):
    model = timm.create_model(name).double().eval()
    model.load_state_dict(state_dict, strict=True)
    with torch.no_grad():
        expected = reference(X)
        assert expected.std() > 1e-3
        torch.testing.assert_close(model(X), expected, rtol=1e-10, atol=1e-10)


def test_fcanet_checkpoint(fca_net, tmp_path):
    path = tmp_path / 'fca18.pth'
    torch.save(fca_net.state_dict(), path)  # the FcaNet release: a plain state dict
    name, state_dict = convert_checkpoint(path)
    assert name == 'fca_resnet18'
    assert state_dict['layer1.0.se.dct_layer.weight'].shape == (64, 56, 56)
    _load_and_compare(name, state_dict, fca_net)


def test_eca_checkpoint(eca_net, tmp_path):
    path = tmp_path / 'eca_resnet18_k3577.pth.tar'
    torch.save(_ddp_container(eca_net.state_dict(), 'best_prec1'), path)
    name, state_dict = convert_checkpoint(path, 'eca_resnet18')
    assert name == 'eca_resnet18'
    _load_and_compare(name, state_dict, eca_net)


def test_gct_checkpoint(gct_net, tmp_path):
    path = tmp_path / 'gct_resnet50.pth.tar'
    torch.save(_ddp_container(gct_net.state_dict(), 'best_acc1'), path)
    name, state_dict = convert_checkpoint(str(path))
    assert name == 'gct_resnet50_official'
    assert state_dict['conv1.gct.beta'].shape == (3,) and state_dict['layer1.0.downsample.1.running_var'].ndim == 1
    _load_and_compare(name, state_dict, gct_net)


@pytest.mark.parametrize('depth', [18, 34, 50, 101, 152])
def test_depth_from_block_counts(depth):
    """Official ECA keys at every depth (from the model's own keys, renamed; meta tensors) give the right model."""
    ours = timm.create_model(f'eca_resnet{depth}', device='meta').state_dict()
    official = {k.replace('.se.', '.eca.'): v for k, v in ours.items()}
    name, state_dict = convert_state_dict(official)
    assert name == f'eca_resnet{depth}' and list(state_dict) == list(ours)


@pytest.mark.parametrize('wrap', [
    lambda sd: sd,
    lambda sd: {'state_dict': sd},
    lambda sd: {'model': sd, 'epoch': 3},
    lambda sd: {f'module.{k}': v for k, v in sd.items()},
    lambda sd: {'state_dict': {f'module.{k}': v for k, v in sd.items()}, 'best_prec1': 70.9},
])
def test_containers_and_module_prefix_are_unwrapped(eca_net, tmp_path, wrap):
    path = tmp_path / 'ckpt.pth'
    torch.save(wrap(eca_net.state_dict()), path)
    name, state_dict = convert_checkpoint(path)
    expected = {k.replace('.eca.', '.se.'): v for k, v in eca_net.state_dict().items()}
    assert name == 'eca_resnet18' and state_dict.keys() == expected.keys()
    assert all(torch.equal(state_dict[k], v) for k, v in expected.items())


def test_missing_num_batches_tracked_is_filled(eca_net):
    official = {k: v for k, v in eca_net.state_dict().items() if not k.endswith('num_batches_tracked')}
    _, state_dict = convert_state_dict(official)
    assert state_dict['bn1.num_batches_tracked'] == 0
    timm.create_model('eca_resnet18').load_state_dict(state_dict, strict=True)


def test_model_name_mismatch(eca_net):
    with pytest.raises(ValueError, match=r"model_name='eca_resnet50' does not match the checkpoint, whose keys are "
                                         r"the official ECA-Net layout of 'eca_resnet18'"):
        convert_state_dict(eca_net.state_dict(), 'eca_resnet50')


def test_unknown_layout_names_the_supported_ones():
    plain = timm.create_model('resnet18', device='meta').state_dict()
    with pytest.raises(ValueError, match=r'The checkpoint keys \(bn1\.bias, bn1\.num_batches_tracked, '
                                         r'bn1\.running_mean and \d+ more \(\d+ in all\)\) match no supported layout; '
                                         r'supported: FcaNet: fca\{34,50,101,152\}\.pth'):
        convert_state_dict(plain)
    assert set(SUPPORTED) == {'fca', 'eca', 'gct'}
    assert 'gct_resnet50_official' in SUPPORTED['gct'].describe()


def test_unmappable_key_is_named(gct_net):
    extra = {'stem.conv1.2.weight': torch.zeros(1), 'layer5.0.conv1.1.weight': torch.zeros(1)}
    official = dict(gct_net.state_dict(), **extra)
    with pytest.raises(ValueError, match=r'Checkpoint keys with no counterpart in gct_resnet50_official: '
                                         r'stem\.conv1\.2\.weight, layer5\.0\.conv1\.1\.weight \(2 in all\)'):
        convert_state_dict(official)


def test_unmappable_key_of_a_renaming_layout_is_named_as_in_the_checkpoint(eca_net):
    official = dict(eca_net.state_dict(), **{'layer1.0.eca.bias': torch.zeros(1)})
    with pytest.raises(ValueError, match=r'no counterpart in eca_resnet18: layer1\.0\.eca\.bias \(1 in all\)'):
        convert_state_dict(official)


def test_missing_keys_are_named(gct_net):
    official = {k: v for k, v in gct_net.state_dict().items() if not k.startswith('layer3.1.conv2.')}
    with pytest.raises(ValueError, match=r'gct_resnet50_official keys missing from the checkpoint: '
                                         r'layer3\.1\.conv2\.weight, layer3\.1\.conv2\.gct\.alpha'):
        convert_state_dict(official)


def test_eca_kernel_size_mismatch(eca_net):
    """An ECA-ResNet-18 trained with --ksize 3357 does not fit eca_resnet18's released k3577."""
    official = eca_net.state_dict()
    for k in official:
        if k.startswith('layer2.') and k.endswith('.eca.conv.weight'):
            official[k] = torch.zeros(1, 1, 3)
    with pytest.raises(ValueError, match=r'shapes that differ from eca_resnet18: layer2\.0\.eca\.conv\.weight '
                                         r'\(1, 1, 3\) \(expected \(1, 1, 5\)\), layer2\.1\.eca\.conv\.weight'):
        convert_state_dict(official)


def test_fcanet_dct_size_mismatch(fca_net):
    official = dict(fca_net.state_dict(), **{'layer1.0.att.dct_layer.weight': _top16_filter(64, 7)})
    with pytest.raises(ValueError, match=r'layer1\.0\.att\.dct_layer\.weight \(64, 7, 7\) '
                                         r'\(expected \(64, 56, 56\)\) \(1 in all\)'):
        convert_state_dict(official)


def test_fcanet_filter_that_is_not_the_dct_is_refused(fca_net):
    """The README's learnt / random-filter ablation checkpoints hold other values under the same key."""
    official = dict(fca_net.state_dict(), **{'layer3.1.att.dct_layer.weight': torch.rand(256, 14, 14)})
    with pytest.raises(ValueError, match=r"DCT filters that are not the fixed 'top16' DCT filter: "
                                         r'layer3\.1\.att\.dct_layer\.weight'):
        convert_state_dict(official)


def test_block_counts_of_no_resnet_depth(eca_net):
    official = {k: v for k, v in eca_net.state_dict().items() if not k.startswith('layer4.1.')}
    with pytest.raises(ValueError, match=r'BasicBlock blocks per stage \(2, 2, 2, 1\), which is no ResNet depth'):
        convert_state_dict(official)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / 'list.pth'
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match=r"path='.*list\.pth' holds no state dict"):
        convert_checkpoint(path)


def test_pickled_objects_are_refused_not_executed(eca_net, tmp_path):
    path = tmp_path / 'args.pth'
    torch.save({'state_dict': eca_net.state_dict(), 'args': argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(ValueError, match=r'cannot be loaded with weights_only=True.*: it holds argparse\.Namespace'):
        convert_checkpoint(path)


def test_code_in_a_checkpoint_never_runs(tmp_path):
    evil = {'layer1.0.conv1.weight': torch.zeros(1), 'x': RunsCodeWhenUnpickled(tmp_path / 'ran')}
    torch.save(evil, tmp_path / 'evil.pth')
    with pytest.raises(ValueError, match='cannot be loaded with weights_only=True'):
        convert_checkpoint(tmp_path / 'evil.pth')
    assert not (tmp_path / 'ran').exists()
    with pytest.raises(ValueError, match=r"path='.*nothing\.pth' is not a file"):
        convert_checkpoint(tmp_path / 'nothing.pth')


def test_cli_convert_writes_a_local_dir_model(eca_net, tmp_path, capsys):
    path = tmp_path / 'eca_resnet18_k3577.pth.tar'
    torch.save(_ddp_container(eca_net.state_dict(), 'best_prec1'), path)
    out = tmp_path / 'converted'
    assert main(['convert', str(path), '--save-dir', str(out), '--repo-id', 'me/eca_resnet18.official_in1k']) == 0
    assert '-> eca_resnet18' in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert json.loads((out / 'config.json').read_text())['architecture'] == 'eca_resnet18'
    card = (out / 'README.md').read_text()
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert f'from `eca_resnet18_k3577.pth.tar` (sha256 {sha}), a checkpoint in the official ECA-Net layout' in card
    assert "timm.create_model('hf-hub:me/eca_resnet18.official_in1k', pretrained=True)" in card
    assert 'license: mit' in card  # the official repository's
    model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(X.float()), eca_net(X).float(), rtol=1e-4, atol=1e-4)


def test_cli_convert_errors_are_one_line(tmp_path, capsys):
    torch.save({'layer1.0.conv1.weight': torch.zeros(1)}, tmp_path / 'other.pth')
    assert main(['convert', str(tmp_path / 'other.pth'), '--save-dir', str(tmp_path / 'x')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('timm-gct convert: error:') and err.count('\n') == 1 and not (tmp_path / 'x').exists()


# -- FcaNet's release as the tags fca_resnet{34,50,101,152}.official_in1k ------------------------------------------

@pytest.fixture(scope='module')
def fca34_release(tmp_path_factory):
    """An official FcaNet-34 saved as the release is (a plain float32 state dict, fca34.pth) and the same network
    in float64 holding those float32 values."""
    net = _official_resnet(FcaBasicBlock, seed=3, layers=(3, 4, 6, 3)).float()
    path = tmp_path_factory.mktemp('release') / 'fca34.pth'
    torch.save(net.state_dict(), path)
    return net.double(), path


def _official_features(net, x, conv1_weight=None):
    """The official network's stage-4 map (torchvision ResNet.forward up to layer4), optionally with another stem
    conv weight."""
    x = F.conv2d(x, net.conv1.weight if conv1_weight is None else conv1_weight, stride=2, padding=3)
    x = net.maxpool(net.relu(net.bn1(x)))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def _load_tag(name='fca_resnet34.official_in1k', **kwargs):
    return timm.create_model(name, pretrained=True, **kwargs).double().eval()


def test_official_tag_reproduces_the_official_network(fca34_release):
    net, path = fca34_release
    model = _load_tag(pretrained_cfg_overlay=dict(file=str(path)))
    with torch.no_grad():
        expected = net(X)
        assert expected.std() > 1e-3
        torch.testing.assert_close(model(X), expected, rtol=1e-10, atol=1e-10)


def test_default_tag_downloads_the_release_through_timms_cache(fca34_release, tmp_path, monkeypatch):
    """pretrained=True without a tag: the release URL through timm's loader, served from torch.hub's cache."""
    _, path = fca34_release
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    (tmp_path / 'hub' / 'checkpoints').mkdir(parents=True)
    (tmp_path / 'hub' / 'checkpoints' / 'fca34.pth').symlink_to(path)  # the URL's file name
    model = timm.create_model('fca_resnet34', pretrained=True)
    assert model.pretrained_cfg['tag'] == 'official_in1k'
    own = model.state_dict()
    assert all(torch.equal(own[k.replace('.att.', '.se.')], v) for k, v in torch.load(path).items())


@pytest.mark.parametrize('kwargs', [dict(num_classes=100, in_chans=1), dict(num_classes=0), dict(features_only=True)])
def test_official_tag_adapts_like_timms_tags(fca34_release, kwargs):
    net, path = fca34_release
    model = _load_tag(pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    with torch.no_grad():
        if 'features_only' in kwargs:
            features = model(X)
            assert len(features) == 5
            torch.testing.assert_close(features[-1], _official_features(net, X), rtol=1e-10, atol=1e-10)
        elif kwargs['num_classes'] == 0:  # the embedding: no classifier in the model, the file's is dropped
            torch.testing.assert_close(model(X), _official_features(net, X).mean((2, 3)), rtol=1e-10, atol=1e-10)
        else:
            # For one input channel timm sums the file's (float32) RGB stem filters.
            stem = net.conv1.weight.float().sum(dim=1, keepdim=True).double()
            assert model.fc.out_features == 100
            torch.testing.assert_close(
                model.forward_features(X[:, :1]), _official_features(net, X[:, :1], stem), rtol=1e-10, atol=1e-10)


def test_official_tag_mismatch_names_the_keys(fca34_release, fca_net):
    official = {k: v.float() if v.is_floating_point() else v for k, v in fca34_release[0].state_dict().items()}

    def load(state_dict, **kwargs):
        timm.create_model(
            'fca_resnet34.official_in1k', pretrained=True, pretrained_cfg_overlay=dict(state_dict=state_dict), **kwargs)

    with pytest.raises(ValueError, match=r'fca_resnet34 keys missing from the checkpoint: '
                                         r'layer2\.1\.se\.fc\.0\.weight, layer2\.1\.se\.fc\.2\.weight \(2 in all\)'):
        load({k: v for k, v in official.items() if not k.startswith('layer2.1.att.fc.')})
    with pytest.raises(ValueError, match=r'shapes that differ from fca_resnet34: layer1\.0\.att\.fc\.0\.weight '
                                         r'\(4, 64\) \(expected \(8, 64\)\)'):
        load(official, attn_kwargs={'reduction': 8})  # checked against the model as built
    with pytest.raises(ValueError, match=r"model_name='fca_resnet34' does not match the checkpoint, whose keys are "
                                         r"the official FcaNet layout of 'fca_resnet18'"):
        load(fca_net.state_dict())
    with pytest.raises(ValueError, match=r"DCT filters that are not the fixed 'top16' DCT filter: "
                                         r'layer4\.2\.att\.dct_layer\.weight \(1 in all\)'):
        load({**official, 'layer4.2.att.dct_layer.weight': torch.rand(512, 7, 7)})


def test_republishing_the_release_keeps_its_provenance(fca34_release, tmp_path, monkeypatch, capsys):
    """convert --repo-id, and push --model with the release's tag, compare the weights with the release (timm's
    loader, here from its cache): the same tensors keep the release's provenance, changed ones do not."""
    _, path = fca34_release
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    (tmp_path / 'torch' / 'hub' / 'checkpoints').mkdir(parents=True)
    (tmp_path / 'torch' / 'hub' / 'checkpoints' / 'fca34.pth').symlink_to(path)
    tag = 'fca_resnet34.official_in1k'
    converted = tmp_path / 'converted'
    assert main(['convert', str(path), '--save-dir', str(converted), '--repo-id', f'me/{tag}']) == 0
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    pushed = tmp_path / 'pushed'
    assert main(['push', str(converted / 'model.safetensors'), '--model', tag, '--repo-id', f'me/{tag}',
                 '--save-dir', str(pushed)]) == 0
    assert 'note:' not in capsys.readouterr().err
    for folder, how in ((converted, f'converted with `timm-gct convert` from `fca34.pth` (sha256 {sha})'),
                        (pushed, 'published with `timm-gct push` from `model.safetensors`')):
        cfg = json.loads((folder / 'config.json').read_text())['pretrained_cfg']
        assert cfg['license'] == 'mit' and cfg['origin_url'] == 'https://github.com/cfzd/FcaNet'
        assert cfg['notes'] == list(timm.get_pretrained_cfg(tag).notes) and cfg['tag'] == 'official_in1k'
        card = (folder / 'README.md').read_text()
        assert f'These files were {how}; every tensor equals the release' in card and 'license: mit' in card
        assert '| `fca_resnet34.official_in1k` | 75.07 | 75.02 |' in card
    # This package's own layout passes the tag's filter unchanged.
    reloaded = timm.create_model(f'local-dir:{pushed}', pretrained=True).state_dict()
    assert all(torch.equal(reloaded[k.replace('.att.', '.se.')], v) for k, v in torch.load(path).items())

    changed = load_file(converted / 'model.safetensors')
    changed['fc.bias'] += 1
    save_file(changed, tmp_path / 'ft.safetensors')
    assert main(['push', str(tmp_path / 'ft.safetensors'), '--model', tag, '--repo-id', 'me/ft',
                 '--save-dir', str(tmp_path / 'ft')]) == 0
    assert f'note: the weights differ from the release of {tag}: fc.bias (1 in all)' in capsys.readouterr().err
    card = (tmp_path / 'ft' / 'README.md').read_text()
    assert 'published by the uploader' in card and 'every tensor equals the release' not in card
    assert 'origin_url' not in json.loads((tmp_path / 'ft' / 'config.json').read_text())['pretrained_cfg']
