""" The timm-gct command: list (numbers measured from the models, read from a table) and run (scripts with the plugin
imported). """
import csv
import io
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import timm
import torch

import timm_gct
from timm_gct.cli import main
from timm_gct.layers import GlobalContextBlock
from timm_gct.stats import ModelStats, measure, plain_twin
from timm_gct.stats_table import SHIPPED_TABLE, cache_file, read_table


def _run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Every test gets an empty user cache: none reads or writes the real ~/.cache/timm_gct."""
    monkeypatch.setenv('TIMM_GCT_CACHE_DIR', str(tmp_path / 'cache'))


def _fake_stats(name):
    return ModelStats(name, 'GCT', (1, 2, 3, 4), 16, 25_000_000, 24_000_000, 4_100_000_000, (3, 224, 224))


def test_list_measure_prints_every_registered_model(capsys, monkeypatch):
    measured = []
    monkeypatch.setattr('timm_gct.cli.measure', lambda name: measured.append(name) or _fake_stats(name))
    code, out, _ = _run_cli(capsys, 'list', '--measure')
    assert code == 0
    lines = out.splitlines()
    assert 'model' in lines[1] and 'GMACs' in lines[1]
    listed = [line.split()[0] for line in lines[2:]]
    assert listed == measured == timm.list_models(module=['attn_resnet', 'gct_official'])
    assert lines[2].split()[1:] == ['GCT', '1,2,3,4', '16', '25.00', '+1,000,000', '4.10', '224x224']


def _no_building(*args, **kwargs):
    raise AssertionError('timm-gct list built a model')


def test_list_reads_the_shipped_table_without_building_a_model(capsys, monkeypatch):
    shipped_versions, shipped = read_table(SHIPPED_TABLE)
    monkeypatch.setattr('timm_gct.stats_table.stats_versions', lambda: shipped_versions)
    monkeypatch.setattr(timm, 'create_model', _no_building)
    code, out, err = _run_cli(capsys, 'list', '--format', 'json')
    assert code == 0 and err == ''
    names = timm.list_models(module=['attn_resnet', 'gct_official'])
    expected = [dict(asdict(shipped[n]), added_params=shipped[n].added_params) for n in names]
    assert json.loads(out) == json.loads(json.dumps(expected))


def test_shipped_table_equals_the_measured_figures_of_every_model():
    # ~25 s: every registered model built on the meta device and counted, as `timm-gct list --measure` does.
    _, shipped = read_table(SHIPPED_TABLE)
    names = timm.list_models(module=['attn_resnet', 'gct_official'])
    assert sorted(shipped) == sorted(names)
    wrong = [n for n in names if shipped[n] != measure(n)]
    assert not wrong, f'stale figures for {wrong}: regenerate the table with `python -m timm_gct.stats_table`'


def test_shipped_table_is_for_the_versions_ci_pins():
    pins = dict(line.split('==') for line in
                (Path(__file__).parents[1] / '.ci' / 'constraints.txt').read_text().splitlines()
                if '==' in line and not line.startswith('#'))
    versions, _ = read_table(SHIPPED_TABLE)
    assert versions == {'timm_gct': timm_gct.__version__, 'timm': pins['timm'], 'torch': pins['torch']}


_SMALL = ('resnet18_cifar', 'gct_resnet18_cifar')


def test_list_with_other_versions_measures_once_then_reads_the_cache(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr('timm_gct.stats_table.SHIPPED_TABLE', tmp_path / 'none.json')
    code, first, err = _run_cli(capsys, 'list', *_SMALL)
    assert code == 0 and 'measuring 2 models' in err and str(cache_file()) in err
    assert cache_file().parent == tmp_path / 'cache'
    assert set(read_table(cache_file())[1]) == set(_SMALL)

    with monkeypatch.context() as m:
        m.setattr(timm, 'create_model', _no_building)
        code, again, err = _run_cli(capsys, 'list', *_SMALL)
    assert code == 0 and err == '' and again == first

    old_cache = cache_file()
    monkeypatch.setattr(timm, '__version__', '1.0.99')  # a new timm: the old one's figures do not apply
    code, _, err = _run_cli(capsys, 'list', 'gct_resnet18_cifar')
    assert code == 0 and 'measuring 1 model for' in err and 'timm 1.0.99' in err
    assert sorted((tmp_path / 'cache').iterdir()) == sorted([old_cache, cache_file()])


def test_list_without_a_writable_cache_still_prints(capsys, monkeypatch, tmp_path):
    (tmp_path / 'file').write_text('')
    monkeypatch.setenv('TIMM_GCT_CACHE_DIR', str(tmp_path / 'file' / 'cache'))  # unwritable, even for root
    monkeypatch.setattr('timm_gct.stats_table.SHIPPED_TABLE', tmp_path / 'none.json')
    code, out, err = _run_cli(capsys, 'list', 'gct_resnet18_cifar', '--format', 'csv')
    assert code == 0 and 'gct_resnet18_cifar,GCT' in out
    assert 'could not cache them' in err and 'TIMM_GCT_CACHE_DIR' in err


def test_list_measures_again_over_a_damaged_cache(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr('timm_gct.stats_table.SHIPPED_TABLE', tmp_path / 'none.json')
    cache_file().parent.mkdir(parents=True)
    cache_file().write_text('{"versions": {"timm_gct": "0.1.0"')  # cut off mid-write by another tool
    code, _, err = _run_cli(capsys, 'list', 'gct_resnet18_cifar')
    assert code == 0 and 'measuring 1 model for' in err
    assert list(read_table(cache_file())[1]) == ['gct_resnet18_cifar']


def test_list_numbers_are_measured_from_the_models(capsys):
    code, out, _ = _run_cli(capsys, 'list', 'gct_resnet18_cifar', 'gc_resnet50', '--format', 'csv')
    assert code == 0
    rows = {r['model']: r for r in csv.DictReader(io.StringIO(out))}
    assert set(rows) == {'gct_resnet18_cifar', 'gc_resnet50'}
    for name, row in rows.items():
        model = timm.create_model(name)
        params = sum(p.numel() for p in model.parameters())
        assert row['params (M)'] == f'{params / 1e6:.2f}'
        plain = sum(p.numel() for p in timm.create_model(plain_twin(name)).parameters())
        assert row['added params'] == f'{params - plain:+,}'
    assert rows['gc_resnet50']['mechanism'] == 'GC' and rows['gc_resnet50']['attn stages'] == '2,3,4'
    assert rows['gc_resnet50']['attn layers'] == str(4 + 6 + 3)
    assert rows['gct_resnet18_cifar']['attn layers'] == '8'


def test_list_counts_shared_and_last_block_layers(capsys):
    code, out, _ = _run_cli(capsys, 'list', 'gsop_resnet50', 'dia_resnet50', 'cc_resnet50', '--format', 'json')
    assert code == 0
    layers = {d['name']: (d['attn_stages'], d['attn_layers']) for d in json.loads(out)}
    assert layers == {
        'gsop_resnet50': ([1, 2, 3, 4], 4),  # last block of each stage
        'dia_resnet50': ([1, 2, 3, 4], 4),  # one cell shared by the blocks of each stage
        'cc_resnet50': ([4], 1),  # last block of stage 4
    }


def test_list_counts_the_official_gct_layout(capsys):
    code, out, _ = _run_cli(capsys, 'list', 'gct_resnet50_official', '--format', 'json')
    assert code == 0
    (row,) = json.loads(out)
    convs = [m for m in timm.create_model('gct_resnet50_official', device='meta').modules()
             if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 16 * 3 + 4  # the stem, three per bottleneck, one downsample per stage
    assert row['mechanism'] == 'GCT' and row['attn_stages'] == [1, 2, 3, 4]
    assert row['attn_layers'] == len(convs)  # a GCT before every conv
    assert row['added_params'] == sum(3 * c.in_channels for c in convs)  # alpha, gamma, beta per input channel


def _reference_macs(model, input_size):
    """Independent count from hooks on a real forward pass: every Conv2d and Linear, and the GC block's attention
    pooling (a (C x HW) @ (HW x 1) product, i.e. C * H * W multiply-accumulates per sample)."""
    total = []

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total.append(output.numel() * k)
        elif isinstance(module, torch.nn.Linear):
            total.append(output.numel() * module.in_features)
        else:
            total.append(inputs[0].numel())

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, GlobalContextBlock)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model.eval()(torch.randn(1, *input_size))
    return sum(total)


@pytest.mark.parametrize(
    'name', ['gct_resnet18_cifar', 'gc_resnet18_cifar', 'nam_resnet50', 'resnet50_cifar', 'gct_resnet50_official'])
def test_gmacs_agree_with_an_independent_count(name):
    model = timm.create_model(name)
    assert measure(name).macs == _reference_macs(model, model.pretrained_cfg['input_size'])


def test_list_json_and_patterns(capsys):
    code, out, _ = _run_cli(capsys, 'list', 'nam_*', '--format', 'json')
    assert code == 0
    data = json.loads(out)
    assert [d['name'] for d in data] == timm.list_models('nam_*')
    assert all(d['mechanism'] == 'NAM' and d['added_params'] > 0 for d in data)


def test_list_unknown_pattern_fails_clearly(capsys):
    code, _, err = _run_cli(capsys, 'list', 'vit_*')
    assert code == 2
    assert 'no registered model matches vit_*' in err


_SCRIPT = textwrap.dedent('''
    import sys, timm
    print('registered', timm.is_model('gct_resnet18'))
    print('argv', sys.argv[1:])
    print('name', __name__)
    sys.exit(int(sys.argv[-1]))
''')


def _python_m(*args, cwd=None):
    env = dict(os.environ, HF_HUB_OFFLINE='1')
    return subprocess.run([sys.executable, '-m', 'timm_gct', *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_run_executes_a_script_as_main_with_the_plugin_imported(tmp_path):
    script = tmp_path / 'validate.py'
    script.write_text(_SCRIPT)
    result = _python_m('run', str(script), '--model', 'gct_resnet18', '--flag', '0')
    assert result.returncode == 0, result.stderr
    assert 'registered True' in result.stdout
    assert "argv ['--model', 'gct_resnet18', '--flag', '0']" in result.stdout
    assert 'name __main__' in result.stdout


def test_run_passes_the_scripts_exit_code_through(tmp_path):
    script = tmp_path / 'fails.py'
    script.write_text(_SCRIPT)
    assert _python_m('run', str(script), '3').returncode == 3


def _fake_checkout(tmp_path):
    """A directory like a pytorch-image-models checkout: a script beside a timm/ package that must not be used."""
    checkout = tmp_path / 'checkout'
    (checkout / 'timm').mkdir(parents=True)
    (checkout / 'timm' / '__init__.py').write_text('raise ImportError("the checkout timm was imported")\n')
    script = checkout / 'benchmark.py'
    script.write_text(_SCRIPT)
    return checkout, script


def test_run_uses_the_installed_timm_for_a_script_beside_a_checkouts_timm_folder(tmp_path):
    # `python checkout/benchmark.py` would import checkout/timm; the runner has imported the installed timm first.
    checkout, script = _fake_checkout(tmp_path)
    result = _python_m('run', str(script), '0', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'registered True' in result.stdout


def test_console_script_run_from_inside_a_checkout(tmp_path):
    checkout, script = _fake_checkout(tmp_path)
    console_script = os.path.join(os.path.dirname(sys.executable), 'timm-gct')
    result = subprocess.run(
        [console_script, 'run', 'benchmark.py', '0'], capture_output=True, text=True, cwd=checkout,
        env=dict(os.environ, HF_HUB_OFFLINE='1'))
    assert result.returncode == 0, result.stderr
    assert 'registered True' in result.stdout


def test_run_missing_script_fails_clearly(tmp_path):
    result = _python_m('run', str(tmp_path / 'nope.py'))
    assert result.returncode == 2
    assert 'is not a file' in result.stderr


def test_console_script_is_declared():
    scripts = {ep.name: ep.value for ep in entry_points(group='console_scripts')}
    assert scripts.get('timm-gct') == 'timm_gct.cli:main'
