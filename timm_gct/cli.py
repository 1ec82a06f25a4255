""" The ``timm-gct`` command (also ``python -m timm_gct``).

    timm-gct list [PATTERN ...] [--format table|csv|json]   registered models, measured from the models
    timm-gct run SCRIPT [ARGS ...]                         run a timm script (validate.py, ...) with timm_gct loaded
"""
import argparse
import csv
import fnmatch
import json
import runpy
import sys
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional, Sequence

import timm
import torch

import timm_gct
from .stats import ModelStats, measure

__all__ = ['main']

_LIST_COLUMNS = ('model', 'mechanism', 'attn stages', 'attn layers', 'params (M)', 'added params', 'GMACs', 'input')


def _list_rows(stats: Sequence[ModelStats]) -> List[List[str]]:
    return [[
        s.name,
        s.mechanism,
        ','.join(map(str, s.attn_stages)) or '-',
        str(s.attn_layers),
        f'{s.params / 1e6:.2f}',
        f'{s.added_params:+,}',
        f'{s.macs / 1e9:.2f}',
        'x'.join(map(str, s.input_size[1:])),
    ] for s in stats]


def _cmd_list(args: argparse.Namespace) -> int:
    names = timm.list_models(module='attn_resnet')
    if args.patterns:
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in args.patterns)]
        if not names:
            print(f'timm-gct list: no registered model matches {" ".join(args.patterns)}', file=sys.stderr)
            return 2
    stats = [measure(n) for n in names]
    if args.format == 'json':
        print(json.dumps([dict(asdict(s), added_params=s.added_params) for s in stats], indent=2))
        return 0
    rows = _list_rows(stats)
    if args.format == 'csv':
        writer = csv.writer(sys.stdout, lineterminator='\n')
        writer.writerow(_LIST_COLUMNS)
        writer.writerows(rows)
        return 0
    print(
        f'timm_gct {timm_gct.__version__} (timm {timm.__version__}, torch {torch.__version__}): {len(stats)} models. '
        'Params and GMACs are measured from each model at its default input size, batch 1; "added params" is '
        'against the plain ResNet of the same depth and stem (timm resnetN, or resnetN_cifar); "attn layers" '
        'counts distinct attention modules (DIA shares one per stage).')
    widths = [max(len(r[i]) for r in [list(_LIST_COLUMNS)] + rows) for i in range(len(_LIST_COLUMNS))]
    for row in [list(_LIST_COLUMNS)] + rows:
        print('  '.join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    script = Path(args.script)
    if not script.is_file():
        print(f'timm-gct run: SCRIPT {args.script!r} is not a file; give the path to e.g. validate.py from a '
              'checkout of huggingface/pytorch-image-models.', file=sys.stderr)
        return 2
    # Run it the way `python SCRIPT ARGS` would, except that timm_gct (and with it the installed timm) is already
    # imported, so the script's `import timm` finds the installed package even beside a checkout's timm/ folder.
    sys.argv = [str(script), *args.args]
    sys.path.insert(0, str(script.resolve().parent))
    runpy.run_path(str(script), run_name='__main__')
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='timm-gct', description='Attention-augmented ResNets for timm.')
    parser.add_argument('--version', action='version', version=f'timm_gct {timm_gct.__version__}')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    p = sub.add_parser('list', help='list the registered models with measured params and GMACs')
    p.add_argument('patterns', nargs='*', metavar='PATTERN', help="fnmatch patterns, e.g. 'gct_*'")
    p.add_argument('--format', choices=('table', 'csv', 'json'), default='table')
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser(
        'run', help='run a timm script (validate.py, inference.py, benchmark.py, train.py) with timm_gct imported',
        description='Import timm_gct, then run SCRIPT as __main__ with ARGS, as `python SCRIPT ARGS` would.')
    p.add_argument('script', metavar='SCRIPT')
    p.add_argument('args', nargs=argparse.REMAINDER, metavar='ARGS')
    p.set_defaults(func=_cmd_run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)
