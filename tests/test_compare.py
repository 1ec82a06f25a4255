""" `timm-gct compare`: tiny end-to-end runs through timm's data, optimizer and scheduler factories. """
import csv
import json
import math
import sys
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from timm_gct import compare as compare_module
from timm_gct.cli import main

TWO = 'resnet18_cifar,gct_resnet18_cifar'
TINY = ('--epochs', '1', '--synthetic-samples', '64', '32', '--batch-size', '32', '--no-progress')


def _run(capsys, *argv):
    code = main(['compare', *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _rows(path: Path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def test_tiny_run_writes_table_csv_json_and_plot(capsys, tmp_path):
    code, out, err = _run(capsys, '--models', TWO, *TINY, '--epochs', '2', '--output', str(tmp_path))
    assert code == 0, err
    assert 'synthetic' in out.splitlines()[0] and 'not a real dataset' in out

    rows = _rows(tmp_path / 'epochs.csv')
    assert [(r['model'], r['epoch']) for r in rows] == [
        ('resnet18_cifar', '1'), ('resnet18_cifar', '2'), ('gct_resnet18_cifar', '1'), ('gct_resnet18_cifar', '2')]
    assert {r['dataset'] for r in rows} == {'synthetic'}
    for r in rows:
        assert 0 <= float(r['top1']) <= float(r['top5']) <= 100 and float(r['train_img_s']) > 0

    summary = json.loads((tmp_path / 'results.json').read_text())
    assert summary['synthetic'] is True and 'synthetic' in summary['dataset']
    assert summary['finished_epochs'] == 2 and summary['interrupted'] is False
    assert summary['baseline'] == 'resnet18_cifar' and summary['input_size'] == [3, 32, 32]
    results = {r['model']: r for r in summary['results']}

    # the table shows what the files hold; params are the trained models' own counts
    table = out[out.index('Results on'):].splitlines()
    assert table[1].split()[:2] == ['model', 'params']
    lines = {line.split()[0]: line.split() for line in table[2:4]}
    for name, r in results.items():
        per_epoch = [float(e['top1']) for e in rows if e['model'] == name]
        assert r['best_top1'] == max(per_epoch)
        params = sum(p.numel() for p in timm.create_model(name, num_classes=10).parameters())
        assert r['params'] == params
        assert lines[name][1] == f'{params / 1e6:.2f}' and lines[name][5] == f'{r["best_top1"]:.2f}'
    assert lines['resnet18_cifar'][-1] == 'baseline'
    delta = results['gct_resnet18_cifar']['best_top1'] - results['resnet18_cifar']['best_top1']
    assert lines['gct_resnet18_cifar'][-1] == f'{delta:+.2f}'

    png = tmp_path / 'curves.png'
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 10_000
    assert 'curves.png' in out


def test_same_seed_same_run(capsys, tmp_path):
    for name in ('a', 'b'):
        assert _run(capsys, '--models', TWO, *TINY, '--output', str(tmp_path / name))[0] == 0
    keys = ('model', 'lr', 'train_loss', 'eval_loss', 'top1')
    a, b = ([{k: r[k] for k in keys} for r in _rows(tmp_path / n / 'epochs.csv')] for n in ('a', 'b'))
    assert a == b


def test_models_start_from_the_same_seed(tmp_path):
    cfg = compare_module.CompareConfig(
        models=('resnet18_cifar', 'gct_resnet18_cifar', 'gc_resnet18_cifar'), epochs=1, synthetic_samples=(32, 32),
        batch_size=32, output=str(tmp_path), progress=False)
    comparison = compare_module._Comparison(cfg, log=lambda _: None)
    baseline, gct, gc = (r.model.state_dict() for r in comparison.runs)
    # GCT draws no random numbers at init, so from the same seed its twin holds the baseline's weights exactly
    assert set(baseline) < set(gct)
    for key, value in baseline.items():
        assert torch.equal(value, gct[key]), key
    # GC's convs do draw at construction, before timm's ResNet re-initialises every conv, so its weights differ
    assert not torch.equal(baseline['conv1.weight'], gc['conv1.weight'])


def test_amp_and_channels_last(tmp_path):
    def comparison(name, **kwargs):
        cfg = compare_module.CompareConfig(
            models=('resnet18_cifar', 'gct_resnet18_cifar'), epochs=1, synthetic_samples=(64, 32), batch_size=32,
            output=str(tmp_path / name), progress=False, **kwargs)
        return compare_module._Comparison(cfg, log=lambda _: None)

    amp = comparison('amp', amp=True, channels_last=True)
    assert amp.amp_dtype == torch.bfloat16  # the CPU default (float16 with a scaler on CUDA, as train.py)
    for run in amp.runs:
        assert run.model.conv1.weight.is_contiguous(memory_format=torch.channels_last) and run.scaler is None
    fp32 = comparison('fp32')
    amp_rows, fp32_rows = amp.run(), fp32.run()
    amp_loss = [e['eval_loss'] for r in amp.runs for e in r.epochs]
    fp32_loss = [e['eval_loss'] for r in fp32.runs for e in r.epochs]
    assert all(math.isfinite(v) for v in amp_loss) and amp_loss != fp32_loss  # autocast really ran
    assert amp_loss == pytest.approx(fp32_loss, rel=0.05)
    assert [r.model for r in amp_rows] == [r.model for r in fp32_rows]


def test_lr_follows_the_schedule_per_update(tmp_path, monkeypatch):
    seen = []
    real = compare_module._Comparison._train_step

    def record(self, run, x, y, num_updates):
        if run is self.runs[0]:
            seen.append(run.optimizer.param_groups[0]['lr'])
        return real(self, run, x, y, num_updates)

    monkeypatch.setattr(compare_module._Comparison, '_train_step', record)
    cfg = compare_module.CompareConfig(
        models=('resnet18_cifar', 'gct_resnet18_cifar'), epochs=2, synthetic_samples=(64, 32), batch_size=32,
        output=str(tmp_path), progress=False)
    compare_module._Comparison(cfg, log=lambda _: None).run()
    total = 4  # 2 epochs x 2 updates
    assert seen == pytest.approx([0.05 * (1 + math.cos(math.pi * k / total)) for k in range(total)])


def test_a_diverging_model_is_dropped_and_the_others_go_on(capsys, tmp_path, monkeypatch):
    real = compare_module._Comparison._train_step

    def nan_for_gct(self, run, x, y, num_updates):
        loss = real(self, run, x, y, num_updates)
        return float('nan') if run.name.startswith('gct') and num_updates >= 3 else loss

    monkeypatch.setattr(compare_module._Comparison, '_train_step', nan_for_gct)
    code, out, err = _run(capsys, '--models', TWO, *TINY, '--epochs', '2', '--output', str(tmp_path))
    assert code == 0
    assert 'gct_resnet18_cifar: the training loss became nan in epoch 2' in out
    assert 'gct_resnet18_cifar diverged in epoch 2: its row shows the 1 epoch(s) before' in out
    rows = _rows(tmp_path / 'epochs.csv')
    assert [(r['model'], r['epoch']) for r in rows] == [
        ('resnet18_cifar', '1'), ('resnet18_cifar', '2'), ('gct_resnet18_cifar', '1')]
    results = {r['model']: r for r in json.loads((tmp_path / 'results.json').read_text())['results']}
    assert results['gct_resnet18_cifar']['diverged'] == 2 and results['resnet18_cifar']['diverged'] is None


def test_every_model_diverging_exits_nonzero(capsys, tmp_path):
    code, out, _ = _run(capsys, '--models', TWO, *TINY, '--lr', '1e30', '--output', str(tmp_path))
    assert code == 1
    assert 'Every model diverged' in out and 'resnet18_cifar diverged in epoch 1: no finished epoch' in out


def test_without_matplotlib_says_so_and_skips_the_plot(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib.figure', None)  # makes `from matplotlib.figure import` fail
    code, out, _ = _run(capsys, '--models', TWO, *TINY, '--output', str(tmp_path))
    assert code == 0
    assert 'matplotlib is not installed' in out and not (tmp_path / 'curves.png').exists()
    assert (tmp_path / 'epochs.csv').exists()


def test_ctrl_c_keeps_finished_epochs(capsys, tmp_path, monkeypatch):
    real = compare_module._Comparison._train_epoch

    def interrupt_in_second_epoch(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch)

    monkeypatch.setattr(compare_module._Comparison, '_train_epoch', interrupt_in_second_epoch)
    code, out, _ = _run(capsys, '--models', TWO, *TINY, '--epochs', '3', '--output', str(tmp_path))
    assert code == 130
    assert 'Interrupted' in out and 'Results on' in out
    assert [r['epoch'] for r in _rows(tmp_path / 'epochs.csv')] == ['1', '1']
    summary = json.loads((tmp_path / 'results.json').read_text())
    assert summary['interrupted'] is True and summary['finished_epochs'] == 1
    assert (tmp_path / 'curves.png').exists()


def _image_folder(root: Path, classes=('cat', 'dog'), per_class=4) -> Path:
    for split in ('train', 'validation'):
        for i, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for j in range(per_class):
                colour = (200 * i, 50 * j, 100)
                Image.new('RGB', (40, 40), colour).save(root / split / name / f'{j}.png')
    return root


def test_image_folder(capsys, tmp_path):
    data = _image_folder(tmp_path / 'data')
    code, out, err = _run(
        capsys, '--models', TWO, '--data-dir', str(data), '--epochs', '1', '--batch-size', '4', '--no-progress',
        '--output', str(tmp_path / 'out'))
    assert code == 0, err
    assert f'ImageFolder at {data} (8 train / 8 eval images)' in out
    summary = json.loads((tmp_path / 'out' / 'results.json').read_text())
    assert summary['num_classes'] == 2 and summary['synthetic'] is False
    assert {r['dataset'] for r in _rows(tmp_path / 'out' / 'epochs.csv')} == {'imagefolder'}


@pytest.mark.parametrize('argv, message', [
    (('--models', 'resnet18_cifar,gct_resnet18_cifr'), "--models: unknown model 'gct_resnet18_cifr'"),
    (('--models', 'resnet18_cifar'), 'give a baseline and at least one model'),
    (('--models', 'resnet18_cifar,resnet18_cifar'), 'a model is listed twice'),
    (('--data-dir', '/nonexistent/imagenet'), "--data-dir '/nonexistent/imagenet': no such directory"),
    (('--dataset', 'torch/cifar10'), '--dataset torch/cifar10: give --data-dir'),
    (('--dataset', 'synthetic', '--data-dir', '.'), 'the synthetic dataset is generated in-process'),
    (('--epochs', '0'), '--epochs 0: must be a positive integer'),
    (('--opt', 'sgdd', *TINY), "--opt 'sgdd' (--lr 0.1, --momentum 0.9, --weight-decay 0.0005): Optimizer sgdd"),
    (('--synthetic-samples', '0', '32'), '--synthetic-samples 0 32: must be two positive integers'),
    (('--num-classes', '5'), '--num-classes 5: the synthetic dataset has 10'),
    (('--smoothing', '1.0'), '--smoothing 1.0: must be in [0, 1)'),
    (('--workers', '-1'), '--workers -1: must be an integer >= 0'),
    (('--weight-decay', '-1'), '--weight-decay -1.0: must be >= 0'),
    (('--models', 'resnet18_cifar,vit_tiny_patch16_224', *TINY),
     "--models: vit_tiny_patch16_224 cannot take the baseline's input 3x32x32"),
    (('--device', 'nodevice'), "--device 'nodevice'"),
    (('--batch-size', '100', '--synthetic-samples', '64', '32'), '--batch-size 100: larger than the training set'),
])
def test_bad_arguments_give_one_clear_line(capsys, tmp_path, argv, message):
    code, out, err = _run(capsys, *argv, '--no-progress', '--output', str(tmp_path))
    assert code == 2
    assert err.startswith('timm-gct compare: error: ') and message in err
    assert len(err.strip().splitlines()) == 1 and 'Traceback' not in err


def test_unknown_schedule_is_refused(capsys):
    with pytest.raises(SystemExit):  # argparse's choices: usage and one error line
        main(['compare', '--sched', 'plateau'])
    assert "invalid choice: 'plateau'" in capsys.readouterr().err
    with pytest.raises(compare_module.CompareError, match="--sched 'plateau': must be one of cosine, tanh, poly"):
        compare_module.compare(compare_module.CompareConfig(sched='plateau'))


def test_missing_torch_dataset_and_image_folder_without_validation(capsys, tmp_path):
    code, _, err = _run(capsys, '--dataset', 'torch/cifar10', '--data-dir', str(tmp_path), '--no-progress')
    assert code == 2 and 'cannot load split' in err and 'add --dataset-download' in err
    assert len(err.strip().splitlines()) == 1

    (tmp_path / 'val' / 'a').mkdir(parents=True)  # timm would fall back to the root and train on val/
    code, _, err = _run(capsys, '--data-dir', str(tmp_path), '--no-progress')
    assert code == 2 and 'needs a training split folder (one of train, training)' in err
    (tmp_path / 'val' / 'a').rmdir()
    (tmp_path / 'val').rmdir()

    (tmp_path / 'train' / 'a').mkdir(parents=True)
    code, _, err = _run(capsys, '--data-dir', str(tmp_path), '--no-progress')
    assert code == 2 and 'needs a validation split folder' in err

    (tmp_path / 'validation' / 'a').mkdir(parents=True)
    code, _, err = _run(capsys, '--data-dir', str(tmp_path), '--no-progress')  # folders without images
    assert code == 2 and "cannot load split 'train'" in err and len(err.strip().splitlines()) == 1


def test_output_that_is_a_file_and_ctrl_c_before_training(capsys, tmp_path, monkeypatch):
    taken = tmp_path / 'taken'
    taken.write_text('')
    code, _, err = _run(capsys, '--models', TWO, *TINY, '--output', str(taken))
    assert code == 2 and f"--output '{taken}'" in err and len(err.strip().splitlines()) == 1

    def interrupted_build(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_module, '_build_runs', interrupted_build)
    code, _, err = _run(capsys, '--models', TWO, *TINY, '--output', str(tmp_path / 'out'))
    assert code == 130 and err.strip() == 'timm-gct compare: interrupted'


def test_save_weights_writes_each_models_final_weights(tmp_path):
    cfg = compare_module.CompareConfig(
        models=('resnet18_cifar', 'gct_resnet18_cifar'), epochs=1, synthetic_samples=(32, 32), batch_size=32,
        output=str(tmp_path), progress=False, save_weights=True)
    comparison = compare_module._Comparison(cfg, log=lambda _: None)
    comparison.run()
    assert comparison.save_weights() == ['resnet18_cifar.safetensors', 'gct_resnet18_cifar.safetensors']
    for run in comparison.runs:
        saved = load_file(str(tmp_path / f'{run.name}.safetensors'))
        trained = run.model.state_dict()
        assert saved.keys() == trained.keys()
        assert all(torch.equal(saved[k], trained[k]) for k in saved)
    assert main(['compare', '--models', TWO, *TINY, '--save-weights', '--output', str(tmp_path / 'cli')]) == 0
    assert (tmp_path / 'cli' / 'gct_resnet18_cifar.safetensors').is_file()
