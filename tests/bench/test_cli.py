""" ``timm-gct bench`` from the command line: table, CSV, PNG and errors. """
import csv
import json

from timm_gct.bench.report import CSV_COLUMNS
from timm_gct.cli import main


def test_bench_writes_table_csv_and_png(tmp_path, capsys):
    out = tmp_path / 'bench'
    rc = main(['bench', 'gct_resnet18_cifar', '--rounds', '2', '--warmup', '0', '--batch-size', '2',
               '--output', str(out)])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert 'torch ' in stdout and 'cpu, batch 2 at 32x32, float32; medians over 2 interleaved rounds' in stdout
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
