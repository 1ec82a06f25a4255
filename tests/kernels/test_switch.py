""" TIMM_GCT_KERNELS: the choice between the fused kernels and the PyTorch formula, and where PyTorch always runs. """
import importlib
import os
import subprocess
import sys
import types

import pytest
import torch
import torch.fx

from timm_gct import kernels
from timm_gct.kernels import switch
from tests.kernels.helpers import make_input, make_layer, run


def test_default_is_auto_and_set_kernels_checks_its_argument():
    assert kernels.get_kernels() == 'auto'
    with pytest.raises(ValueError, match="set_kernels: mode='cuda' is not allowed; expected one of auto, triton, "):
        kernels.set_kernels('cuda')
    assert kernels.get_kernels() == 'auto'


def test_environment_variable_is_read_at_import(monkeypatch):
    monkeypatch.setenv('TIMM_GCT_KERNELS', ' Torch')
    try:
        importlib.reload(switch)
        assert kernels.get_kernels() == 'torch'
    finally:
        monkeypatch.delenv('TIMM_GCT_KERNELS')
        importlib.reload(switch)
    assert kernels.get_kernels() == 'auto'


def test_a_bad_environment_variable_fails_the_import():
    env = dict(os.environ, TIMM_GCT_KERNELS='fused')
    out = subprocess.run([sys.executable, '-c', 'import timm_gct'], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "TIMM_GCT_KERNELS='fused' is not allowed; expected one of auto, triton, torch" in out.stderr


def test_auto_keeps_cpu_tensors_on_pytorch():
    layer = make_layer('gct').train()
    x = make_input('gct')
    assert run(layer, x, 'auto', torch.ones_like(x)).grad_fn == '_GatedChannelFunctionBackward'  # GCT's CPU path
    assert run(layer, x, 'torch', torch.ones_like(x)).grad_fn == '_GatedChannelFunctionBackward'
    assert run(layer, x, 'triton', torch.ones_like(x)).grad_fn == '_FusedGateBackward'


@pytest.mark.parametrize('make', [
    lambda x: x.double(),  # float64: the reference precision stays PyTorch's
    lambda x: x[:, :, ::2],  # strided: neither NCHW nor channels_last
    lambda x: x[0],  # not 4-D
    lambda x: x.to('meta'),  # no data (model statistics are counted on 'meta')
], ids=['float64', 'strided', '3d', 'meta'])
def test_inputs_the_kernels_do_not_take_run_pytorch(make, triton_kernels):
    x = make(make_input('eca'))
    assert not kernels.use_triton(x)


def test_scripting_tracing_and_compiling_run_pytorch(triton_kernels):
    layer = make_layer('srm').eval()
    x = make_input('srm')
    expected = run(layer, x, 'torch').out
    torch.testing.assert_close(torch.jit.script(layer)(x), expected)
    traced = torch.fx.symbolic_trace(layer)
    assert 'style' in traced.code  # the PyTorch formula was traced, not a fused call
    torch.testing.assert_close(traced(x), expected)
    compiled = torch.compile(layer, backend='eager', fullgraph=True)  # no graph break from the switch
    torch.testing.assert_close(compiled(x), expected)


def test_triton_mode_says_why_it_cannot_run(monkeypatch):
    monkeypatch.setattr(switch, '_status', None)
    monkeypatch.setitem(sys.modules, 'triton', types.SimpleNamespace(__version__='2.1.0'))
    available, reason = kernels.triton_status()
    assert not available and reason == 'triton 2.1.0 is installed; the kernels need triton >= 3.0'
    x = make_input('gct')
    with pytest.raises(RuntimeError, match=r"set_kernels\('triton'\): the Triton kernels cannot run: triton 2.1.0"):
        kernels.set_kernels('triton')
    assert kernels.get_kernels() == 'auto'  # a refused setting changes nothing
    monkeypatch.setattr(switch, '_mode', 'triton')
    with pytest.raises(RuntimeError, match='TIMM_GCT_KERNELS=triton: the Triton kernels cannot run: triton 2.1.0'):
        make_layer('gct')(x)
    monkeypatch.setattr(switch, '_mode', 'auto')  # auto falls back quietly
    assert make_layer('gct')(x).shape == x.shape


def test_triton_mode_on_cpu_tensors_needs_the_interpreter(monkeypatch, triton_kernels):
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    with pytest.raises(RuntimeError, match='run CPU tensors only in Triton\'s interpreter: set TRITON_INTERPRET=1'):
        make_layer('nam')(make_input('nam'))
