""" The registration table: names, cfgs, placement, CIFAR stems, kwargs, identity-at-init at model level and the
pretrained tags that start from timm's ResNet weights. """
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from timm_gct.layers import GatedChannelTransform, GlobalContextBlock, NormalizationAttention
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from timm_gct.models import (
    MECHANISMS, RESNET_WEIGHTS, model_mechanism, model_release, resnet_weights_source, resnet_weights_tag)

DEPTHS = (18, 34, 50, 101, 152)
CIFAR_DEPTHS = (18, 34, 50)


def _expected_names(prefix, depths=DEPTHS, cifar_depths=CIFAR_DEPTHS):
    return sorted([f'{prefix}_resnet{d}' for d in depths] + [f'{prefix}_resnet{d}_cifar' for d in cifar_depths])


def test_every_family_is_registered_with_timm():
    assert sorted(timm.list_models('gct_*', module='attn_resnet')) == _expected_names('gct')
    assert sorted(timm.list_models('nam_*')) == _expected_names('nam')
    assert sorted(timm.list_models('gc_resnet*')) == _expected_names('gc')
    assert sorted(timm.list_models('resnet*_cifar')) == ['resnet18_cifar', 'resnet34_cifar', 'resnet50_cifar']
    assert 'attn_resnet' in timm.list_modules()
    assert len(MECHANISMS) == 13  # SE / RCAN channel attention is timm's own 'se' (seresnet*), not registered here
    assert len(timm.list_models(module='attn_resnet')) == 3 + 8 * 12 + 6  # EncNet skips ResNet-101/152
    for m in MECHANISMS.values():
        expected = _expected_names(m.name, m.depths, m.cifar_depths)
        assert sorted(timm.list_models(f'{m.name}_resnet*', module='attn_resnet')) == expected


def test_no_registered_name_shadows_a_timm_model():
    # timm's register_model silently replaces (with a warning) a model of the same name; none of ours may do that.
    code = ('import timm; before = set(timm.list_models()); import timm_gct; '
            "print(sorted(before & set(timm.list_models(module='attn_resnet'))))")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == '[]'


def test_models_have_cfgs_and_only_identity_and_released_models_have_weights():
    names = timm.list_models(module='attn_resnet')
    assert sorted(timm.list_models(module='attn_resnet', name_matches_cfg=True)) == sorted(names)
    pretrained = timm.list_models(module='attn_resnet', pretrained=True, include_tags=False)
    identity = [m for m in MECHANISMS.values() if m.identity_init]
    assert sorted(m.name for m in identity) == ['cc', 'gc', 'gct']
    assert [m.name for m in MECHANISMS.values() if m.release] == ['fca']
    released = [f'fca_resnet{d}' for d in (34, 50, 101, 152)]
    assert sorted(pretrained) == sorted([f'{m.name}_resnet{d}' for m in identity for d in m.depths] + released)
    assert timm.get_pretrained_cfg('nam_resnet50').hf_hub_id is None
    assert timm.get_pretrained_cfg('gct_resnet18_cifar').hf_hub_id is None


@pytest.mark.parametrize('mechanism', ['gct', 'gc', 'cc'])
@pytest.mark.parametrize('depth', [18, 34, 50, 101, 152])
def test_resnet_weights_tags_say_what_they_hold(mechanism, depth):
    """Each tag points at timm's own ResNet weights, and its name and cfg say the attention is untrained."""
    title = MECHANISMS[mechanism].title
    tags = [n.split('.', 1)[1] for n in timm.list_pretrained(f'{mechanism}_resnet{depth}.*')]
    assert tags == [resnet_weights_tag(t) for t in RESNET_WEIGHTS[depth]]
    assert timm.get_pretrained_cfg(f'{mechanism}_resnet{depth}').tag == tags[0]  # timm's default tag for the depth
    for tag in tags:
        source = resnet_weights_source(f'{mechanism}_resnet{depth}.{tag}')
        assert tag.startswith('resnet_') and tag.endswith('_attn_identity')
        cfg = timm.get_pretrained_cfg(f'{mechanism}_resnet{depth}.{tag}')
        src = timm.get_pretrained_cfg(source)
        assert cfg.hf_hub_id == f'timm/{source}' == src.hf_hub_id
        assert f'not {title}-trained' in cfg.description and 'identity' in cfg.description
        assert source in cfg.description and cfg.notes
        for key in ('input_size', 'test_input_size', 'interpolation', 'crop_pct', 'mean', 'std', 'license'):
            assert getattr(cfg, key) == getattr(src, key), key


