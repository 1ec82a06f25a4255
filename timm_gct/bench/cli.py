""" ``timm-gct bench``: the command-line side of the benchmark (arguments, machine description, output files). """
import argparse
import json
import platform
import sys
from datetime import datetime
from pathlib import Path
from typing import List

import timm
import torch

import timm_gct
from .._device import one_line, resolve_device
from ..kernels import KERNEL_MODES
from ..models.attn_resnet import MECHANISMS
from .report import format_table, plot_ratios, write_csv
from .runner import BenchConfig, bench, device_defaults, input_size

__all__ = ['DEFAULT_MODELS', 'add_bench_parser', 'machine']

# Every mechanism at ResNet-50, and timm's own SE (the bar the channel gates are held to).
DEFAULT_MODELS = tuple(f'{m}_resnet50' for m in MECHANISMS) + ('seresnet50',)


def machine(device: torch.device) -> str:
    """One line naming the hardware and software the numbers come from."""
    if device.type == 'cuda':
        hw = f'{torch.cuda.get_device_name(device)}'
    else:
        cpu = platform.processor() or platform.machine()
        try:
            with open('/proc/cpuinfo') as f:
                cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
        except (OSError, StopIteration):
            pass
        hw = f'{cpu}, {torch.get_num_threads()} threads'
    return (f'{hw}; torch {torch.__version__}, timm {timm.__version__}, timm_gct {timm_gct.__version__}, '
            f'Python {platform.python_version()}')


def _cmd_bench(args: argparse.Namespace) -> int:
    try:
        device = resolve_device(args.device)
        sized = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in device_defaults(device).items()}
        cfg = BenchConfig(
            models=tuple(args.models or DEFAULT_MODELS), device=device, img_size=args.img_size, rounds=args.rounds,
            amp=args.amp, channels_last=args.channels_last, compile=args.compile, official=not args.no_official,
            control=not args.no_control, modes=tuple(args.modes), memory=not args.no_memory, seed=args.seed,
            kernels=tuple(dict.fromkeys(args.kernels)), **sized)
        started = datetime.now()
        results, notes = bench(cfg, log=lambda s: print(f'timm-gct bench: {s}', file=sys.stderr))
    except ValueError as e:
        print(f'timm-gct bench: error: {one_line(e)}', file=sys.stderr)
        return 2
    img_size = input_size(cfg)[-1]
    setup = (f'{device.type}, batch {cfg.batch_size} at {img_size}x{img_size}, '
             f'{cfg.amp + " autocast" if cfg.amp else "float32"}'
             f'{", channels_last" if cfg.channels_last else ""}{", torch.compile" if cfg.compile else ""}'
             f', TIMM_GCT_KERNELS={"/".join(cfg.kernels)}; medians over {cfg.rounds} interleaved rounds of '
             f'{cfg.iters} iteration{"s" if cfg.iters > 1 else ""}')
    header = f'{machine(device)}\n{started:%Y-%m-%d}, {setup}'
    print(header)
    print(format_table(results))
    for note in notes:
        print(f'note: {note}')
    out = Path(args.output or f'output/bench/{started:%Y%m%d-%H%M%S}-{device.type}')
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / 'bench.csv', results, cfg, img_size)
    (out / 'machine.json').write_text(json.dumps(
        {'machine': machine(device), 'date': f'{started:%Y-%m-%d %H:%M}', 'setup': setup, 'notes': notes},
        indent=2) + '\n')
    written: List[str] = ['bench.csv', 'machine.json']
    if plot_ratios(out / 'bench.png', results, f'{header}'):
        written.append('bench.png')
    print(f'wrote {", ".join(written)} to {out}')
    return 0


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    d = BenchConfig(models=())
    p = sub.add_parser(
        'bench', help='speed and memory of models against their plain ResNet twins and the official code',
        description='Time an inference forward and a training step (SGD) of each MODEL, of its official-code '
                    'reference (the same network with each attention layer computed by a transcription of the '
                    "authors' code) and of its plain ResNet twin of the same depth and stem, interleaved round by "
                    'round in one process; print the median time and the median per-round ratio to the twin, and '
                    'the peak memory of a training step. A control row times each twin again as a model: its ratio '
                    'would be 1 on a quiet machine. Writes bench.csv, machine.json and bench.png (with '
                    'matplotlib) to --output.')
    p.add_argument('models', nargs='*', metavar='MODEL',
                   help=f'timm model names (default: every mechanism at ResNet-50, and timm\'s seresnet50: '
                        f'{" ".join(DEFAULT_MODELS)})')
    p.add_argument('--device', default=None, help='cpu, cuda, ... (default: cuda when available, else cpu)')
    cpu, cuda = device_defaults(torch.device('cpu')), device_defaults(torch.device('cuda'))
    sized = 'default: {} on the CPU, {} on a GPU'.format
    p.add_argument('--batch-size', type=int, default=None, help=f'({sized(cpu["batch_size"], cuda["batch_size"])})')
    p.add_argument('--img-size', type=int, default=None, help="(default: the first model's, e.g. 224)")
    p.add_argument('--rounds', type=int, default=d.rounds, help='interleaved rounds (default: %(default)s)')
    p.add_argument('--iters', type=int, default=None, help=f'timed iterations per model, mode and round '
                                                            f'({sized(cpu["iters"], cuda["iters"])})')
    p.add_argument('--warmup', type=int, default=None, help=f'untimed iterations per model and mode first '
                                                             f'({sized(cpu["warmup"], cuda["warmup"])})')
    p.add_argument('--amp', default=None, choices=('bf16', 'fp16'), help='torch.autocast dtype (default: float32)')
    p.add_argument('--channels-last', action='store_true', help='channels_last models and inputs')
    p.add_argument('--compile', action='store_true', help='torch.compile every model (compiled in the warm-up)')
    p.add_argument('--modes', nargs='+', default=list(d.modes), choices=('infer', 'train'),
                   help='(default: %(default)s)')
    p.add_argument('--no-official', action='store_true', help='leave out the official-code references')
    p.add_argument('--no-control', action='store_true',
                   help="leave out the control rows (each plain twin timed again as a model; its ratio's distance "
                        'from 1 is the noise of the run)')
    p.add_argument('--no-memory', action='store_true', help='do not measure peak training memory')
    p.add_argument('--kernels', nargs='+', default=list(d.kernels), choices=KERNEL_MODES, metavar='MODE',
                   help='TIMM_GCT_KERNELS for the timm_gct rows, auto, triton or torch; several give one row each '
                        '(e.g. --kernels auto torch: the fused GPU kernels and the PyTorch path side by side) '
                        '(default: %(default)s)')
    p.add_argument('--seed', type=int, default=d.seed, help='data and round order (default: %(default)s)')
    p.add_argument('--output', default=None, help='output directory (default: output/bench/<time>-<device>)')
    p.set_defaults(func=_cmd_bench)
