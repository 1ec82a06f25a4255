""" Train a baseline and attention models side by side: the seeds' experiment in one command (``timm-gct compare``).

Every model is trained in lockstep on the very same batches: one data loader feeds each batch to every model in turn,
so the models see the same images in the same order with the same augmentation, start from the same seed, and share
one recipe (optimizer, schedule, loss). The pieces are timm's own: ``create_model``, ``resolve_data_config``,
``create_dataset`` / ``create_loader`` (train.py's dataset semantics and default augmentation), ``create_optimizer_v2``,
``create_scheduler_v2``, timm's loss, ``accuracy`` and ``AverageMeter``.

Results are written after every epoch (``epochs.csv``, ``results.json``), so an interrupted run keeps its finished
epochs; ``curves.png`` (needs matplotlib) is drawn at the end.
"""
import csv
import json
import math
import os
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
from timm.data import create_dataset, create_loader, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import AverageMeter, NativeScaler, accuracy, random_seed
from tqdm import tqdm

from .stats import count_macs
from .synthetic import SYNTHETIC_DESCRIPTION, SyntheticStripes

__all__ = [
    'CompareConfig', 'CompareError', 'DEFAULT_MODELS', 'ModelResult', 'SCHEDULES', 'compare', 'format_table',
    'plot_curves']

DEFAULT_MODELS = ('resnet18_cifar', 'gct_resnet18_cifar', 'nam_resnet18_cifar', 'gc_resnet18_cifar')
SYNTHETIC = 'synthetic'

_EPOCH_FIELDS = (
    'dataset', 'model', 'epoch', 'lr', 'train_loss', 'eval_loss', 'top1', 'top5', 'train_img_s', 'eval_img_s')
_EVAL_SPLITS = ('validation', 'val', 'valid', 'eval', 'evaluation')
SCHEDULES = ('cosine', 'tanh', 'poly')  # timm schedules that need no further settings and can step per update


class CompareError(ValueError):
    """A user error (unknown model, missing data, ...): the message is one line meant for the command line."""


@dataclass
class CompareConfig:
    """What to train and how. ``dataset=None`` means the embedded synthetic data, or an ImageFolder at ``data_dir``
    when one is given (train.py's semantics: ``torch/cifar10``, ``torch/cifar100``, ... or '' for a folder)."""
    models: Sequence[str] = DEFAULT_MODELS  # the first is the baseline
    dataset: Optional[str] = None
    data_dir: Optional[str] = None
    dataset_download: bool = False
    train_split: str = 'train'
    val_split: str = 'validation'
    num_classes: Optional[int] = None  # None: taken from the dataset
    synthetic_samples: Tuple[int, int] = (768, 384)  # train, validation
    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.1
    opt: str = 'sgd'
    momentum: float = 0.9
    weight_decay: float = 5e-4
    sched: str = 'cosine'
    warmup_epochs: int = 0
    smoothing: float = 0.0
    scale: Tuple[float, float] = (0.08, 1.0)  # random-resized-crop area, train.py's default
    seed: int = 0
    device: Optional[str] = None  # None: cuda when available, else cpu
    amp: bool = False
    amp_dtype: str = 'bfloat16'
    channels_last: bool = False
    workers: int = 0
    output: Optional[str] = None  # None: output/compare/<time>-<dataset>
    progress: bool = True


@dataclass
class ModelResult:
    """One model's row of the final table (accuracy and speed measured in this run)."""
    model: str
    params: int
    macs: int
    train_img_s: float  # median over epochs of images / second spent in this model's training steps
    eval_img_s: float
    best_top1: float
    top5: float  # at the epoch of the best top-1
    best_epoch: int
    delta_top1: Optional[float]  # best top-1 minus the baseline's; None for the baseline


@dataclass
class _Run:
    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Optional[NativeScaler]
    params: int
    macs: int
    epochs: List[Dict[str, Any]] = field(default_factory=list)