def test_fcanet_release_tags():
    """The official FcaNet release: URL, license, data config and published top-1, the default tag of its depths."""
    assert timm.list_pretrained('fca_*') == [f'fca_resnet{d}.official_in1k' for d in (34, 50, 101, 152)]
    # cfzd/FcaNet README at aa5fb63, "Reported" and "Evaluation Results"
    top1 = {34: ('75.07', '75.02'), 50: ('78.52', '78.57'), 101: ('79.64', '79.63'), 152: ('80.08', '80.02')}
    for depth, (reported, evaluated) in top1.items():
        cfg = timm.get_pretrained_cfg(f'fca_resnet{depth}')
        assert cfg.tag == 'official_in1k' and cfg.hf_hub_id is None
        assert cfg.url == f'https://github.com/cfzd/FcaNet/releases/download/v1.0/fca{depth}.pth'
        assert cfg.license == 'mit' and cfg.paper_ids == 'arXiv:2012.11879'
        assert cfg.origin_url == 'https://github.com/cfzd/FcaNet'
        # The official main.py evaluates a 224 centre crop of the image resized to 256, with ImageNet mean / std.
        assert (cfg.input_size, cfg.crop_pct, cfg.interpolation, cfg.mean, cfg.std) == (
            (3, 224, 224), 0.875, 'bilinear', IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
        assert f'{reported} % reported, {evaluated} % in their evaluation of the released file' in cfg.notes[0]
        assert model_release(f'fca_resnet{depth}') == model_release(f'fca_resnet{depth}.official_in1k')
        assert model_release(f'fca_resnet{depth}')[1] == depth
    assert not timm.get_pretrained_cfg('fca_resnet18').has_weights and model_release('fca_resnet18') is None
    assert model_release('fca_resnet50.other_in1k') is None and model_release('fca_resnet50_cifar') is None
    assert model_release('eca_resnet50') is None


def _resnet_weights_file(tmp_path, plain: str) -> str:
    base = timm.create_model(plain)
    path = str(tmp_path / 'model.safetensors')
    save_file(_randomized_state_dict(base), path)
    return path


@pytest.mark.parametrize('name', [
    'gct_resnet18.resnet_tv_in1k_attn_identity', 'gc_resnet50.resnet_a1_in1k_attn_identity',
    'cc_resnet18.resnet_a1_in1k_attn_identity'])
def test_resnet_weights_tag_reproduces_the_resnet(tmp_path, name):
    """pretrained=True through timm's loader (a local file standing in for the Hub file): the ResNet's logits."""
    plain = resnet_weights_source(name).split('.')[0]
    file = _resnet_weights_file(tmp_path, plain)
    base = timm.create_model(plain, pretrained=True, pretrained_cfg_overlay=dict(file=file)).eval()
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=file)).eval()
    assert model.pretrained_cfg['tag'] == name.split('.')[1]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = base(x)
        assert expected.abs().max() > 0
        assert torch.equal(model(x), expected)


def test_resnet_weights_load_with_a_new_head(tmp_path):
    file = _resnet_weights_file(tmp_path, 'resnet18')
    for num_classes in (10, 0):
        model = timm.create_model(
            'gct_resnet18', pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=dict(file=file))
        assert model.num_classes == num_classes
        assert torch.equal(model.layer1[0].conv1.weight, load_file(file)['layer1.0.conv1.weight'])


