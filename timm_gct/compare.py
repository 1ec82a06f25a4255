""" Train a baseline and attention models side by side: the seeds' experiment in one command (``timm-gct compare``).

Every model is trained in lockstep on the very same batches: one data loader feeds each batch to every model in turn,
so the models see the same images in the same order with the same augmentation, start from the same seed, and share
one recipe (optimizer, schedule, loss). The host random state is put back before each model's step and after the last,
so every model draws the same dropout / drop-path numbers and the data stream does not depend on which models are
listed. The pieces are timm's own: ``create_model``, ``resolve_data_config``, ``create_dataset`` / ``create_loader``
(train.py's dataset semantics and default augmentation), ``create_optimizer_v2``, ``create_scheduler_v2``, timm's
loss, ``accuracy`` and ``AverageMeter``.

Results are written after every epoch (``epochs.csv``, ``results.json``), so an interrupted run keeps its finished
epochs; ``curves.png`` (needs matplotlib) is drawn at the end, and with ``save_weights`` each model's final weights
(``<model>.safetensors``, for ``timm-gct inspect --checkpoint``). A model whose training loss stops being finite is
reported as diverged and dropped; the others go on.
"""
import csv
import json
import math
import os
import random
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn
from timm.data import create_dataset, create_loader, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from safetensors.torch import save_file
from timm.utils import AverageMeter, NativeScaler, accuracy, random_seed
from tqdm import tqdm

from ._device import one_line, resolve_device, sync
from ._text import text_table
from .stats import count_macs
from .synthetic import SYNTHETIC_DESCRIPTION, SyntheticStripes

__all__ = [
    'CompareConfig', 'CompareError', 'DEFAULT_MODELS', 'ModelResult', 'SCHEDULES', 'compare', 'format_table',
    'plot_curves']

DEFAULT_MODELS = ('resnet18_cifar', 'gct_resnet18_cifar', 'nam_resnet18_cifar', 'gc_resnet18_cifar')
SYNTHETIC = 'synthetic'

_EPOCH_FIELDS = (
    'dataset', 'model', 'epoch', 'lr', 'train_loss', 'eval_loss', 'top1', 'top5', 'train_img_s', 'eval_img_s')
_TRAIN_SPLITS = ('train', 'training')  # timm's split synonyms (timm.data.dataset_factory)
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
    amp_dtype: Optional[str] = None  # None: float16 (with a loss scaler) on CUDA as train.py, else bfloat16
    channels_last: bool = False
    workers: int = 0
    output: Optional[str] = None  # None: output/compare/<time>-<dataset>
    progress: bool = True
    save_weights: bool = False  # <model>.safetensors with each model's weights after the last epoch


@dataclass
class ModelResult:
    """One model's row of the final table (accuracy and speed measured in this run)."""
    model: str
    params: int
    macs: int
    train_img_s: float  # median over epochs of images / second spent in this model's training steps
    eval_img_s: float
    best_top1: float
    top5: Optional[float]  # at the epoch of the best top-1; None with fewer than 5 classes
    best_epoch: int
    is_baseline: bool
    delta_top1: Optional[float]  # best top-1 minus the baseline's; None for the baseline or without a baseline row
    diverged: Optional[int]  # epoch in which the training loss stopped being finite, None if it did not


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
    diverged: Optional[int] = None


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
    samples = cfg.synthetic_samples
    if len(samples) != 2 or not all(isinstance(n, int) and n > 0 for n in samples):
        raise CompareError(f'--synthetic-samples {" ".join(map(str, samples))}: must be two positive integers')
    if cfg.num_classes is not None and not (isinstance(cfg.num_classes, int) and cfg.num_classes > 0):
        raise CompareError(f'--num-classes {cfg.num_classes!r}: must be a positive integer')
    if not (isinstance(cfg.workers, int) and cfg.workers >= 0):
        raise CompareError(f'--workers {cfg.workers!r}: must be an integer >= 0')
    if not cfg.lr > 0:
        raise CompareError(f'--lr {cfg.lr!r}: must be positive')
    for arg, value in (('momentum', cfg.momentum), ('weight-decay', cfg.weight_decay)):
        if not value >= 0:
            raise CompareError(f'--{arg} {value!r}: must be >= 0')
    if not 0 <= cfg.smoothing < 1:
        raise CompareError(f'--smoothing {cfg.smoothing!r}: must be in [0, 1)')
    if cfg.sched not in SCHEDULES:
        raise CompareError(f'--sched {cfg.sched!r}: must be one of {", ".join(SCHEDULES)}')
    if cfg.amp_dtype not in (None, 'bfloat16', 'float16'):
        raise CompareError(f'--amp-dtype {cfg.amp_dtype!r}: must be bfloat16 or float16')
    if cfg.dataset == SYNTHETIC and cfg.data_dir:
        raise CompareError(f'--data-dir {cfg.data_dir!r}: the synthetic dataset is generated in-process, it reads no '
                           'files; leave out --dataset to use an ImageFolder there')


