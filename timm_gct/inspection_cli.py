""" ``timm-gct inspect``: the input batch, the CSV tables and the PNGs (matplotlib, optional) of timm_gct.inspection.

* ``parameters.csv`` / ``parameters.png``: per attention layer (x: depth, shallow to deep) the distribution of each
  gate parameter, as violins with the median marked; a line at 0 (for GCT's gamma: below, channels cooperate; above,
  they compete).
* ``gates.csv`` / ``gates.png``: per layer the effective channel gate over the batch, a violin over channels of the
  per-channel batch mean, and the mean batch spread.
* ``attention.png``: for the spatial mechanisms, each sample with the attention map of (up to) four layers overlaid.
"""
import argparse
import csv
import sys
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import timm
import torch
from PIL import Image
from timm.models import split_model_name_tag
from torch import nn

from .hub import build_from_checkpoint, load_train_checkpoint
from .inspection import GATE_COLUMNS, PARAM_COLUMNS, Inspection, NoAttentionError, inspect_model
from .synthetic import SYNTHETIC_DESCRIPTION, SyntheticStripes

__all__ = [
    'IMAGE_SUFFIXES', 'add_inspect_parser', 'load_images', 'plot_attention', 'plot_gates', 'plot_parameters',
    'write_csv',
]

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')


def load_images(model: nn.Module, image_dir: Optional[str], num_images: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Up to ``num_images`` images through the model's eval transform (timm's ``resolve_data_config``): the
    normalised batch for the model and the same crops in [0, 1] for display. Without ``image_dir``, the embedded
    synthetic stripe images (timm_gct.synthetic, validation split)."""
    if image_dir is None:
        pil = [SyntheticStripes('validation', num_samples=num_images)[i][0] for i in range(num_images)]
    else:
        folder = Path(image_dir)
        if not folder.is_dir():
            raise ValueError(f'images={image_dir!r} is not a directory.')
        files = sorted(p for p in folder.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES)[:num_images]
        if not files:
            raise ValueError(f'images={image_dir!r} holds no image file (expected one of {", ".join(IMAGE_SUFFIXES)}).')
        pil = [Image.open(p).convert('RGB') for p in files]
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    batch = torch.stack([transform(img) for img in pil])
    mean = torch.tensor(config['mean']).view(1, 3, 1, 1)
    std = torch.tensor(config['std']).view(1, 3, 1, 1)
    return batch, (batch * std + mean).clamp(0, 1)


def write_csv(path: Path, rows: Sequence[Dict[str, object]], columns: Sequence[str]) -> None:
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def _figure(rows: int, cols: int, width: float, height: float):
    from matplotlib.figure import Figure  # optional dependency (the `plot` extra)
    fig = Figure(figsize=(width, height), layout='constrained')
    return fig, fig.subplots(rows, cols, squeeze=False)


def _layer_axis(ax, names: Sequence[str]) -> None:
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=7 if len(names) > 20 else 8)
    ax.set_xlabel('attention layer (shallow to deep)')
    ax.axhline(0., color='grey', lw=0.6, zorder=0)


def _violins(ax, data: List[torch.Tensor]) -> None:
    parts = ax.violinplot([d.numpy() if d.numel() > 1 else d.repeat(2).numpy() for d in data],
                          positions=range(len(data)), showmedians=True, showextrema=True, widths=0.8)
    for body in parts['bodies']:
        body.set_alpha(0.6)


def plot_parameters(path: Path, model_name: str, inspection: Inspection) -> None:
    by_param: Dict[str, List[Tuple[str, torch.Tensor]]] = {}
    for layer, params in inspection.param_values.items():
        for pname, values in params.items():
            by_param.setdefault(pname, []).append((layer, values))
    names = list(by_param)
    fig, axes = _figure(len(names), 1, max(8., 0.28 * len(inspection.param_values) + 3), 2.8 * len(names) + 0.6)
    for ax, pname in zip(axes[:, 0], names):
        layers = [layer for layer, _ in by_param[pname]]
        _violins(ax, [v for _, v in by_param[pname]])
        _layer_axis(ax, layers)
        ax.set_ylabel(pname)
        ax.set_title(f'{pname} per attention layer', fontsize=10)
    fig.suptitle(f'{model_name}: attention parameters by depth')
    fig.savefig(path, dpi=110)


def plot_gates(path: Path, model_name: str, inspection: Inspection, source: str) -> None:
    names = list(inspection.gates)
    fig, axes = _figure(2, 1, max(8., 0.28 * len(names) + 3), 6.4)
    top, bottom = axes[:, 0]
    _violins(top, [g.mean(dim=0) for g in inspection.gates.values()])
    _layer_axis(top, names)
    top.axhline(1., color='tab:red', lw=0.6, ls='--', zorder=0)
    top.set_ylabel('batch-mean gate per channel')
    top.set_title('effective channel gate <y_c, x_c> / <x_c, x_c> (1 = unchanged)', fontsize=10)
    spread = [row['std_over_batch'] for row in inspection.gate_rows]
    bottom.bar(range(len(names)), spread, color='tab:blue', alpha=0.7)
    _layer_axis(bottom, names)
    bottom.set_ylabel('std over the batch')
    bottom.set_title('how much the gate varies between images (mean over channels)', fontsize=10)
    fig.suptitle(f'{model_name}: gates on {source}')
    fig.savefig(path, dpi=110)


def plot_attention(path: Path, model_name: str, inspection: Inspection, display: torch.Tensor, source: str) -> bool:
    """Each sample with up to four layers' maps overlaid (the last layer of each stage first). False: no maps."""
    if not inspection.maps:
        return False
    per_stage: Dict[str, str] = {}
    for name in inspection.maps:
        per_stage[name.split('.')[0]] = name  # the deepest map of each stage
    layers = list(per_stage.values())[-4:]
    n = display.shape[0]
    fig, axes = _figure(n, len(layers) + 1, 2.2 * (len(layers) + 1), 2.2 * n + 0.5)
    size = display.shape[-2:]
    for i in range(n):
        image = display[i].permute(1, 2, 0).numpy()
        axes[i, 0].imshow(image)
        axes[i, 0].set_ylabel(f'image {i}', fontsize=8)
        for j, layer in enumerate(layers, start=1):
            amap = inspection.maps[layer][i][None, None]
            amap = torch.nn.functional.interpolate(amap, size=size, mode='bilinear', align_corners=False)[0, 0]
            lo, hi = amap.min(), amap.max()
            amap = (amap - lo) / (hi - lo) if hi > lo else torch.zeros_like(amap)
            axes[i, j].imshow(image)
            axes[i, j].imshow(amap.numpy(), cmap='jet', alpha=0.5, vmin=0, vmax=1)
            if i == 0:
                h, w = inspection.maps[layer].shape[-2:]
                axes[i, j].set_title(f'{layer} ({h}x{w})', fontsize=8)
        if i == 0:
            axes[i, 0].set_title('input', fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f'{model_name}\nattention maps on {source}\n(each map scaled to its own min-max: red high, blue low)',
                 fontsize=9)
    fig.savefig(path, dpi=100)
    return True


