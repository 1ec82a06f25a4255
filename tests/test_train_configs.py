""" train_configs/*.yaml: recipes for timm's stock train.py

train.py loads a YAML with ``parser.set_defaults(**cfg)``, so a key that is not one of its options' ``dest`` is
accepted and silently ignored: a misspelt key would quietly drop part of a recipe. These tests check every key and
value against train.py's real option list, kept as data in tests/data/train_py_options.json (derived once from the
train.py of a pinned timm commit, named in the file's "source"), so they need neither network nor a timm checkout.
With TIMM_SCRIPTS_DIR pointing at a directory holding train.py, one more test compares the data with that script.
Regenerate the data with ``python -m tests.test_train_configs <train.py> <commit> <timm version at the commit>``.

They also build each file's optimizer and lr schedule with timm's own helpers (the ones train.py calls), which fails
on an unknown ``opt`` or ``sched``, and compare the per-epoch lr with the official recipe the file cites.
"""
import argparse
import importlib.util
import json
import math
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import pytest
import torch
import yaml
from torch import nn

import timm
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / 'train_configs'
OPTIONS_FILE = Path(__file__).resolve().parent / 'data' / 'train_py_options.json'
CONFIGS = sorted(CONFIG_DIR.glob('*.yaml'))
CIFAR_CLASSES = {'cifar10': 10, 'cifar100': 100}


# ----------------------------------------------------------------------------------------------------------------------
# The option list: derivation (run once, see the module docstring) and loading


def _action_kind(action: argparse.Action) -> str:
    kinds = {
        argparse._StoreAction: 'store',
        argparse._StoreTrueAction: 'store_true',
        argparse._StoreFalseAction: 'store_false',
        argparse._StoreConstAction: 'store_const',
        argparse._AppendAction: 'append',
        argparse._CountAction: 'count',
    }
    # train.py's dict options (--model-kwargs, --opt-kwargs) use timm.utils.ParseKwargs: key=value pairs on the
    # command line, a mapping in a YAML.
    return kinds.get(type(action), 'kwargs' if type(action).__name__ == 'ParseKwargs' else type(action).__name__)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