def _device(name: Optional[str]) -> torch.device:
    try:
        return resolve_device(name)
    except ValueError as e:
        raise CompareError(str(e)) from None


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
        missing = 'download=True' in str(e) and not cfg.dataset_download
        hint = ' (add --dataset-download to fetch it)' if missing else ''
        raise CompareError(
            f'--dataset {name or "(ImageFolder)"} --data-dir {cfg.data_dir}: cannot load split {split!r}: '
            f'{one_line(e)}{hint}') from None


def _datasets(cfg: CompareConfig) -> Tuple[Any, Any, int, str]:
    """(train, eval, num_classes, description) for the configured dataset."""
    name = _dataset_name(cfg)
    if name == SYNTHETIC:
        n_train, n_val = cfg.synthetic_samples
        train = SyntheticStripes('train', n_train, seed=cfg.seed)
        val = SyntheticStripes('validation', n_val, seed=cfg.seed)
        num_classes = cfg.num_classes or SyntheticStripes.num_classes
        if num_classes < SyntheticStripes.num_classes:
            raise CompareError(f'--num-classes {num_classes}: the synthetic dataset has {SyntheticStripes.num_classes}')
        return train, val, num_classes, SYNTHETIC_DESCRIPTION
    if not cfg.data_dir:
        raise CompareError(f'--dataset {name}: give --data-dir (where it is, or where to download it to)')
    if not os.path.isdir(cfg.data_dir) and not cfg.dataset_download:
        raise CompareError(f'--data-dir {cfg.data_dir!r}: no such directory')
    if not name:
        # timm falls back to the root folder for a missing split, which would train and evaluate on the same images
        for kind, split, synonyms in (('training', cfg.train_split, _TRAIN_SPLITS),
                                      ('validation', cfg.val_split, _EVAL_SPLITS)):
            folders = tuple(dict.fromkeys((split, *synonyms)))
            if not any(os.path.isdir(os.path.join(cfg.data_dir, f)) for f in folders):
                raise CompareError(
                    f'--data-dir {cfg.data_dir!r}: an ImageFolder needs a {kind} split folder (one of '
                    f'{", ".join(folders)})')
    train = _load_split(cfg, name, cfg.train_split, is_training=True)
    val = _load_split(cfg, name, cfg.val_split, is_training=False)
    found = _num_classes(train)
    num_classes = cfg.num_classes or found
    if num_classes is None:
        raise CompareError(f'--dataset {name}: cannot tell the number of classes; give --num-classes')
    if found is not None and num_classes < found:
        raise CompareError(f'--num-classes {num_classes}: the dataset has {found} classes')
    description = f'{name or "ImageFolder"} at {cfg.data_dir} ({len(train)} train / {len(val)} eval images)'
    return train, val, num_classes, description


class _RandomState:
    """The host random state that data augmentation and model layers (dropout, drop-path) draw from."""

    def __init__(self):
        self.torch, self.python, self.numpy = torch.get_rng_state(), random.getstate(), np.random.get_state()

    def restore(self) -> None:
        torch.set_rng_state(self.torch)
        random.setstate(self.python)
        np.random.set_state(self.numpy)