def _check_config(cfg: CompareConfig) -> None:
    names = list(cfg.models)
    if len(names) < 2:
        raise CompareError(f'--models {",".join(names)!r}: give a baseline and at least one model to compare with it')
    if len(set(names)) != len(names):
        raise CompareError(f'--models {",".join(names)!r}: a model is listed twice')
    for name in names:
        if not timm.is_model(name):
            raise CompareError(
                f'--models: unknown model {name!r}; `timm-gct list` shows this package\'s models, '
                '`timm.list_models()` all of timm\'s')
    for arg, value in (('epochs', cfg.epochs), ('batch-size', cfg.batch_size)):
        if not isinstance(value, int) or value < 1:
            raise CompareError(f'--{arg} {value!r}: must be a positive integer')
    if not cfg.lr > 0:
        raise CompareError(f'--lr {cfg.lr!r}: must be positive')
    if cfg.sched not in SCHEDULES:
        raise CompareError(f'--sched {cfg.sched!r}: must be one of {", ".join(SCHEDULES)}')
    if cfg.amp_dtype not in ('bfloat16', 'float16'):
        raise CompareError(f'--amp-dtype {cfg.amp_dtype!r}: must be bfloat16 or float16')
    if cfg.dataset == SYNTHETIC and cfg.data_dir:
        raise CompareError(f'--data-dir {cfg.data_dir!r}: the synthetic dataset is generated in-process, it reads no '
                           'files; leave out --dataset to use an ImageFolder there')


def _device(name: Optional[str]) -> torch.device:
    if name is None:
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise CompareError(f'--device {name!r}: {_one_line(e)}') from None
    return device


def _one_line(e: BaseException) -> str:
    return ' '.join(str(e).split()) or type(e).__name__


def _dataset_name(cfg: CompareConfig) -> str:
    if cfg.dataset is None:
        return '' if cfg.data_dir else SYNTHETIC
    return cfg.dataset


def _num_classes(dataset: Any) -> Optional[int]:
    classes = getattr(dataset, 'classes', None)
    if classes is None:
        classes = getattr(getattr(dataset, 'reader', None), 'class_to_idx', None)
    return len(classes) if classes else None


def _load_split(cfg: CompareConfig, name: str, split: str, is_training: bool) -> Any:
    try:
        return create_dataset(
            name, root=cfg.data_dir, split=split, is_training=is_training, download=cfg.dataset_download,
            batch_size=cfg.batch_size, seed=cfg.seed)
    except Exception as e:  # timm and torchvision raise assorted types for missing or malformed data
        hint = ' (add --dataset-download to fetch it)' if name.startswith('torch/') and not cfg.dataset_download else ''
        raise CompareError(
            f'--dataset {name or "(ImageFolder)"} --data-dir {cfg.data_dir}: cannot load split {split!r}: '
            f'{_one_line(e)}{hint}') from None