def _describe(parser: argparse.ArgumentParser) -> Dict[str, Dict[str, Any]]:
    options = {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue  # -h is not a setting
        options[action.dest] = dict(
            flags=list(action.option_strings),
            action=_action_kind(action),
            nargs=action.nargs,
            type=getattr(action.type, '__name__', None),
            choices=_jsonable(list(action.choices)) if action.choices is not None else None,
            default=_jsonable(action.default),
        )
    return options


def derive_train_py_options(train_py: Path) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """The options of a train.py's two parsers, by dest. Imports the script (not run: it has a __main__ guard)."""
    spec = importlib.util.spec_from_file_location('_timm_train_script', train_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(config_parser=_describe(module.config_parser), parser=_describe(module.parser))


def load_options() -> Dict[str, Any]:
    if not OPTIONS_FILE.exists():  # test_option_data_is_substantial fails on this
        return dict(source={}, config_parser={}, parser={})
    with open(OPTIONS_FILE) as f:
        return json.load(f)


OPTIONS = load_options()
TRAIN_OPTIONS: Dict[str, Dict[str, Any]] = OPTIONS['parser']


# ----------------------------------------------------------------------------------------------------------------------
# The checker


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_SCALAR_CHECKS: Dict[Optional[str], Callable[[Any], bool]] = {
    'int': lambda v: isinstance(v, int) and not isinstance(v, bool),
    # A YAML float needs a dot: PyYAML reads `1e-4` as the string '1e-4', so write 1.0e-4.
    'float': _is_number,
    'str': lambda v: isinstance(v, str),
    None: lambda v: isinstance(v, str),  # argparse's default type: the command-line string
}


def _value_problems(key: str, value: Any, spec: Dict[str, Any]) -> List[str]:
    kind, nargs, type_name = spec['action'], spec['nargs'], spec['type']
    if value is None:
        # null keeps an option unset; only sensible where train.py's own default is unset too.
        return [] if spec['default'] is None else [f'{key}: null, but train.py defaults it to {spec["default"]!r}']
    if kind in ('store_true', 'store_false'):
        return [] if isinstance(value, bool) else [f'{key}: expected true/false, got {value!r}']
    if kind == 'kwargs':
        return [] if isinstance(value, dict) else [f'{key}: expected a mapping, got {value!r}']
    if kind != 'store':
        return [f'{key}: option kind {kind!r} is not checked by this test; extend _value_problems']
    check = _SCALAR_CHECKS.get(type_name)
    if check is None:
        return [f'{key}: option type {type_name!r} is not checked by this test; extend _SCALAR_CHECKS']
    if nargs in ('+', '*') or isinstance(nargs, int):
        if not isinstance(value, list):
            return [f'{key}: takes a list (nargs={nargs!r}), got {value!r}']
        if (nargs == '+' and not value) or (isinstance(nargs, int) and len(value) != nargs):
            return [f'{key}: takes nargs={nargs!r} values, got {len(value)}']
        items = value
    else:
        items = [value]
    problems = [f'{key}: {v!r} is not of type {type_name or "str"}' for v in items if not check(v)]
    if spec['choices'] is not None:
        problems += [f'{key}: {v!r} is not one of {spec["choices"]}' for v in items if v not in spec['choices']]
    return problems


def config_problems(cfg: Any, options: Dict[str, Dict[str, Any]] = TRAIN_OPTIONS) -> List[str]:
    """Everything in a parsed train.py YAML that train.py would ignore or reject; [] when it is clean."""
    if not isinstance(cfg, dict):
        return [f'the file must hold a mapping of train.py options, got {type(cfg).__name__}']
    problems = []
    for key, value in cfg.items():
        if key not in options:
            hint = ' (YAML keys are dests: underscores, not hyphens)' if '-' in str(key) else ''
            problems.append(f'{key!r} is not a train.py option{hint}')
        else:
            problems += _value_problems(key, value, options[key])
    return problems


def _load(path: Path) -> Dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f)


def _args(cfg: Dict[str, Any]) -> SimpleNamespace:
    """train.py's parsed args for a config with no command-line overrides, on one process."""
    args = {k: v['default'] for k, v in TRAIN_OPTIONS.items()}
    args.update(cfg)
    if not args['lr']:  # train.py's lr_base rule, for world size 1
        ratio = args['batch_size'] * args['grad_accum_steps'] / args['lr_base_size']
        adaptive = any(o in args['opt'].lower() for o in ('ada', 'lamb'))
        scale = args['lr_base_scale'] or ('sqrt' if adaptive else 'linear')
        args['lr'] = args['lr_base'] * (math.sqrt(ratio) if scale == 'sqrt' else ratio)
    return SimpleNamespace(**args)


def _ids(paths: List[Path]) -> List[str]:
    return [p.name for p in paths]


# ----------------------------------------------------------------------------------------------------------------------
# The option data itself


def test_option_data_is_substantial():
    # An empty or truncated list would make every key check vacuous.
    assert len(TRAIN_OPTIONS) > 150
    for dest in ('model', 'device_modules', 'lr_base', 'lr_base_size', 'decay_milestones', 'opt_kwargs', 'smoothing'):
        assert dest in TRAIN_OPTIONS
    assert set(OPTIONS['config_parser']) == {'config'}
    source = OPTIONS['source']
    assert re.fullmatch(r'[0-9a-f]{40}', source['commit'])
    assert source['repository'] == 'huggingface/pytorch-image-models' and source['path'] == 'train.py'
    assert re.fullmatch(r'\d+\.\d+\.\d+(\.dev\d+)?', source['timm_version'])


@pytest.mark.skipif(not os.environ.get('TIMM_SCRIPTS_DIR'), reason='set TIMM_SCRIPTS_DIR to a dir holding train.py')
def test_option_data_matches_train_py():
    derived = derive_train_py_options(Path(os.environ['TIMM_SCRIPTS_DIR']) / 'train.py')
    for name in ('config_parser', 'parser'):
        assert derived[name] == OPTIONS[name], f'{name} differs from {OPTIONS_FILE.name}; regenerate it'


@pytest.mark.parametrize('cfg, expected', [
    ({'weight_decya': 1.0e-4}, "'weight_decya' is not a train.py option"),
    ({'weight-decay': 1.0e-4}, 'underscores, not hyphens'),
    ({'weight_decay': '1e-4'}, "weight_decay: '1e-4' is not of type float"),  # YAML `1e-4`, no dot: a string
    ({'epochs': 1.5}, 'epochs: 1.5 is not of type int'),
    ({'decay_milestones': 30}, 'takes a list'),
    ({'input_size': [3, 32]}, 'takes nargs=3 values, got 2'),
    ({'amp': 'yes'}, 'expected true/false'),
    ({'opt_kwargs': 'filter_bias_and_bn=False'}, 'expected a mapping'),
    ({'lr_base': None}, 'null, but train.py defaults it to 0.1'),
    ({'kd_distill_type': 'soft'}, "is not one of ['logit', 'feature', 'token']"),
    (['model', 'resnet50'], 'must hold a mapping'),
])
def test_checker_rejects(cfg, expected):
    problems = config_problems(cfg)
    assert len(problems) == 1 and expected in problems[0], problems


def test_checker_accepts():
    cfg = {
        'model': 'gct_resnet50', 'device_modules': ['timm_gct'], 'weight_decay': 1.0e-4, 'lr_base_size': 256,
        'decay_milestones': [31, 61], 'input_size': [3, 32, 32], 'scale': [0.5, 1.0], 'mean': [0.5, 0.5, 0.5],
        'amp': True, 'opt_kwargs': {'filter_bias_and_bn': False}, 'num_classes': None, 'lr': 1,
    }
    assert config_problems(cfg) == []


# ----------------------------------------------------------------------------------------------------------------------
# The files


def test_config_set():
    names = {p.name for p in CONFIGS}
    assert len(names) >= 10
    for name in names:
        assert re.fullmatch(r'[a-z0-9_]+_(in1k|cifar10|cifar100)\.yaml', name), name
    # One ImageNet recipe for the ResNet-50 of every mechanism the plugin registers.
    from timm_gct.models.attn_resnet import MECHANISMS
    assert {f'{m}_resnet50_in1k.yaml' for m in MECHANISMS} <= names


@pytest.mark.parametrize('path', CONFIGS, ids=_ids(CONFIGS))
def test_keys_and_values(path):
    assert config_problems(_load(path)) == []


@pytest.mark.parametrize('path', CONFIGS, ids=_ids(CONFIGS))
def test_header_and_plugin(path):
    text = path.read_text()
    assert text.startswith('#'), 'start with a comment block saying where the numbers come from'
    assert max(len(line) for line in text.splitlines()) <= 120
    assert '--model ' in text.split('\n\n')[0], 'the header says how to run the plain twin (--model ...)'
    cfg = _load(path)
    assert cfg['device_modules'] == ['timm_gct'], 'train.py must import the plugin before creating the model'
    assert timm.is_model(cfg['model']), cfg['model']


@pytest.mark.parametrize('path', CONFIGS, ids=_ids(CONFIGS))
def test_dataset_matches_name(path):
    cfg = _load(path)
    dataset = path.stem.rsplit('_', 1)[1]
    if dataset in CIFAR_CLASSES:
        assert cfg['dataset'] == f'torch/{dataset}'
        assert cfg['dataset_download'] is True
        assert cfg['num_classes'] == CIFAR_CLASSES[dataset]
        assert cfg['model'].endswith('_cifar'), 'CIFAR recipes are for the 32 x 32 CIFAR-stem models'
    else:
        assert cfg.get('dataset', '') == '', 'ImageNet files read an ImageFolder from --data-dir'
        assert cfg.get('num_classes') in (None, 1000)
        assert not cfg['model'].endswith('_cifar')


# ----------------------------------------------------------------------------------------------------------------------
# Optimizer and schedule, built the way train.py builds them


class Official(NamedTuple):
    epochs: int
    lr_factor: Optional[Callable[[int], float]]  # official lr at (0-based) epoch e over the base lr; None: not checked


def _steps(rate: float, milestones, first_epoch_factor: Optional[float] = None) -> Callable[[int], float]:
    # Official milestones count 0-based epochs, as torch's MultiStepLR stepped once per epoch and `epoch // 30` do.
    def factor(e: int) -> float:
        if e == 0 and first_epoch_factor is not None:
            return first_epoch_factor
        return rate ** sum(e >= m for m in milestones)
    return factor


_EVERY_30 = _steps(0.1, (30, 60, 90))
_STANDARD = Official(90, _steps(0.1, (30, 60)))  # pytorch/examples imagenet: 90 epochs, StepLR(30, 0.1)
_NAM_CIFAR = Official(200, _steps(0.2, (60, 120, 160)))  # Christian-lyc/NAM train_cifar100.py

OFFICIAL: Dict[str, Official] = {
    'gct_resnet50_in1k.yaml': Official(100, _steps(0.1, (30, 60, 90), first_epoch_factor=0.1)),  # GCT main.py
    'triplet_resnet50_in1k.yaml': Official(100, _EVERY_30),  # triplet-attention train_imagenet.py
    'eca_resnet50_in1k.yaml': Official(100, _EVERY_30),  # ECANet main.py
    'srm_resnet50_in1k.yaml': Official(90, _steps(0.1, (31, 61))),  # SRM imagenet.py: `if epoch in [31, 61]`
    'gsop_resnet50_in1k.yaml': Official(95, _EVERY_30),  # GSoP main.py, GSoP_mode 1
    'fca_resnet50_in1k.yaml': Official(100, None),  # FcaNet main.py: per-iteration, see test_fcanet_schedule
    'rsb_a2_gct_resnet50_in1k.yaml': Official(300, None),  # ResNet strikes back A2: timm's own cosine
    'rsb_a2_resnet50_in1k.yaml': Official(300, None),
    **{f'{m}_resnet50_in1k.yaml': _STANDARD for m in ('nam', 'gc', 'soca', 'enc', 'ba', 'cc', 'dia')},
    **{f: _NAM_CIFAR for f in (
        'nam_resnet50_cifar100.yaml', 'resnet50_cifar100.yaml', 'gct_resnet18_cifar10.yaml', 'resnet18_cifar10.yaml')},
}


def _tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))