def _build_runs(
        cfg: CompareConfig, num_classes: int, input_size: Tuple[int, int, int], updates_per_epoch: int,
        device: torch.device,
) -> List[_Run]:
    runs = []
    for name in cfg.models:
        random_seed(cfg.seed)  # every model starts from the same RNG state
        try:
            meta = timm.create_model(name, num_classes=num_classes, device='meta').eval()
            macs = count_macs(meta, input_size)
        except Exception as e:  # e.g. a fixed-size ViT next to a 32 x 32 baseline
            raise CompareError(
                f'--models: {name} cannot take the baseline\'s input {"x".join(map(str, input_size))}: '
                f'{one_line(e)}') from None
        random_seed(cfg.seed)
        model = timm.create_model(name, num_classes=num_classes).to(device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        try:
            optimizer = create_optimizer_v2(
                model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
        except ValueError as e:
            raise CompareError(
                f'--opt {cfg.opt!r} (--lr {cfg.lr}, --momentum {cfg.momentum}, --weight-decay {cfg.weight_decay}): '
                f'{one_line(e)}') from None
        # Stepped per update: compare runs are short, and a per-epoch step would hold the lr flat for a whole epoch.
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
            step_on_epochs=False, updates_per_epoch=updates_per_epoch)
        scaler = NativeScaler(device=device.type) if cfg.amp and _amp_dtype(cfg, device) == torch.float16 else None
        runs.append(_Run(
            name=name, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
            params=sum(p.numel() for p in model.parameters()), macs=macs))
    return runs


def _amp_dtype(cfg: CompareConfig, device: torch.device) -> torch.dtype:
    name = cfg.amp_dtype or ('float16' if device.type == 'cuda' else 'bfloat16')
    return torch.float16 if name == 'float16' else torch.bfloat16


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
            input_size=self.data_config['input_size'], mean=self.data_config['mean'], std=self.data_config['std'],
            crop_pct=self.data_config['crop_pct'], num_workers=cfg.workers, device=self.device,
            pin_memory=self.device.type == 'cuda')
        # train.py's default training interpolation is 'random' (bilinear or bicubic per image)
        self.train_loader = create_loader(
            train_ds, batch_size=cfg.batch_size, is_training=True, scale=cfg.scale, interpolation='random',
            **loader_kwargs)
        self.eval_loader = create_loader(
            val_ds, batch_size=cfg.batch_size, is_training=False, interpolation=self.data_config['interpolation'],
            **loader_kwargs)
        if len(self.train_loader) == 0:
            raise CompareError(
                f'--batch-size {cfg.batch_size}: larger than the training set ({len(train_ds)} images); '
                'nothing to train on')

        if self.device.type == 'cuda':
            torch.backends.cudnn.benchmark = True  # as train.py
        self.runs = _build_runs(cfg, self.num_classes, self.data_config['input_size'], len(self.train_loader),
                                self.device)
        self.labels = _labels([r.name for r in self.runs])
        self.train_loss = LabelSmoothingCrossEntropy(cfg.smoothing) if cfg.smoothing > 0 else nn.CrossEntropyLoss()
        self.eval_loss = nn.CrossEntropyLoss()
        self.amp_dtype = _amp_dtype(cfg, self.device) if cfg.amp else None
        self.topk = (1, 5) if self.num_classes >= 5 else (1,)

        stamp = datetime.now().strftime('%Y%m%d-%H%M%S')
        self.output = Path(cfg.output or os.path.join('output', 'compare', f'{stamp}-{self.dataset.replace("/", "-")}'))
        try:
            self.output.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CompareError(f'--output {str(self.output)!r}: {one_line(e)}') from None
        (self.output / 'curves.png').unlink(missing_ok=True)  # never leave an earlier run's picture beside new results
        self.finished_epochs = 0
        self.interrupted = False

    def _active(self) -> List[_Run]:
        return [r for r in self.runs if r.diverged is None]

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    # -- training ---------------------------------------------------------------------------------------------------
    def _train_step(self, run: _Run, x: torch.Tensor, y: torch.Tensor, num_updates: int) -> float:
        run.model.train()
        with self._autocast():
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
        runs = self._active()
        losses = {r.name: AverageMeter() for r in runs}
        seconds = {r.name: 0.0 for r in runs}
        timed = {r.name: 0 for r in runs}  # images whose step was timed
        lrs = {r.name: r.optimizer.param_groups[0]['lr'] for r in runs}  # at the epoch's first update
        bar = tqdm(
            self.train_loader, desc=f'epoch {epoch + 1}/{self.cfg.epochs} train', unit='batch', leave=True,
            disable=not self.cfg.progress, file=sys.stderr, dynamic_ncols=True)
        for i, (x, y) in enumerate(bar):
            x = self._layout(x)
            num_updates = epoch * len(self.train_loader) + i + 1
            state = _RandomState()
            for run in self._active():
                state.restore()  # the same dropout / drop-path draws for every model
                sync(self.device)
                start = time.perf_counter()
                loss = self._train_step(run, x, y, num_updates)  # .item() waits for the step
                if epoch or i:  # the very first step of each model pays one-off allocation and kernel selection
                    seconds[run.name] += time.perf_counter() - start
                    timed[run.name] += x.shape[0]
                if not math.isfinite(loss):
                    run.diverged = epoch + 1
                    (bar.write if self.cfg.progress else self.log)(
                        f'{run.name}: the training loss became {loss} in epoch {epoch + 1}; it is dropped from the '
                        'comparison (try a lower --lr)')
                    continue
                losses[run.name].update(loss, x.shape[0])
            state.restore()  # the loader's next draws do not depend on the models
            if not self._active():
                break
            total = sum(seconds.values())
            speed = f' | {sum(timed.values()) / total:.0f} img/s' if total else ''
            bar.set_postfix_str('loss ' + ' '.join(
                f'{label} {losses[r.name].avg:.3f}' for label, r in zip(self.labels, self.runs) if r.diverged is None)
                + speed)
        bar.close()
        return {r.name: dict(lr=lrs[r.name], train_loss=losses[r.name].avg,
                             train_img_s=timed[r.name] / seconds[r.name] if seconds[r.name] else float('nan'))
                for r in self._active()}

    @torch.no_grad()
    def _evaluate(self, epoch: int) -> Dict[str, Dict[str, float]]:
        runs = self._active()
        meters = {r.name: [AverageMeter() for _ in range(1 + len(self.topk))] for r in runs}
        seconds = {r.name: 0.0 for r in runs}
        timed = 0
        bar = tqdm(
            self.eval_loader, desc=f'epoch {epoch + 1}/{self.cfg.epochs} eval ', unit='batch', leave=False,
            disable=not self.cfg.progress, file=sys.stderr, dynamic_ncols=True)
        for i, (x, y) in enumerate(bar):
            x = self._layout(x)
            for run in runs:
                run.model.eval()
                sync(self.device)
                start = time.perf_counter()
                with self._autocast():
                    out = run.model(x)
                sync(self.device)
                if epoch or i:
                    seconds[run.name] += time.perf_counter() - start
                loss_m, *acc_m = meters[run.name]
                loss_m.update(self.eval_loss(out.float(), y).item(), x.shape[0])
                for m, acc in zip(acc_m, accuracy(out, y, topk=self.topk)):
                    m.update(acc.item(), x.shape[0])
            timed += x.shape[0] if epoch or i else 0
        bar.close()
        results = {}
        for name, (loss_m, *acc_m) in meters.items():
            results[name] = dict(
                eval_loss=loss_m.avg, top1=acc_m[0].avg, top5=acc_m[1].avg if len(acc_m) > 1 else None,
                eval_img_s=timed / seconds[name] if seconds[name] else float('nan'))
        return results

    def run(self) -> List[ModelResult]:
        amp = f', amp {str(self.amp_dtype).replace("torch.", "")}' if self.amp_dtype else ''
        self.log(f'Dataset: {self.description}')
        self.log(
            f'Models: {", ".join(r.name for r in self.runs)} (baseline: {self.runs[0].name}), trained in lockstep on '
            f'the same batches; input {"x".join(map(str, self.data_config["input_size"]))}, {self.cfg.epochs} '
            f'epochs, batch {self.cfg.batch_size}, {self.cfg.opt} lr {self.cfg.lr} {self.cfg.sched}, '
            f'seed {self.cfg.seed}, device {self.device}{amp}{", channels_last" if self.cfg.channels_last else ""}')
        self.log(f'Writing to {self.output}')
        random_seed(self.cfg.seed)  # data order and augmentation
        try:
            for epoch in range(self.cfg.epochs):
                train = self._train_epoch(epoch)
                evals = self._evaluate(epoch)
                for run in self._active():
                    run.epochs.append(dict(
                        dataset=self.dataset, model=run.name, epoch=epoch + 1, **train[run.name], **evals[run.name]))
                self.finished_epochs = epoch + 1
                self._write()
                self.log(f'epoch {epoch + 1}/{self.cfg.epochs} eval top-1: ' + '  '.join(
                    f'{label} {evals[r.name]["top1"]:.2f}' if r.name in evals else f'{label} diverged'
                    for label, r in zip(self.labels, self.runs)))
                if not self._active():
                    self.log('Every model diverged; stopping.')
                    break
        except KeyboardInterrupt:
            self.interrupted = True
            self.log(f'Interrupted: keeping the {self.finished_epochs} finished epoch(s) in {self.output}')
            self._write()
        return self.results()

    # -- results ----------------------------------------------------------------------------------------------------
    def results(self) -> List[ModelResult]:
        baseline = self.runs[0]
        base_top1 = max((e['top1'] for e in baseline.epochs), default=None)
        results = []
        for run in self.runs:
            if not run.epochs:
                continue
            best = max(run.epochs, key=lambda e: e['top1'])
            is_baseline = run is baseline
            results.append(ModelResult(
                model=run.name, params=run.params, macs=run.macs,
                train_img_s=statistics.median(e['train_img_s'] for e in run.epochs),
                eval_img_s=statistics.median(e['eval_img_s'] for e in run.epochs),
                best_top1=best['top1'], top5=best['top5'], best_epoch=best['epoch'], is_baseline=is_baseline,
                delta_top1=None if is_baseline or base_top1 is None else best['top1'] - base_top1,
                diverged=run.diverged))
        return results

    def notes(self) -> List[str]:
        """Lines for the models the table cannot show whole."""
        return [f'{r.name} diverged in epoch {r.diverged}: ' + (
            f'its row shows the {len(r.epochs)} epoch(s) before' if r.epochs else 'no finished epoch, so no row')
            for r in self.runs if r.diverged is not None]

    def save_weights(self) -> List[str]:
        """Each model's current weights as ``<model>.safetensors`` in the output directory (not the diverged
        models'); the file names."""
        names = []
        for run in self._active():
            state = {k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()}
            save_file(state, str(self.output / f'{run.name}.safetensors'))
            names.append(f'{run.name}.safetensors')
        return names

    def _write(self) -> None:
        rows = [e for run in self.runs for e in run.epochs]
        with open(self.output / 'epochs.csv', 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=_EPOCH_FIELDS, lineterminator='\n')
            writer.writeheader()
            writer.writerows(rows)
        config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.cfg).items()}
        summary = dict(
            dataset=self.description, synthetic=self.dataset == SYNTHETIC, baseline=self.runs[0].name,
            config=dict(config, models=list(self.cfg.models), device=str(self.device),
                        amp_dtype=str(self.amp_dtype).replace('torch.', '') if self.amp_dtype else None),
            input_size=list(self.data_config['input_size']), num_classes=self.num_classes,
            versions=dict(timm=timm.__version__, torch=torch.__version__),
            finished_epochs=self.finished_epochs, interrupted=self.interrupted,
            results=[asdict(r) for r in self.results()], epochs=rows)
        with open(self.output / 'results.json', 'w') as f:
            json.dump(summary, f, indent=2)


