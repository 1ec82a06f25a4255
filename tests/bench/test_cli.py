""" ``timm-gct bench`` from the command line: table, CSV, PNG and errors. """
import csv
import json

import pytest
import torch

from timm_gct.bench.report import CSV_COLUMNS
from timm_gct.cli import main


def test_bench_writes_table_csv_and_png(tmp_path, capsys):
    out = tmp_path / 'bench'
    rc = main(['bench', 'gct_resnet18_cifar', '--rounds', '2', '--warmup', '0', '--batch-size', '2',
               '--output', str(out)])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert 'torch ' in stdout
    assert 'cpu, batch 2 at 32x32, float32, TIMM_GCT_KERNELS=auto; medians over 2 interleaved rounds of 1 ' in stdout
    assert 'gct_resnet18_cifar  official code' in stdout
    with open(out / 'bench.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r['model'], r['impl']) for r in rows] == [
        ('resnet18_cifar', 'plain twin'), ('resnet18_cifar', 'control'), ('gct_resnet18_cifar', 'timm_gct'),
        ('gct_resnet18_cifar', 'official code')]
    assert float(rows[0]['train_ratio']) == 1.0 and float(rows[2]['train_peak_mib']) > 0
    assert (out / 'bench.png').stat().st_size > 10_000
    assert json.loads((out / 'machine.json').read_text())['setup'].startswith('cpu, batch 2')


def test_bench_errors_are_one_line(capsys):
    assert main(['bench', 'gct_resnet51']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith('timm-gct bench: error: models: ') and len(err) == 1


def test_bench_leaves_out_control_and_official_rows_when_asked(tmp_path):
    out = tmp_path / 'bench'
    assert main(['bench', 'gct_resnet18_cifar', '--no-control', '--no-official', '--no-memory', '--modes', 'infer',
                 '--rounds', '1', '--warmup', '0', '--batch-size', '2', '--output', str(out)]) == 0
    with open(out / 'bench.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert [(r['model'], r['impl']) for r in rows] == [
        ('resnet18_cifar', 'plain twin'), ('gct_resnet18_cifar', 'timm_gct')]


def test_bench_sizes_its_defaults_to_the_device():
    """CPU-sized defaults (batch 8, one timed iteration per round) say little on a GPU, where a step of batch 8 is a
    few milliseconds of launches: there the defaults are batch 128 and 5 iterations per round, unless given."""
    from timm_gct.bench import cli
    from timm_gct.bench.runner import device_defaults
    assert device_defaults(torch.device('cpu')) == {'batch_size': 8, 'iters': 1, 'warmup': 2}
    assert device_defaults(torch.device('cuda')) == {'batch_size': 128, 'iters': 5, 'warmup': 3}
    seen = {}

    def fake_bench(cfg, log):
        seen['cfg'] = cfg
        raise ValueError('stop here')

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, 'bench', fake_bench)
        mp.setattr(cli, 'resolve_device', lambda name: torch.device('cuda'))
        assert main(['bench', 'gct_resnet50', '--iters', '2', '--kernels', 'auto', 'torch', 'auto']) == 2
    cfg = seen['cfg']
    assert (cfg.batch_size, cfg.iters, cfg.warmup, cfg.kernels) == (128, 2, 3, ('auto', 'torch'))