def test_resnet_weights_mismatch_names_the_keys(tmp_path):
    state = _randomized_state_dict(timm.create_model('resnet18'))
    del state['layer2.0.bn1.running_mean']
    state['extra.weight'] = torch.zeros(1)
    path = str(tmp_path / 'bad.safetensors')
    save_file(state, path)
    with pytest.raises(ValueError, match=r"gct_resnet18: .*only attention-layer keys may be missing.*"
                                         r"layer2\.0\.bn1\.running_mean.*extra\.weight"):
        timm.create_model('gct_resnet18', pretrained=True, pretrained_cfg_overlay=dict(file=path))


def test_resnet_weights_of_another_depth_name_the_keys(tmp_path):
    file = _resnet_weights_file(tmp_path, 'resnet34')
    with pytest.raises(ValueError, match=r'gct_resnet18: .*unexpected keys: \[.layer1\.2\.bn1\.bias'):
        timm.create_model('gct_resnet18', pretrained=True, pretrained_cfg_overlay=dict(file=file))


def test_resnet_weights_without_bn_counters_load(tmp_path):
    """Files from before PyTorch 0.4.1 have no num_batches_tracked; BatchNorm (and so the filter) accepts that."""
    state = {k: v for k, v in _randomized_state_dict(timm.create_model('resnet18')).items()
             if not k.endswith('num_batches_tracked')}
    save_file(state, str(tmp_path / 'old.safetensors'))
    model = timm.create_model(
        'gct_resnet18', pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'old.safetensors')))
    assert torch.equal(model.layer1[0].bn1.weight, state['layer1.0.bn1.weight'])


def test_gc_resnet_weights_stay_identity_without_zero_init_last(tmp_path):
    """zero_init_last=False keeps timm's conv init in GC's last conv; loading ResNet weights restores GC's own."""
    file = _resnet_weights_file(tmp_path, 'resnet18')
    base = timm.create_model('resnet18', pretrained=True, pretrained_cfg_overlay=dict(file=file)).eval()
    model = timm.create_model(
        'gc_resnet18', pretrained=True, zero_init_last=False, pretrained_cfg_overlay=dict(file=file)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), base(x))


def test_model_mechanism():
    assert model_mechanism('gct_resnet50') is MECHANISMS['gct']
    assert model_mechanism('gc_resnet18_cifar') is MECHANISMS['gc']
    assert model_mechanism('resnet18_cifar') is None
    assert model_mechanism('gct_resnet50_official') is MECHANISMS['gct']
    with pytest.raises(KeyError):
        model_mechanism('seresnet50')


@pytest.mark.parametrize('name,layer_cls,stages', [
    ('gct_resnet18', GatedChannelTransform, (1, 2, 3, 4)),
    ('nam_resnet50', NormalizationAttention, (1, 2, 3, 4)),
    ('gc_resnet50', GlobalContextBlock, (2, 3, 4)),  # official placement: c3-c5
    ('gc_resnet18_cifar', GlobalContextBlock, (2, 3, 4)),
])
def test_official_placement(name, layer_cls, stages):
    model = timm.create_model(name, device='meta')
    for i in range(1, 5):
        for block in getattr(model, f'layer{i}'):
            if i in stages:
                assert isinstance(block.se, layer_cls)
            else:
                assert block.se is None
    if stages != (1, 2, 3, 4):
        assert not any(k.startswith('layer1.') and '.se.' in k for k in model.state_dict())


def test_layer_width_matches_block_output():
    model = timm.create_model('gct_resnet50', device='meta')
    assert [model.get_submodule(f'layer{i}.0.se').alpha.shape[1] for i in range(1, 5)] == [256, 512, 1024, 2048]


def test_attn_stages_kwarg_selects_stages():
    model = timm.create_model('gc_resnet18', attn_stages=(1, 2, 3, 4), device='meta')
    assert all(block.se is not None for i in range(1, 5) for block in getattr(model, f'layer{i}'))
    model = timm.create_model('gct_resnet18', attn_stages=[4], device='meta')
    has_attn = [block.se is not None for i in range(1, 5) for block in getattr(model, f'layer{i}')]
    assert has_attn == [False] * 6 + [True] * 2