def _datasets(cfg: CompareConfig) -> Tuple[Any, Any, int, str]:
    """(train, eval, num_classes, description) for the configured dataset."""
    name = _dataset_name(cfg)
    if name == SYNTHETIC:
        n_train, n_val = cfg.synthetic_samples
        train = SyntheticStripes('train', n_train, seed=cfg.seed)
        val = SyntheticStripes('validation', n_val, seed=cfg.seed)
        return train, val, cfg.num_classes or SyntheticStripes.num_classes, SYNTHETIC_DESCRIPTION
    if not cfg.data_dir:
        raise CompareError(f'--dataset {name}: give --data-dir (where it is, or where to download it to)')
    if not os.path.isdir(cfg.data_dir) and not cfg.dataset_download:
        raise CompareError(f'--data-dir {cfg.data_dir!r}: no such directory')
    if not name and not any(os.path.isdir(os.path.join(cfg.data_dir, s)) for s in (cfg.val_split, *_EVAL_SPLITS)):
        raise CompareError(
            f'--data-dir {cfg.data_dir!r}: an ImageFolder needs a validation split folder beside train/ '
            f'(one of {", ".join(dict.fromkeys((cfg.val_split, *_EVAL_SPLITS)))})')
    train = _load_split(cfg, name, cfg.train_split, is_training=True)
    val = _load_split(cfg, name, cfg.val_split, is_training=False)
    num_classes = cfg.num_classes or _num_classes(train)
    if num_classes is None:
        raise CompareError(f'--dataset {name}: cannot tell the number of classes; give --num-classes')
    description = f'{name or "ImageFolder"} at {cfg.data_dir} ({len(train)} train / {len(val)} eval images)'
    return train, val, num_classes, description


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _build_runs(
        cfg: CompareConfig, num_classes: int, input_size: Tuple[int, int, int], updates_per_epoch: int,
        device: torch.device,
) -> List[_Run]:
    runs = []
    for name in cfg.models:
        random_seed(cfg.seed)  # every model starts from the same RNG state
        model = timm.create_model(name, num_classes=num_classes).to(device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        try:
            optimizer = create_optimizer_v2(
                model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
        except ValueError as e:
            raise CompareError(f'--opt {cfg.opt!r}: {_one_line(e)} (see timm.optim.list_optimizers())') from None
        # Stepped per update: compare runs are short, and a per-epoch step would hold the lr flat for a whole epoch.
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
            step_on_epochs=False, updates_per_epoch=updates_per_epoch)
        scaler = NativeScaler(device=device.type) if cfg.amp and cfg.amp_dtype == 'float16' else None
        meta = timm.create_model(name, num_classes=num_classes, device='meta').eval()
        runs.append(_Run(
            name=name, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
            params=sum(p.numel() for p in model.parameters()), macs=count_macs(meta, input_size)))
    return runs


def _labels(names: Sequence[str]) -> List[str]:
    """Short names for the progress bar: 'gct' for gct_resnet18_cifar next to a resnet18_cifar baseline."""
    base = names[0]
    out = ['base']
    for name in names[1:]:
        out.append(name[:-len(base)].rstrip('_') if name.endswith(base) and name != base else name)
    return out


class _Comparison:
    """The lockstep training of several models on one loader, with results written after every epoch."""

    def __init__(self, cfg: CompareConfig, log: Callable[[str], None]):
        _check_config(cfg)
        self.cfg = cfg
        self.log = log
        self.device = _device(cfg.device)
        self.dataset = _dataset_name(cfg) or 'imagefolder'
        train_ds, val_ds, self.num_classes, self.description = _datasets(cfg)

        # All models get the baseline's data config (input size, normalisation) so that they see identical tensors.
        baseline_cfg = timm.create_model(cfg.models[0], num_classes=self.num_classes, device='meta').pretrained_cfg
        self.data_config = resolve_data_config({}, pretrained_cfg=baseline_cfg)
        loader_kwargs = dict(
            input_size=self.data_config['input_size'], interpolation=self.data_config['interpolation'],
            mean=self.data_config['mean'], std=self.data_config['std'], crop_pct=self.data_config['crop_pct'],
            num_workers=cfg.workers, device=self.device, pin_memory=self.device.type == 'cuda')
        self.train_loader = create_loader(
            train_ds, batch_size=cfg.batch_size, is_training=True, scale=cfg.scale, **loader_kwargs)
        self.eval_loader = create_loader(val_ds, batch_size=cfg.batch_size, is_training=False, **loader_kwargs)
        if len(self.train_loader) == 0:
            raise CompareError(
                f'--batch-size {cfg.batch_size}: larger than the training set ({len(train_ds)} images); '
                'nothing to train on')

        self.runs = _build_runs(cfg, self.num_classes, self.data_config['input_size'], len(self.train_loader),
                                self.device)
        self.labels = _labels([r.name for r in self.runs])
        self.train_loss = LabelSmoothingCrossEntropy(cfg.smoothing) if cfg.smoothing > 0 else nn.CrossEntropyLoss()
        self.eval_loss = nn.CrossEntropyLoss()
        amp_dtype = torch.bfloat16 if cfg.amp_dtype == 'bfloat16' else torch.float16
        self.autocast = (
            (lambda: torch.autocast(device_type=self.device.type, dtype=amp_dtype)) if cfg.amp else nullcontext)

        stamp = datetime.now().strftime('%Y%m%d-%H%M%S')
        self.output = Path(cfg.output or os.path.join('output', 'compare', f'{stamp}-{self.dataset.replace("/", "-")}'))
        self.output.mkdir(parents=True, exist_ok=True)
        self.finished_epochs = 0
        self.interrupted = False

    # -- training ---------------------------------------------------------------------------------------------------
    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def _train_step(self, run: _Run, x: torch.Tensor, y: torch.Tensor, num_updates: int) -> float:
        run.model.train()
        with self.autocast():
            loss = self.train_loss(run.model(x), y)
        run.optimizer.zero_grad(set_to_none=True)
        if run.scaler is not None:
            run.scaler(loss, run.optimizer)
        else:
            loss.backward()
            run.optimizer.step()
        run.scheduler.step_update(num_updates=num_updates)
        return loss.item()

    def _train_epoch(self, epoch: int) -> Dict[str, Dict[str, float]]:
        losses = {r.name: AverageMeter() for r in self.runs}
        seconds = {r.name: 0.0 for r in self.runs}
        lrs = {r.name: r.optimizer.param_groups[0]['lr'] for r in self.runs}
        images = 0
        bar = tqdm(
            self.train_loader, desc=f'epoch {epoch + 1}/{self.cfg.epochs} train', unit='batch', leave=True,
            disable=not self.cfg.progress, file=sys.stderr, dynamic_ncols=True)
        for i, (x, y) in enumerate(bar):
            x = self._layout(x)
            num_updates = epoch * len(self.train_loader) + i + 1
            for run in self.runs:
                _sync(self.device)
                start = time.perf_counter()
                loss = self._train_step(run, x, y, num_updates)  # .item() synchronises
                seconds[run.name] += time.perf_counter() - start
                if not math.isfinite(loss):
                    raise CompareError(
                        f'{run.name}: the training loss became {loss} in epoch {epoch + 1} (try a lower --lr); the '
                        f'finished epochs are in {self.output}')
                losses[run.name].update(loss, x.shape[0])
            images += x.shape[0]
            total = sum(seconds.values())
            bar.set_postfix_str('loss ' + ' '.join(
                f'{label} {losses[r.name].avg:.3f}' for label, r in zip(self.labels, self.runs))
                + f' | {images * len(self.runs) / total:.0f} img/s')
        bar.close()
        return {r.name: dict(lr=lrs[r.name], train_loss=losses[r.name].avg, train_img_s=images / seconds[r.name])
                for r in self.runs}

    @torch.no_grad()
    def _evaluate(self, epoch: int) -> Dict[str, Dict[str, float]]:
        meters = {r.name: (AverageMeter(), AverageMeter(), AverageMeter()) for r in self.runs}
        seconds = {r.name: 0.0 for r in self.runs}
        images = 0
        topk = (1, min(5, self.num_classes))
        bar = tqdm(
            self.eval_loader, desc=f'epoch {epoch + 1}/{self.cfg.epochs} eval ', unit='batch', leave=False,
            disable=not self.cfg.progress, file=sys.stderr, dynamic_ncols=True)
        for x, y in bar:
            x = self._layout(x)
            for run in self.runs:
                run.model.eval()
                _sync(self.device)
                start = time.perf_counter()
                with self.autocast():
                    out = run.model(x)
                _sync(self.device)
                seconds[run.name] += time.perf_counter() - start
                loss, (top1, top5) = self.eval_loss(out.float(), y), accuracy(out, y, topk=topk)
                loss_m, top1_m, top5_m = meters[run.name]
                loss_m.update(loss.item(), x.shape[0])
                top1_m.update(top1.item(), x.shape[0])
                top5_m.update(top5.item(), x.shape[0])
            images += x.shape[0]
        bar.close()
        return {name: dict(eval_loss=m[0].avg, top1=m[1].avg, top5=m[2].avg, eval_img_s=images / seconds[name])
                for name, m in meters.items()}

    def run(self) -> List[ModelResult]:
        self.log(f'Dataset: {self.description}')
        self.log(
            f'Models: {", ".join(r.name for r in self.runs)} (baseline: {self.runs[0].name}), trained in lockstep on '
            f'the same batches; input {"x".join(map(str, self.data_config["input_size"]))}, {self.cfg.epochs} '
            f'epochs, batch {self.cfg.batch_size}, {self.cfg.opt} lr {self.cfg.lr} {self.cfg.sched}, '
            f'seed {self.cfg.seed}, device {self.device}{", amp " + self.cfg.amp_dtype if self.cfg.amp else ""}'
            f'{", channels_last" if self.cfg.channels_last else ""}')
        self.log(f'Writing to {self.output}')
        random_seed(self.cfg.seed)  # data order and augmentation
        try:
            for epoch in range(self.cfg.epochs):
                train = self._train_epoch(epoch)
                evals = self._evaluate(epoch)
                for run in self.runs:
                    run.scheduler.step(epoch + 1)
                    run.epochs.append(dict(
                        dataset=self.dataset, model=run.name, epoch=epoch + 1, **train[run.name], **evals[run.name]))
                self.finished_epochs = epoch + 1
                self._write()
                self.log(f'epoch {epoch + 1}/{self.cfg.epochs} eval top-1: ' + '  '.join(
                    f'{label} {evals[r.name]["top1"]:.2f}' for label, r in zip(self.labels, self.runs)))
        except KeyboardInterrupt:
            self.interrupted = True
            self.log(f'Interrupted: keeping the {self.finished_epochs} finished epoch(s) in {self.output}')
            self._write()
        return self.results()

    # -- results ----------------------------------------------------------------------------------------------------
    def results(self) -> List[ModelResult]:
        results = []
        base_top1 = None
        for run in self.runs:
            if not run.epochs:
                continue
            best = max(run.epochs, key=lambda e: e['top1'])
            base_top1 = best['top1'] if base_top1 is None else base_top1
            results.append(ModelResult(
                model=run.name, params=run.params, macs=run.macs,
                train_img_s=statistics.median(e['train_img_s'] for e in run.epochs),
                eval_img_s=statistics.median(e['eval_img_s'] for e in run.epochs),
                best_top1=best['top1'], top5=best['top5'], best_epoch=best['epoch'],
                delta_top1=None if run is self.runs[0] else best['top1'] - base_top1))
        return results

    def _write(self) -> None:
        rows = [e for run in self.runs for e in run.epochs]
        with open(self.output / 'epochs.csv', 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=_EPOCH_FIELDS, lineterminator='\n')
            writer.writeheader()
            writer.writerows(rows)
        config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.cfg).items()}
        summary = dict(
            dataset=self.description, synthetic=self.dataset == SYNTHETIC, baseline=self.runs[0].name,
            config=dict(config, models=list(self.cfg.models), device=str(self.device)),
            input_size=list(self.data_config['input_size']), num_classes=self.num_classes,
            versions=dict(timm=timm.__version__, torch=torch.__version__),
            finished_epochs=self.finished_epochs, interrupted=self.interrupted,
            results=[asdict(r) for r in self.results()], epochs=rows)
        with open(self.output / 'results.json', 'w') as f:
            json.dump(summary, f, indent=2)


