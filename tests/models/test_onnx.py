""" ONNX export of every registered mechanism through timm's own exporter (timm.utils.onnx.onnx_export, what timm's
onnx_export.py script calls), run in onnxruntime: the same outputs as eager PyTorch, at the export batch size and at
another one (the batch axis is dynamic). Needs the test extra's onnx, onnxscript and onnxruntime.
"""
import pytest
import torch

from tests.helpers import attention_model
from timm_gct.models.attn_resnet import MECHANISMS

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')
from timm.utils.onnx import onnx_export  # noqa: E402  (needs onnx)


def _calibrated(model: torch.nn.Module) -> torch.nn.Module:
    """Running statistics from data, so that eval activations have a sane scale: with untouched statistics a
    network without zero_init_last grows its activations until float32 rounding alone moves logits by 1e-3."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # a plain average over the calibration batches
    with torch.no_grad():
        for _ in range(2):
            model.train()(torch.randn(8, 3, 32, 32))
    return model.eval()


def _export_and_compare(model: torch.nn.Module, size: int, use_dynamo: bool, path) -> None:
    onnx_export(model, str(path), example_input=torch.randn(2, 3, size, size), use_dynamo=use_dynamo, check=True)
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for batch in (2, 3):
        x = torch.randn(batch, 3, size, size)
        with torch.no_grad():
            expected = model(x)
        out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('mechanism', list(MECHANISMS))
@pytest.mark.parametrize('use_dynamo', [False, True], ids=['torchscript', 'dynamo'])
def test_onnx_export_matches_eager_in_onnxruntime(mechanism, use_dynamo, tmp_path):
    model = _calibrated(attention_model(f'{mechanism}_resnet18_cifar'))
    if mechanism == 'fca' and not use_dynamo:
        # The TorchScript-based exporter has no adaptive_avg_pool2d to a size that does not divide the input, and the
        # CIFAR FcaNet pools its 32 x 32 and 16 x 16 maps to the 7 x 7 DCT grid (as the official layer does).
        with pytest.raises(torch.onnx.errors.SymbolicValueError, match='adaptive_avg_pool2d'):
            onnx_export(model, str(tmp_path / 'model.onnx'), example_input=torch.randn(2, 3, 32, 32))
        return
    _export_and_compare(model, 32, use_dynamo, tmp_path / 'model.onnx')


def test_imagenet_fcanet_exports_with_the_torchscript_exporter(tmp_path):
    """At 224 x 224 every ImageNet FcaNet stage map equals its DCT size (56, 28, 14, 7): no pooling to export."""
    model = attention_model('fca_resnet18').eval()
    _export_and_compare(model, 224, False, tmp_path / 'model.onnx')
