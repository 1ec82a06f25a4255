""" Loading weights: safetensors files through timm's own paths, the error for a checkpoint of another model, and no
unpickling with weights_only=False anywhere in the package.
"""
import ast
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import load_checkpoint

import timm_gct
from tests.helpers import attention_model
from timm_gct.models.attn_resnet import MECHANISMS

_PACKAGE = Path(timm_gct.__file__).parent


def _saved(name: str, path: Path) -> torch.nn.Module:
    torch.manual_seed(3)
    model = attention_model(name, num_classes=10).eval()  # 10: the CIFAR cfg's, so timm keeps the loaded head
    save_file(model.state_dict(), str(path))
    return model


@pytest.mark.parametrize('mechanism', list(MECHANISMS))
def test_weights_load_from_safetensors(mechanism, tmp_path):
    name = f'{mechanism}_resnet18_cifar'
    path = tmp_path / 'model.safetensors'
    saved = _saved(name, path)
    x = torch.randn(2, 3, 32, 32)
    # the two ways timm loads a file: a pretrained_cfg 'file', and timm.models.load_checkpoint
    created = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    loaded = timm.create_model(name)
    load_checkpoint(loaded, str(path))
    with torch.no_grad():
        expected = saved(x)
        torch.testing.assert_close(created.eval()(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(loaded.eval()(x), expected, rtol=0, atol=0)


def test_checkpoint_of_another_model_lists_the_mismatched_keys(tmp_path):
    path = tmp_path / 'gct.safetensors'
    _saved('gct_resnet18_cifar', path)
    with pytest.raises(RuntimeError) as info:
        timm.create_model(
            'nam_resnet18_cifar', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    message = str(info.value)
    assert 'Missing key(s)' in message and 'Unexpected key(s)' in message
    assert '"layer1.0.se.bn.weight"' in message and '"layer1.0.se.alpha"' in message


def _python_files():
    return sorted(_PACKAGE.rglob('*.py'))


def test_the_package_never_unpickles_with_weights_only_false():
    """Every torch.load call in timm_gct passes weights_only=True literally, and nothing imports pickle."""
    torch_loads = 0
    for path in _python_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, 'module', None) or '']
                assert not any(n.split('.')[0] in ('pickle', 'dill', 'cloudpickle') for n in names), path
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == 'load' \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == 'torch':
                torch_loads += 1
                keywords = {k.arg: k.value for k in node.keywords}
                flag = keywords.get('weights_only')
                assert isinstance(flag, ast.Constant) and flag.value is True, f'{path}:{node.lineno}'
    assert torch_loads >= 1  # the scan must see the one torch.load the package has (_safe_load.py)
