""" Distributed training: a two-process DDP step (gloo on the CPU) equals one process accumulating the two
half-batches, and SyncBatchNorm conversion (train.py --sync-bn) keeps every layer working.
"""
import copy
from pathlib import Path
from typing import Dict

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from timm.layers import convert_sync_batchnorm
from torch.nn.parallel import DistributedDataParallel

from tests.helpers import attention_layers, attention_model
from timm_gct.models.attn_resnet import MECHANISMS

DDP_MODELS = ['gct_resnet18_cifar', 'nam_resnet18_cifar', 'gc_resnet18_cifar', 'dia_resnet18_cifar']
_WORLD = 2


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return attention_model(name).double()


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64), torch.randint(0, 4, (8,), generator=g)


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=_WORLD)
    try:
        x, y = _batch()
        half = x.shape[0] // _WORLD
        x, y = x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]
        for name in DDP_MODELS:
            model = _model(name)
            ddp = DistributedDataParallel(model)  # CPU: no device_ids
            optimizer = _optimizer(ddp)
            for _ in range(2):
                optimizer.zero_grad()
                F.cross_entropy(ddp(x), y).backward()
                optimizer.step()
            torch.save(dict(model.named_parameters()), Path(out_dir) / f'{name}-rank{rank}.pt')
    finally:
        dist.destroy_process_group()


def _accumulated_reference(name: str) -> Dict[str, torch.Tensor]:
    """One process: the two half-batches through the model one after the other, gradients accumulated (each half's
    loss / 2, as DDP averages), then the optimizer step; twice."""
    model = _model(name)
    optimizer = _optimizer(model)
    x, y = _batch()
    for _ in range(2):
        optimizer.zero_grad()
        for xs, ys in zip(x.chunk(_WORLD), y.chunk(_WORLD)):
            (F.cross_entropy(model(xs), ys) / _WORLD).backward()
        optimizer.step()
    return dict(model.named_parameters())


@pytest.fixture(scope='module')
def ddp_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp('ddp')
    mp.start_processes(_ddp_worker, args=(str(out_dir / 'rendezvous'), str(out_dir)), nprocs=_WORLD,
                       start_method='spawn')
    return out_dir


@pytest.mark.timeout(300)
@pytest.mark.parametrize('name', DDP_MODELS)
def test_two_process_ddp_step_equals_accumulated_half_batches(ddp_results, name):
    ranks = [torch.load(ddp_results / f'{name}-rank{r}.pt', weights_only=True) for r in range(_WORLD)]
    expected = _accumulated_reference(name)
    initial = dict(_model(name).named_parameters())
    assert ranks[0].keys() == ranks[1].keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(ranks[1][key], ranks[0][key], rtol=0, atol=0, msg=key)
        torch.testing.assert_close(ranks[0][key], expected[key], rtol=1e-10, atol=1e-12, msg=key)
    moved = [key for key in expected if '.se.' in key and not torch.equal(expected[key], initial[key])]
    assert moved, 'the attention parameters must take part in the step'


@pytest.mark.parametrize('mechanism', list(MECHANISMS))
def test_sync_batchnorm_conversion_keeps_every_layer_working(mechanism):
    """train.py --sync-bn converts every BatchNorm, our layers' included. Without a process group SyncBatchNorm
    computes plain BatchNorm, so the converted model must compute exactly what the original does, train and eval.
    (With a process group on the CPU, PyTorch's SyncBatchNorm refuses to run: it syncs only GPU tensors.)"""
    model = _model(f'{mechanism}_resnet18_cifar')
    synced = convert_sync_batchnorm(copy.deepcopy(model))
    layers = attention_layers(synced)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for layer in layers.values() for m in layer.modules())
    x, y = _batch()
    for training in (True, False):
        model.train(training), synced.train(training)
        out, out_synced = model(x), synced(x)
        torch.testing.assert_close(out_synced, out, rtol=1e-12, atol=1e-12)
    F.cross_entropy(synced.train()(x), y).backward()
    F.cross_entropy(model.train()(x), y).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for n, p in synced.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-10, atol=1e-12, msg=n)
