""" The benchmark runner: which rows it measures, what it reports, and its peak-memory measurement. """
import pytest
import torch

from timm_gct.bench.runner import (
    BASELINE, CONTROL, OFFICIAL, OURS, TIMM, BenchConfig, Entry, _cpu_peak_bytes, bench, entries_for)


def test_entries_add_official_references_and_each_twin_once_with_its_control():
    entries = entries_for(['gct_resnet18_cifar', 'eca_resnet18_cifar', 'seresnet18', 'resnet18'])
    assert [(e.name, e.impl, e.baseline) for e in entries] == [
        ('resnet18_cifar', BASELINE, 'resnet18_cifar'),
        ('resnet18_cifar', CONTROL, 'resnet18_cifar'),
        ('gct_resnet18_cifar', OURS, 'resnet18_cifar'),
        ('gct_resnet18_cifar', OFFICIAL, 'resnet18_cifar'),
        ('eca_resnet18_cifar', OURS, 'resnet18_cifar'),
        ('eca_resnet18_cifar', OFFICIAL, 'resnet18_cifar'),
        ('resnet18', BASELINE, 'resnet18'),
        ('resnet18', CONTROL, 'resnet18'),
        ('seresnet18', TIMM, 'resnet18'),
    ]
    assert entries[1].label == 'resnet18_cifar (control)' and entries[0].label == 'resnet18_cifar'
    assert [e.impl for e in entries_for(['gct_resnet18_cifar'], official=False)] == [BASELINE, CONTROL, OURS]
    assert [e.impl for e in entries_for(['gct_resnet18_cifar'], control=False)] == [BASELINE, OURS, OFFICIAL]
    # one row of ours per kernel setting, e.g. the fused kernels and the PyTorch path side by side
    side_by_side = entries_for(['gct_resnet18_cifar'], official=False, control=False, kernels=('auto', 'torch'))
    assert [(e.impl, e.kernels, e.label) for e in side_by_side[1:]] == [
        (OURS, 'auto', 'gct_resnet18_cifar'),
        ('timm_gct, kernels=torch', 'torch', 'gct_resnet18_cifar (timm_gct, kernels=torch)')]
    # the official GCT layout is ours too; its reference row runs the official GCT code at that layout
    assert entries_for(['gct_resnet50_official'], control=False)[1:] == [
        Entry('gct_resnet50_official', OURS, 'resnet50'), Entry('gct_resnet50_official', OFFICIAL, 'resnet50')]


@pytest.mark.parametrize('name,match', [
    ('gct_resnet50.resnet_a1_in1k_attn_identity', 'has a pretrained tag'),
    ('gct_resnet51', 'not a registered timm model'),
    ('vit_tiny_patch16_224', 'has no plain ResNet twin'),
])
def test_bad_model_names(name, match):
    with pytest.raises(ValueError, match=match):
        entries_for([name])


@pytest.mark.parametrize('kwargs,match', [
    (dict(models=()), 'models is empty'),
    (dict(rounds=0), 'rounds=0 is not allowed'),
    (dict(amp='fp8'), "amp='fp8' is not allowed"),
    (dict(modes=('infer', 'fit')), 'modes=.* is not allowed'),
    (dict(kernels=('auto', 'cuda')), 'kernels=.* is not allowed'),
])
def test_bad_config(kwargs, match):
    cfg = {'models': ('gct_resnet18_cifar',), **kwargs}
    with pytest.raises(ValueError, match=match):
        bench(BenchConfig(**cfg), log=lambda s: None)


def test_cpu_peak_bytes_sees_a_transient_allocation():
    def fn():
        a = torch.ones(1 << 22)  # 16 MiB, freed before the next one
        del a
        b = torch.ones(1 << 20)
        del b
    peak = _cpu_peak_bytes(fn)
    assert 16 * 2 ** 20 <= peak < 18 * 2 ** 20


def test_bench_measures_every_row_against_its_twin():
    cfg = BenchConfig(models=('gct_resnet18_cifar', 'soca_resnet18_cifar'), batch_size=2, rounds=3, warmup=0)
    logged = []
    results, notes = bench(cfg, log=logged.append)
    assert [(r.entry.name, r.entry.impl) for r in results] == [
        ('resnet18_cifar', BASELINE), ('resnet18_cifar', CONTROL), ('gct_resnet18_cifar', OURS),
        ('gct_resnet18_cifar', OFFICIAL), ('soca_resnet18_cifar', OURS)]
    # SoCA's official code has no grouped covariance, so its reference cannot be built for our default model
    assert len(notes) == 1 and notes[0].startswith('soca_resnet18_cifar: no official-code row') and notes[0] in logged
    for r in results:
        for mode in ('infer', 'train'):
            assert len(r.times[mode]) == len(r.ratios[mode]) == 3 and all(t > 0 for t in r.times[mode])
            low, high = r.ratio_spread(mode)
            assert low <= r.ratio(mode) <= high
        assert r.peak_bytes > 0 and r.baseline_peak_bytes == results[0].peak_bytes
    assert results[0].ratios['train'] == [1.0] * 3 and results[0].memory_ratio == 1.0
    # the control is the same network as the twin, timed separately: the same memory, its own times
    assert results[1].memory_ratio == 1.0 and results[1].times['train'] != results[0].times['train']
    # the GCT model holds one more feature map per block for the backward than the plain ResNet
    assert results[2].memory_ratio > 1.0