def _build(path: Path, updates_per_epoch: int = 10):
    args = _args(_load(path))
    model = _tiny_model()
    model(torch.zeros(1, 3, 5, 5))  # materialise the lazy layer
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args), updates_per_epoch=updates_per_epoch)
    return args, optimizer, scheduler, num_epochs


def _lr_at_epoch(scheduler, optimizer, epoch: int) -> float:
    # train.py trains epoch e at the lr set by scheduler.step(e) (epoch 0: the lr the scheduler starts with).
    if epoch:
        scheduler.step(epoch)
    return optimizer.param_groups[0]['lr']


def test_every_config_has_an_official_schedule():
    # A new file needs an entry in OFFICIAL: its total epochs and, for step schedules, the official lr rule.
    assert set(OFFICIAL) == {p.name for p in CONFIGS}


@pytest.mark.parametrize('path', CONFIGS, ids=_ids(CONFIGS))
def test_optimizer_and_schedule_build(path):
    args, optimizer, scheduler, num_epochs = _build(path)
    assert scheduler is not None
    assert num_epochs == OFFICIAL[path.name].epochs, 'total epochs trained (incl. any warmup prefix and cooldown)'
    decay = {g['weight_decay'] for g in optimizer.param_groups}
    assert max(decay) == pytest.approx(args.weight_decay)
    # opt_kwargs filter_bias_and_bn=False puts every parameter, BN and biases included, under weight decay.
    assert (decay == {args.weight_decay}) == (args.opt_kwargs.get('filter_bias_and_bn') is False)