def format_table(results: Sequence[ModelResult], dataset: str) -> str:
    """The final table as text; ``dataset`` is named above it."""
    head = ('model', 'params (M)', 'GMACs', 'train img/s', 'eval img/s', 'best top-1', 'top-5', 'Δ top-1')
    rows = [[
        r.model, f'{r.params / 1e6:.2f}', f'{r.macs / 1e9:.3f}', f'{r.train_img_s:.1f}', f'{r.eval_img_s:.1f}',
        f'{r.best_top1:.2f}', f'{r.top5:.2f}', 'baseline' if r.delta_top1 is None else f'{r.delta_top1:+.2f}',
    ] for r in results]
    widths = [max(len(row[i]) for row in [list(head)] + rows) for i in range(len(head))]
    lines = [f'Results on {dataset}']
    for row in [list(head)] + rows:
        lines.append('  '.join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return '\n'.join(lines)


def plot_curves(csv_path: Path, png_path: Path, title: str) -> bool:
    """Loss and accuracy per epoch for every model in ``csv_path``; False when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    with open(csv_path, newline='') as f:
        rows = list(csv.DictReader(f))
    fig = Figure(figsize=(12, 3.8), layout='constrained')
    axes = fig.subplots(1, 3)
    panels = (('train_loss', 'train loss'), ('eval_loss', 'eval loss'), ('top1', 'eval top-1 (%)'))
    for ax, (key, label) in zip(axes, panels):
        for i, model in enumerate(dict.fromkeys(r['model'] for r in rows)):
            points = [(int(r['epoch']), float(r[key])) for r in rows if r['model'] == model]
            style = dict(color='black', linestyle='--', label=f'{model} (baseline)') if i == 0 else dict(label=model)
            ax.plot(*zip(*points), marker='o', **style)
        ax.set_xlabel('epoch')
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[-1].legend(fontsize='small')
    fig.suptitle(title)
    fig.savefig(png_path, dpi=110)
    return True


def compare(cfg: CompareConfig, log: Callable[[str], None] = print) -> Tuple[List[ModelResult], Path, bool]:
    """Run the comparison; returns (results, output directory, interrupted)."""
    comparison = _Comparison(cfg, log)
    results = comparison.run()
    if results:
        log(format_table(results, comparison.description))
        if comparison.dataset == SYNTHETIC:
            log('The synthetic data only shows that training works; it says nothing about real-data accuracy.')
        log('One run per model: repeat with other --seed values before reading small differences.')
    written = ['epochs.csv', 'results.json']
    if comparison.finished_epochs:
        title = f'{comparison.dataset} ({comparison.finished_epochs} epochs, seed {cfg.seed})'
        if plot_curves(comparison.output / 'epochs.csv', comparison.output / 'curves.png', title):
            written.append('curves.png')
        else:
            log('matplotlib is not installed, so no curves.png (pip install "timm_gct[plot]")')
    log(f'Wrote {", ".join(written)} to {comparison.output}')
    return results, comparison.output, comparison.interrupted
