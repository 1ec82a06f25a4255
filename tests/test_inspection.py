""" timm-gct inspect: the statistics equal the model's own numbers, the gates and maps are what the layers compute,
the files are written, and a model without attention layers is a clear error. """
import argparse
import csv
import sys

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.helpers import attention_model
from timm_gct.cli import main
from timm_gct.inspection import NoAttentionError, attention_modules, effective_channel_gate, inspect_model
from timm_gct.layers import GatedChannelTransform


def _keeper(store, key, index):
    """A hook that keeps its ``index``-th argument (detached) under ``key`` on its first call and returns None."""
    def hook(*args):
        value = args[index]
        store.setdefault(key, (value[0] if isinstance(value, tuple) else value).detach().clone())
    return hook


def _rows(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def _gct_model():
    torch.manual_seed(0)
    return attention_model('gct_resnet18_cifar').eval()


def test_parameter_statistics_equal_the_model_parameters():
    model = _gct_model()
    rows = {(r['layer'], r['parameter']): r for r in inspect_model(model).param_rows}
    names = [name for name, _ in attention_modules(model)]
    assert len(rows) == 3 * len(names)
    for name in names:
        layer = model.get_submodule(name)
        for pname in ('alpha', 'gamma', 'beta'):
            values = getattr(layer, pname).detach().double().flatten()
            row = rows[(name, pname)]
            assert row['count'] == values.numel()
            assert row['mean'] == pytest.approx(values.mean().item(), rel=1e-6, abs=1e-9)
            assert row['std'] == pytest.approx(values.std().item(), rel=1e-6)
            assert row['min'] == pytest.approx(values.min().item())
            assert row['max'] == pytest.approx(values.max().item())
            assert row['median'] == pytest.approx(values.quantile(0.5).item(), rel=1e-6, abs=1e-9)
            assert row['positive_fraction'] == pytest.approx((values > 0).double().mean().item())
    assert [rows[(n, 'gamma')]['depth'] for n in names] == list(range(len(names)))


def test_nam_weights_are_normalised_per_layer():
    torch.manual_seed(0)
    model = attention_model('nam_resnet18_cifar')
    inspection = inspect_model(model)
    for name, params in inspection.param_values.items():
        gamma = model.get_submodule(name).bn.weight.detach().abs()
        torch.testing.assert_close(params['|gamma| / sum |gamma|'], gamma / gamma.sum())


def test_dianet_shared_cell_is_listed_once_per_stage_and_gated_per_block():
    torch.manual_seed(0)
    model = attention_model('dia_resnet18_cifar')
    inspection = inspect_model(model, torch.randn(2, 3, 32, 32))
    assert list(inspection.param_values) == ['layer1.0.se', 'layer2.0.se', 'layer3.0.se', 'layer4.0.se']
    assert len(inspection.gates) == 8  # two blocks per stage, each calling its stage's cell


def test_effective_gate_is_the_gct_gate_exactly():
    """For a channel gate y = g x, <y, x> / <x, x> recovers g; checked against GCT's formula written out here."""
    model = _gct_model()
    images = torch.randn(3, 3, 32, 32)
    seen = {}
    layer = model.layer2[0].se
    handle = layer.register_forward_pre_hook(_keeper(seen, 'x', 1))
    inspection = inspect_model(model, images)
    handle.remove()
    x = seen['x'].double()
    embedding = layer.alpha.double() * (x.square().sum(dim=(2, 3), keepdim=True) + layer.eps).sqrt()
    norm = layer.gamma.double() / (embedding.square().mean(dim=1, keepdim=True) + layer.eps).sqrt()
    gate = 1. + torch.tanh(embedding * norm + layer.beta.double().view(1, -1, 1, 1))
    torch.testing.assert_close(inspection.gates['layer2.0.se'].double(), gate.flatten(1), rtol=1e-5, atol=1e-6)
    row = next(r for r in inspection.gate_rows if r['layer'] == 'layer2.0.se')
    assert row['mean'] == pytest.approx(gate.mean().item(), rel=1e-5)


def test_effective_gate_of_an_all_zero_channel_is_one():
    x = torch.zeros(1, 2, 3, 3)
    x[0, 1] = 1.
    assert effective_channel_gate(x, 0.5 * x).tolist() == [[1.0, 0.5]]


@pytest.mark.parametrize('name', ['gc_resnet18_cifar', 'cc_resnet18_cifar'])
def test_attention_maps_are_distributions_over_positions(name):
    """GC's attention pooling and criss-cross attention's received weight each sum to 1 over the H x W map."""
    torch.manual_seed(0)
    inspection = inspect_model(attention_model(name), torch.randn(2, 3, 32, 32))
    assert inspection.maps
    for amap in inspection.maps.values():
        assert (amap >= 0).all()
        torch.testing.assert_close(amap.sum(dim=(1, 2)), torch.ones(2), rtol=1e-5, atol=1e-5)


def test_triplet_map_is_its_spatial_gate():
    torch.manual_seed(0)
    model = attention_model('triplet_resnet18_cifar')
    seen = {}
    layer = model.layer3[1].se
    layer.SpatialGate.register_forward_hook(_keeper(seen, 'gate', 2))
    inspection = inspect_model(model, torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(inspection.maps['layer3.1.se'], seen['gate'][:, 0])


def test_inspection_leaves_the_model_as_it_was():
    model = _gct_model().train()
    x = torch.randn(2, 3, 32, 32)
    before = model.eval()(x)
    model.train()
    inspect_model(model, torch.randn(2, 3, 32, 32))
    assert model.training
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    torch.testing.assert_close(model.eval()(x), before)


def test_a_model_without_attention_layers_is_a_clear_error(capsys):
    with pytest.raises(NoAttentionError, match='holds no timm_gct attention layer'):
        inspect_model(timm.create_model('resnet18_cifar'))
    assert main(['inspect', 'resnet18_cifar']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('timm-gct inspect: error: resnet18_cifar: ResNet holds no timm_gct attention layer')
    assert len(err.splitlines()) == 1


def _png_ok(path):
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_cli_writes_tables_and_pictures_from_a_train_py_checkpoint(tmp_path, capsys):
    """A checkpoint as train.py writes it; the CSV holds the checkpoint's numbers, not a fresh model's."""
    model = attention_model('triplet_resnet18_cifar', num_classes=10)
    with torch.no_grad():
        model.layer4[1].se.SpatialGate.spatial.conv.weight.fill_(0.25)
    path = tmp_path / 'model_best.pth.tar'
    torch.save({'state_dict': model.state_dict(), 'args': argparse.Namespace(model='triplet_resnet18_cifar')}, path)
    images = tmp_path / 'images' / 'class_a'
    images.mkdir(parents=True)
    for i in range(3):
        Image.fromarray((torch.rand(40, 48, 3) * 255).byte().numpy()).save(images / f'{i}.png')
    out = tmp_path / 'out'
    assert main(['inspect', 'triplet_resnet18_cifar', '--checkpoint', str(path), '--images', str(tmp_path / 'images'),
                 '--output', str(out)]) == 0
    assert '3 images from' in capsys.readouterr().out
    for name in ('parameters.png', 'gates.png', 'attention.png'):
        _png_ok(out / name)
    params = [r for r in _rows(out / 'parameters.csv')
              if r['layer'] == 'layer4.1.se' and r['parameter'] == 'SpatialGate.spatial.conv.weight']
    assert float(params[0]['mean']) == pytest.approx(0.25) and float(params[0]['std']) == pytest.approx(0.)
    gates = _rows(out / 'gates.csv')
    assert len(gates) == len(attention_modules(model)) and all(r['channels'] for r in gates)


def test_cli_reads_safetensors_and_uses_synthetic_images_by_default(tmp_path, capsys):
    model = _gct_model()
    save_file(model.state_dict(), str(tmp_path / 'w.safetensors'))
    out = tmp_path / 'out'
    assert main(['inspect', 'gct_resnet18_cifar', '--checkpoint', str(tmp_path / 'w.safetensors'),
                 '--num-images', '2', '--output', str(out)]) == 0
    assert '2 synthetic stripe images' in capsys.readouterr().out
    assert not (out / 'attention.png').exists()  # GCT has no spatial map
    gamma = model.layer1[0].se.gamma.detach().flatten()
    row = next(r for r in _rows(out / 'parameters.csv') if r['layer'] == 'layer1.0.se' and r['parameter'] == 'gamma')
    assert float(row['mean']) == pytest.approx(gamma.mean().item(), rel=1e-6, abs=1e-9)


def test_without_matplotlib_the_csvs_are_still_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib.figure', None)  # makes `from matplotlib.figure import` fail
    out = tmp_path / 'out'
    assert main(['inspect', 'gc_resnet18_cifar', '--num-images', '2', '--output', str(out)]) == 0
    assert 'matplotlib is not installed' in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ['gates.csv', 'parameters.csv']


@pytest.mark.parametrize('argv,message', [
    (['inspect', 'no_such_model'], 'no_such_model'),
    (['inspect', 'gct_resnet18_cifar', '--images', '/nonexistent/dir'], "images='/nonexistent/dir' is not a directory"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('timm-gct inspect: error:') and message in err and len(err.splitlines()) == 1


def test_every_layer_class_is_known_to_the_inspection():
    from timm_gct.inspection import ATTENTION_LAYERS
    import timm_gct.layers as layers
    public = {getattr(layers, n) for n in layers.__all__ if n[0].isupper()} - {layers.DIAStage}
    assert public == set(ATTENTION_LAYERS)
    assert GatedChannelTransform in ATTENTION_LAYERS