@pytest.mark.parametrize('stages', [(0,), (5,), (1, 'x'), 3, (True,)])
def test_bad_attn_stages_is_a_value_error(stages):
    with pytest.raises(ValueError, match=r'gct_resnet18: attn_stages=.* expected a sequence of stage numbers from '
                                         r'\(1, 2, 3, 4\)'):
        timm.create_model('gct_resnet18', attn_stages=stages)


@pytest.mark.parametrize('name,kernels', [
    ('eca_resnet18', (3, 5, 7, 7)), ('eca_resnet34', (3, 3, 5, 7)), ('eca_resnet50', (3, 5, 5, 7)),
    ('eca_resnet101', (3, 3, 5, 7)), ('eca_resnet152', (3, 3, 5, 7)), ('eca_resnet50_cifar', (3, 5, 5, 7)),
])
def test_per_stage_layer_settings_reach_every_block(name, kernels):
    """The released ECA-Net kernel sizes per stage (eca_resnet18_k3577, eca_resnet50_k3557, ..._k3357)."""
    model = timm.create_model(name, device='meta')
    for i, k in enumerate(kernels, 1):
        assert {block.se.conv.kernel_size[0] for block in getattr(model, f'layer{i}')} == {k}
    # attn_kwargs override the per-stage settings
    model = timm.create_model(name, attn_kwargs=dict(kernel_size=9), device='meta')
    assert {b.se.conv.kernel_size[0] for i in range(1, 5) for b in getattr(model, f'layer{i}')} == {9}


def test_per_stage_layer_settings_need_distinct_stage_widths():
    with pytest.raises(ValueError, match=r'eca_resnet18: per-stage attention settings need a different width in '
                                         r'every stage; got stage widths \(64, 64, 128, 128\)'):
        timm.create_model('eca_resnet18', channels=(64, 64, 128, 128))


def test_attn_kwargs_reach_the_layer():
    model = timm.create_model('gc_resnet50', attn_kwargs={'rd_ratio': 1 / 4}, device='meta')
    assert model.layer2[0].se.channel_add_conv[0].out_channels == 512 // 4
    model = timm.create_model('gct_resnet18', attn_kwargs=dict(mode='l1'), device='meta')
    assert model.layer1[0].se.mode == 'l1'


def test_bad_attn_kwargs():
    with pytest.raises(ValueError, match=r"attn_kwargs=\['mode'\] is not allowed; expected a dict"):
        timm.create_model('gct_resnet18', attn_kwargs=['mode'])
    with pytest.raises(ValueError, match=r"GatedChannelTransform: mode='l0'"):
        timm.create_model('gct_resnet18', attn_kwargs=dict(mode='l0'))
    with pytest.raises(TypeError):
        timm.create_model('resnet18_cifar', attn_kwargs=dict(mode='l1'))  # a plain model has no attention


def test_unknown_kwarg_is_a_type_error():
    with pytest.raises(TypeError):
        timm.create_model('gct_resnet18', not_an_arg=1)


@pytest.mark.parametrize('name', ['resnet18_cifar', 'gct_resnet50_cifar', 'gc_resnet34_cifar'])
def test_cifar_stem_shapes_and_feature_info(name):
    model = timm.create_model(name).eval()
    assert model.pretrained_cfg['input_size'] == (3, 32, 32) and model.pretrained_cfg['pool_size'] == (4, 4)
    assert model.num_classes == 10
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert [f['reduction'] for f in model.feature_info] == [1, 1, 2, 4, 8]
    x = torch.randn(2, 3, 32, 32)
    assert model.forward_features(x).shape[-2:] == (4, 4)
    features = timm.create_model(name, features_only=True).eval()(x)
    assert [f.shape[-1] for f in features] == [32, 32, 16, 8, 4]
    assert model(x).shape == (2, 10)