def _build(model_name: str, checkpoint: Optional[str], use_ema: bool) -> nn.Module:
    if checkpoint:
        return build_from_checkpoint(model_name, load_train_checkpoint(checkpoint, use_ema=use_ema))
    _, tag = split_model_name_tag(model_name)
    return timm.create_model(model_name, pretrained=bool(tag)).eval()


def _cmd_inspect(args: argparse.Namespace) -> int:
    prog = 'timm-gct inspect'
    try:
        model = _build(args.model, args.checkpoint, args.use_ema)
        images, display = load_images(model, args.images, args.num_images)
        result = inspect_model(model, images)
    except NoAttentionError as e:
        print(f'{prog}: error: {args.model}: {e}', file=sys.stderr)
        return 2
    except (RuntimeError, ValueError, OSError) as e:  # timm: unknown model or tag; CardError; bad files
        print(f'{prog}: error: {e}', file=sys.stderr)
        return 2
    out = Path(args.output or f'output/inspect/{datetime.now():%Y%m%d-%H%M%S}-{args.model}')
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / 'parameters.csv', result.param_rows, PARAM_COLUMNS)
    write_csv(out / 'gates.csv', result.gate_rows, GATE_COLUMNS)
    written = ['parameters.csv', 'gates.csv']
    source = f'{len(images)} images from {args.images}' if args.images else \
        f'{len(images)} synthetic stripe images'
    weights = Path(args.checkpoint).name if args.checkpoint else \
        'pretrained weights' if split_model_name_tag(args.model)[1] else 'untrained weights'
    title = f'{args.model} ({weights})'
    try:
        from matplotlib.figure import Figure  # noqa: F401  (the `plot` extra)
    except ImportError:
        print(f'{prog}: matplotlib is not installed, so no PNGs (pip install "timm_gct[plot]")', file=sys.stderr)
    else:
        plot_parameters(out / 'parameters.png', title, result)
        plot_gates(out / 'gates.png', title, result, source)
        written += ['parameters.png', 'gates.png']
        if plot_attention(out / 'attention.png', title, result, display, source):
            written.append('attention.png')
    layers = len(result.gate_rows)
    print(f'{prog}: {layers} attention layer calls in {args.model}; {source}; wrote {", ".join(written)} to {out}')
    return 0


def add_inspect_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'inspect', help='statistics and pictures of the attention layers: parameters by depth, gates, maps',
        description='Per attention layer of MODEL (shallow to deep): the distribution of its gate parameters '
                    '(parameters.csv / .png; no data needed), its effective channel gate over a batch of images '
                    '(gates.csv / .png) and, for Triplet, GC, criss-cross and Bi-attention, the attention map of '
                    'each image (attention.png). PNGs need matplotlib.')
    p.add_argument('model', metavar='MODEL[.TAG]', help='a registered model; a TAG loads its pretrained weights')
    p.add_argument('--checkpoint', default=None,
                   help="weights written by train.py (model_best.pth.tar), a state dict or a .safetensors file")
    p.add_argument('--use-ema', action='store_true', help="the checkpoint's EMA weights (train.py --model-ema)")
    p.add_argument('--images', default=None, metavar='DIR',
                   help=f'a folder of images (searched recursively; default: {SYNTHETIC_DESCRIPTION})')
    p.add_argument('--num-images', type=_positive_int, default=8, help='images in the batch (default: 8)')
    p.add_argument('--output', default=None, help='output directory (default: output/inspect/<time>-<model>)')
    p.set_defaults(func=_cmd_inspect)


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f'{value!r} is not allowed; expected a positive integer')
    return int(value)