STEP_SCHEDULED = [p for p in CONFIGS if p.name in OFFICIAL and OFFICIAL[p.name].lr_factor]


@pytest.mark.parametrize('path', STEP_SCHEDULED, ids=_ids(STEP_SCHEDULED))
def test_schedule_matches_official(path):
    # timm's MultiStepLRScheduler applies milestone m from epoch m - 1 (it compares m with t + 1), so the files
    # shift the official milestones by one; this test pins that down epoch by epoch.
    args, optimizer, scheduler, _ = _build(path)
    official = OFFICIAL[path.name]
    got = [_lr_at_epoch(scheduler, optimizer, e) / args.lr for e in range(official.epochs)]
    want = [official.lr_factor(e) for e in range(official.epochs)]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_fcanet_schedule():
    # FcaNet main.py: per iteration k (1-based) lr * k / W over W = 5 epochs of iterations, then the iteration count
    # restarts and lr * (1 + cos(pi * j / T)) / 2 with T = 95 epochs of iterations. timm's update u (0-based) gets the
    # official value of iteration u: the same schedule, one update later.
    upe = 10
    args, optimizer, scheduler, _ = _build(CONFIG_DIR / 'fca_resnet50_in1k.yaml', updates_per_epoch=upe)
    warmup, total = 5 * upe, 100 * upe

    def official(k: int) -> float:
        if k <= warmup:
            return args.lr * k / warmup
        return args.lr * (1 + math.cos(math.pi * (k - warmup) / (total - warmup))) / 2

    got = []
    for u in range(total):
        if u:
            scheduler.step_update(num_updates=u)
        got.append(optimizer.param_groups[0]['lr'])
    assert got == pytest.approx([official(u) for u in range(total)], rel=1e-9, abs=1e-12)


# ----------------------------------------------------------------------------------------------------------------------
# Regenerating the data


def _main(argv: List[str]) -> None:
    if len(argv) not in (3, 4):
        sys.exit('usage: python -m tests.test_train_configs <path/to/train.py> <commit> <timm version at the commit> '
                 '[note]')
    train_py, commit, version = argv[:3]
    source = dict(
        repository='huggingface/pytorch-image-models', path='train.py', commit=commit, timm_version=version,
        derived_with=f'python {sys.version.split()[0]}, timm {timm.__version__} installed',
        contents='dest -> option, for the two argparse parsers of train.py (-h left out); YAML keys are parser dests',
    )
    if len(argv) == 4:
        source['note'] = argv[3]
    data = derive_train_py_options(Path(train_py))
    # One line per option keeps the file short and its diffs readable when train.py changes.
    lines = ['{', ' "source": ' + json.dumps(source, indent=2).replace('\n', '\n ') + ',']
    for i, (name, options) in enumerate(data.items()):
        lines.append(f' "{name}": {{')
        lines += [f'  {json.dumps(dest)}: {json.dumps(spec)},' for dest, spec in options.items()]
        lines[-1] = lines[-1].rstrip(',')
        lines.append(' }' + (',' if i < len(data) - 1 else ''))
    OPTIONS_FILE.write_text('\n'.join(lines + ['}']) + '\n')


if __name__ == '__main__':
    _main(sys.argv[1:])