def test_attn_blocks_last_keeps_only_the_last_block_of_each_stage():
    model = timm.create_model('gct_resnet50', attn_blocks='last', device='meta')
    for i, n in enumerate((3, 4, 6, 3), 1):
        assert [block.se is not None for block in getattr(model, f'layer{i}')] == [False] * (n - 1) + [True]
    with pytest.raises(ValueError, match=r"gct_resnet50: attn_blocks='first' is not allowed; expected one of 'all', "
                                         r"'last'"):
        timm.create_model('gct_resnet50', attn_blocks='first')


@pytest.mark.parametrize('name,avg_down', [('gct_resnet50', False), ('gct_resnet18', False), ('gct_resnet50', True)])
def test_layer4_stride_one_keeps_layer3_resolution(name, avg_down):
    model = timm.create_model(name, layer4_stride=1, avg_down=avg_down).eval()
    assert model.feature_info[-1]['reduction'] == 16
    x = torch.randn(1, 3, 64, 64)
    assert model.forward_features(x).shape[-2:] == (4, 4)
    features = timm.create_model(name, layer4_stride=1, avg_down=avg_down, features_only=True).eval()(x)
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4, 4]
    # only a stride changes (no dilation, as in the official GSoP-Net): same parameters
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in timm.create_model(name, avg_down=avg_down).parameters())


def test_bad_layer4_stride():
    with pytest.raises(ValueError, match=r'gct_resnet18: layer4_stride=3 is not allowed; expected one of 2, 1'):
        timm.create_model('gct_resnet18', layer4_stride=3)
    with pytest.raises(ValueError, match=r'layer4_stride=1 is only supported for a layer4 that downsamples with a '
                                         r'strided conv'):
        timm.create_model('gct_resnet18', layer4_stride=1, output_stride=16)


def test_cifar_stem_rejects_stem_options():
    with pytest.raises(ValueError, match=r"resnet18_cifar: stem_type='deep' is not allowed; CIFAR models"):
        timm.create_model('resnet18_cifar', stem_type='deep')


def test_cifar_output_stride_keeps_feature_info_right():
    model = timm.create_model('gct_resnet18_cifar', output_stride=8, features_only=True).eval()
    assert model.feature_info.reduction() == [1, 1, 2, 2, 2]
    assert [f.shape[-1] for f in model(torch.randn(1, 3, 32, 32))] == [32, 32, 16, 16, 16]


def _randomized_state_dict(model):
    """Random values for every parameter and buffer, so no block's residual branch is trivially zero."""
    g = torch.Generator().manual_seed(4)
    state = {}
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            state[k] = v
        elif 'running_var' in k:
            state[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            state[k] = torch.randn(v.shape, generator=g) * (0.1 if v.ndim > 1 else 1.)
    return state


@pytest.mark.parametrize('name,plain', [
    ('gct_resnet50', 'resnet50'), ('gc_resnet50', 'resnet50'),
    ('gct_resnet18_cifar', 'resnet18_cifar'), ('gc_resnet18_cifar', 'resnet18_cifar'),
    ('cc_resnet50', 'resnet50'), ('cc_resnet18_cifar', 'resnet18_cifar'),
])
def test_identity_at_init_at_model_level(name, plain):
    """A GCT / GC / CC ResNet holding the plain ResNet's weights gives exactly the plain ResNet's logits."""
    base = timm.create_model(plain).eval()
    base.load_state_dict(_randomized_state_dict(base))
    model = timm.create_model(name).eval()
    result = model.load_state_dict(base.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all('.se.' in k for k in result.missing_keys)
    x = torch.randn(2, 3, *base.pretrained_cfg['input_size'][1:])
    with torch.no_grad():
        expected = base(x)
        assert expected.abs().max() > 0
        assert torch.equal(model(x), expected)


def test_nam_is_not_an_identity():
    base = timm.create_model('resnet18_cifar').eval()
    base.load_state_dict(_randomized_state_dict(base))
    model = timm.create_model('nam_resnet18_cifar').eval()
    model.load_state_dict(base.state_dict(), strict=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(model(x), base(x))
