""" Benchmark output: the text table, the CSV and the cost-ratio PNG. """
import csv
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .._text import text_table
from .runner import BASELINE, BenchConfig, BenchResult

__all__ = ['CSV_COLUMNS', 'format_table', 'plot_ratios', 'write_csv']

CSV_COLUMNS = (
    'model', 'impl', 'baseline', 'device', 'amp', 'channels_last', 'compile', 'batch_size', 'img_size', 'rounds',
    'infer_ms', 'infer_ratio', 'infer_ratio_q1', 'infer_ratio_q3',
    'train_ms', 'train_ratio', 'train_ratio_q1', 'train_ratio_q3',
    'train_peak_mib', 'train_peak_ratio',
)


def _num(value: Optional[float], spec: str) -> str:
    return '' if value is None else format(value, spec)


def _csv_row(r: BenchResult, cfg: BenchConfig, img_size: int) -> Dict[str, str]:
    row = {
        'model': r.entry.name, 'impl': r.entry.impl, 'baseline': r.entry.baseline, 'device': str(cfg.device),
        'amp': cfg.amp or '', 'channels_last': str(cfg.channels_last), 'compile': str(cfg.compile),
        'batch_size': str(cfg.batch_size), 'img_size': str(img_size), 'rounds': str(cfg.rounds),
        'train_peak_mib': _num(r.peak_mib, '.1f'),
        'train_peak_ratio': _num(r.memory_ratio, '.4f'),
    }
    for mode in ('infer', 'train'):
        spread = r.ratio_spread(mode)
        row.update({
            f'{mode}_ms': _num(r.median_ms(mode), '.2f'), f'{mode}_ratio': _num(r.ratio(mode), '.4f'),
            f'{mode}_ratio_q1': _num(spread and spread[0], '.4f'),
            f'{mode}_ratio_q3': _num(spread and spread[1], '.4f'),
        })
    return row


def write_csv(path: Path, results: Sequence[BenchResult], cfg: BenchConfig, img_size: int) -> None:
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, lineterminator='\n')
        writer.writeheader()
        writer.writerows(_csv_row(r, cfg, img_size) for r in results)


def format_table(results: Sequence[BenchResult]) -> str:
    """Median ms and median ratio to the plain twin per mode (with the quartiles of the ratio), peak training memory."""
    modes = [m for m in ('infer', 'train') if results and m in results[0].times]
    head = ['model', 'impl']
    for mode in modes:
        head += [f'{mode} ms', f'{mode} ×twin', 'quartiles']
    memory = any(r.peak_bytes is not None for r in results)
    if memory:
        head += ['train peak MiB', 'mem ×twin']
    rows: List[List[str]] = []
    for r in results:
        row = [r.entry.name, r.entry.impl]
        for mode in modes:
            q = r.ratio_spread(mode)
            row += [_num(r.median_ms(mode), '.1f'), _num(r.ratio(mode), '.3f'), f'{q[0]:.3f}-{q[1]:.3f}' if q else '']
        if memory:
            row += [_num(r.peak_mib, '.0f'), _num(r.memory_ratio, '.3f')]
        rows.append(row)
    return text_table(head, rows, left=2)


def plot_ratios(path: Path, results: Sequence[BenchResult], title: str) -> bool:
    """Horizontal bars: each model's median cost ratio to its plain twin, per mode (quartiles as error bars) and for
    peak training memory. False when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        return False
    shown = [r for r in results if r.entry.impl != BASELINE]
    panels = [(m, f'{m} time / plain twin') for m in ('infer', 'train') if shown and m in shown[0].times]
    if any(r.memory_ratio is not None for r in shown):
        panels.append(('memory', 'train peak memory / plain twin'))
    fig = Figure(figsize=(4.2 * len(panels) + 2.5, 0.32 * len(shown) + 1.6), layout='constrained')
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    labels = [r.entry.label for r in shown]
    colors = {'timm_gct': 'tab:blue', 'official code': 'tab:orange', 'timm': 'tab:gray', 'control': 'silver'}
    y = list(range(len(shown)))[::-1]
    for ax, (key, label) in zip(axes, panels):
        if key == 'memory':
            values = [r.memory_ratio or 0. for r in shown]
            err = None
        else:
            values = [r.ratio(key) for r in shown]
            spreads = [r.ratio_spread(key) for r in shown]
            err = [[v - s[0] for v, s in zip(values, spreads)], [s[1] - v for v, s in zip(values, spreads)]]
        ax.barh(y, [v - 1. for v in values], left=1., xerr=err, color=[colors.get(r.entry.impl, 'tab:green')
                                                                       for r in shown], capsize=2)
        ax.axvline(1., color='black', linewidth=0.8)
        ax.set_xlabel(label)
        ax.grid(axis='x', alpha=0.3)
    axes[0].set_yticks(y, labels, fontsize='small')
    shown_impls = dict.fromkeys(r.entry.impl for r in shown)
    axes[-1].legend(handles=[Patch(color=colors.get(i, 'tab:green'), label=i) for i in shown_impls],
                    fontsize='small', loc='lower right')
    fig.suptitle(title, fontsize='medium')
    fig.savefig(path, dpi=110)
    return True