def _fmt(value: Optional[float], spec: str) -> str:
    return '-' if value is None or math.isnan(value) else format(value, spec)


def format_table(results: Sequence[ModelResult], dataset: str) -> str:
    """The final table as text; ``dataset`` is named above it."""
    head = ('model', 'params (M)', 'GMACs', 'train img/s', 'eval img/s', 'best top-1', 'top-5', 'delta top-1')
    rows = [[
        r.model, f'{r.params / 1e6:.2f}', f'{r.macs / 1e9:.3f}', _fmt(r.train_img_s, '.1f'), _fmt(r.eval_img_s, '.1f'),
        f'{r.best_top1:.2f}', _fmt(r.top5, '.2f'), 'baseline' if r.is_baseline else _fmt(r.delta_top1, '+.2f'),
    ] for r in results]
    return f'Results on {dataset}\n' + text_table(head, rows)


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
            # the baseline is drawn on top: twins that start from its weights would hide it
            style = dict(color='black', linestyle='--', zorder=3, label=f'{model} (baseline)') if i == 0 else dict(
                label=model)
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
    for line in comparison.notes():
        log(line)
    if results:
        if comparison.dataset == SYNTHETIC:
            log('The synthetic data only shows that training works; it says nothing about real-data accuracy.')
        log('One run per model: repeat with other --seed values before reading small differences.')
    written = ['epochs.csv', 'results.json']
    if cfg.save_weights:
        written += comparison.save_weights()
    if results:
        title = f'{comparison.dataset} ({comparison.finished_epochs} epochs, seed {cfg.seed})'
        if plot_curves(comparison.output / 'epochs.csv', comparison.output / 'curves.png', title):
            written.append('curves.png')
        else:
            log('matplotlib is not installed, so no curves.png (pip install "timm_gct[plot]")')
    log(f'Wrote {", ".join(written)} to {comparison.output}')
    return results, comparison.output, comparison.interrupted
