""" Interleaved speed and memory measurement of models against their plain ResNet twins.

Absolute times on a shared machine drift by more than an attention layer costs, so every model (ours, the
official-code reference, the plain twin, any timm model) is timed once per round, the rounds interleave all models,
and the cost of a model is the median over rounds of its time divided by its twin's time *in the same round*.
Each twin is also timed a second time as if it were a model (the control row): its ratio would be 1 up to timer
resolution on a quiet machine, so its distance from 1 and its quartiles show how much of any row's ratio is the run's
noise.
Throughput is timed for an inference forward (``eval``, ``torch.inference_mode``) and for a training step (forward,
cross-entropy, backward, SGD with momentum). Peak memory is the most memory one training step holds above what it
started with (parameters, optimizer state): on CUDA from the caching allocator's peak, on the CPU from the allocation
events the PyTorch profiler records (two extra, untimed steps per model; the second counts).
"""
import random
import statistics
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch
from timm.models import get_arch_name
from torch import nn

from .._device import sync
from ..kernels import KERNEL_MODES, get_kernels, set_kernels
from ..models import model_mechanism
from ..stats import plain_twin
from .official import to_official

__all__ = ['BASELINE', 'CONTROL', 'OFFICIAL', 'OURS', 'TIMM', 'BenchConfig', 'BenchResult', 'Entry', 'bench',
           'device_defaults', 'entries_for', 'input_size']

OURS, OFFICIAL, BASELINE, TIMM, CONTROL = 'timm_gct', 'official code', 'plain twin', 'timm', 'control'
_AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


def device_defaults(device: torch.device) -> Dict[str, int]:
    """Batch size, timed iterations per round and warm-up iterations that suit the device: a CPU step of batch 8 takes
    long enough to time once; a GPU step of batch 8 takes a few ms, mostly launches, so there it is batch 128 and
    several iterations per round."""
    if device.type == 'cpu':
        return {'batch_size': 8, 'iters': 1, 'warmup': 2}
    return {'batch_size': 128, 'iters': 5, 'warmup': 3}


@dataclass(frozen=True)
class BenchConfig:
    models: Tuple[str, ...]
    device: torch.device = torch.device('cpu')
    batch_size: int = 8
    img_size: Optional[int] = None  # default: the first model's cfg input size
    rounds: int = 7
    iters: int = 1  # timed iterations per model, mode and round
    warmup: int = 2  # untimed iterations per model and mode before the rounds
    amp: Optional[str] = None  # 'bf16' or 'fp16' autocast
    channels_last: bool = False
    compile: bool = False
    official: bool = True  # add each timm_gct model's official-code reference
    control: bool = True  # time each plain twin a second time, as a model: the run's noise
    modes: Tuple[str, ...] = ('infer', 'train')
    memory: bool = True
    seed: int = 0
    kernels: Tuple[str, ...] = ('auto',)  # TIMM_GCT_KERNELS settings for the timm_gct rows, one row each


@dataclass(frozen=True)
class Entry:
    """One row of the benchmark: a model as built by ``build``, timed against ``baseline`` (a plain twin's name)."""
    name: str  # the timm model name
    impl: str  # OURS (or OURS with a kernel setting), OFFICIAL, BASELINE, TIMM or CONTROL
    baseline: str
    kernels: str = 'auto'  # the TIMM_GCT_KERNELS setting the row runs with

    @property
    def label(self) -> str:
        return self.name if self.impl in (OURS, BASELINE, TIMM) else f'{self.name} ({self.impl})'

    def build(self) -> nn.Module:
        model = timm.create_model(self.name)
        return to_official(model) if self.impl == OFFICIAL else model


@dataclass
class BenchResult:
    entry: Entry
    times: Dict[str, List[float]] = field(default_factory=dict)  # mode -> seconds per iteration, one per round
    ratios: Dict[str, List[float]] = field(default_factory=dict)  # mode -> time / twin's time, one per round
    peak_bytes: Optional[int] = None  # training step
    baseline_peak_bytes: Optional[int] = None

    def median_ms(self, mode: str) -> Optional[float]:
        return statistics.median(self.times[mode]) * 1e3 if self.times.get(mode) else None

    def ratio(self, mode: str) -> Optional[float]:
        return statistics.median(self.ratios[mode]) if self.ratios.get(mode) else None

    def ratio_spread(self, mode: str) -> Optional[Tuple[float, float]]:
        """Lower and upper quartile of the per-round ratios (their spread is the noise of the measurement)."""
        values = self.ratios.get(mode)
        if not values:
            return None
        if len(values) < 2:
            return values[0], values[0]
        q = statistics.quantiles(values, n=4, method='inclusive')
        return q[0], q[2]

    @property
    def peak_mib(self) -> Optional[float]:
        return self.peak_bytes / 2 ** 20 if self.peak_bytes is not None else None

    @property
    def memory_ratio(self) -> Optional[float]:
        if self.peak_bytes is None or not self.baseline_peak_bytes:
            return None
        return self.peak_bytes / self.baseline_peak_bytes


def entries_for(models: Sequence[str], official: bool = True, control: bool = True,
                kernels: Sequence[str] = ('auto',)) -> List[Entry]:
    """Rows for ``models``: each model (a timm_gct model once per ``kernels`` setting), its official-code reference
    (timm_gct models with attention), and once each, the plain twins they are measured against (timm ``resnetN`` or
    ``resnetN_cifar``), each followed by its control row (the twin again, timed as a model) unless ``control`` is
    False."""
    rows: Dict[Tuple[str, str], Entry] = {}
    for name in models:
        if get_arch_name(name) != name:
            raise ValueError(f'models: {name!r} has a pretrained tag; expected an architecture name (speed does not '
                             f'depend on the weights).')
        if not timm.is_model(name):
            raise ValueError(f'models: {name!r} is not a registered timm model (is timm_gct imported?).')
        try:
            mechanism = model_mechanism(name)
            impl = OURS
        except KeyError:  # a timm model, e.g. seresnet50 for timm's own SE
            mechanism, impl = None, TIMM
        twin = plain_twin(name) if 'resnet' in name else None
        if twin is None or not timm.is_model(twin):
            raise ValueError(f'models: {name!r} has no plain ResNet twin ({twin!r} is not a timm model); expected a '
                             f'ResNet variant such as gct_resnet50, gct_resnet18_cifar or seresnet50.')
        rows.setdefault((twin, BASELINE), Entry(twin, BASELINE, twin))
        if control:
            rows.setdefault((twin, CONTROL), Entry(twin, CONTROL, twin))
        if name == twin:
            continue
        if impl == OURS:
            for setting in kernels:
                label = OURS if setting == 'auto' else f'{OURS}, kernels={setting}'
                rows.setdefault((name, label), Entry(name, label, twin, setting))
        else:
            rows.setdefault((name, impl), Entry(name, impl, twin))
        if official and impl == OURS and mechanism is not None:
            rows.setdefault((name, OFFICIAL), Entry(name, OFFICIAL, twin))
    return list(rows.values())


class _Runner:
    """One model on the device, ready to run an inference forward or a training step on fixed random data."""

    def __init__(self, entry: Entry, cfg: BenchConfig, input_size: Tuple[int, int, int]):
        self.entry = entry
        self.device = cfg.device
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model = entry.build().to(cfg.device, memory_format=fmt)
        self.model = model
        self.forward: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model) if cfg.compile else model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        g = torch.Generator().manual_seed(cfg.seed)
        x = torch.randn(cfg.batch_size, *input_size, generator=g)
        self.x = x.to(cfg.device, memory_format=fmt)
        self.y = torch.randint(0, model.num_classes, (cfg.batch_size,), generator=g).to(cfg.device)
        amp = _AMP_DTYPES.get(cfg.amp)
        self.autocast = (lambda: torch.autocast(cfg.device.type, dtype=amp)) if amp is not None else nullcontext

    def infer(self) -> None:
        self.model.eval()
        with torch.inference_mode(), self.autocast():
            self.forward(self.x)

    def train(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = nn.functional.cross_entropy(self.forward(self.x), self.y)
        loss.backward()
        self.optimizer.step()

    def time(self, mode: str, iters: int) -> float:
        step = self.train if mode == 'train' else self.infer
        with _kernels(self.entry.kernels):
            sync(self.device)
            start = time.perf_counter()
            for _ in range(iters):
                step()
            sync(self.device)
        return (time.perf_counter() - start) / iters

    def peak_train_bytes(self) -> int:
        """Peak memory of one training step above the memory held when it starts."""
        with _kernels(self.entry.kernels):
            return self._peak_train_bytes()

    def _peak_train_bytes(self) -> int:
        if self.device.type == 'cuda':
            sync(self.device)
            start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.train()
            sync(self.device)
            return torch.cuda.max_memory_allocated(self.device) - start
        return _cpu_peak_bytes(self.train)  # _check allowed only cpu and cuda


@contextmanager
def _kernels(mode: str):
    """The TIMM_GCT_KERNELS setting for one row's steps."""
    before = get_kernels()
    set_kernels(mode)
    try:
        yield
    finally:
        set_kernels(before)


def _cpu_peak_bytes(fn: Callable[[], None]) -> int:
    """Peak of the running sum of the CPU allocations and frees the profiler records while ``fn`` runs.

    ``fn`` runs twice and the second run counts: the profiler records a free only for a block whose allocation it
    saw, so in a first profiled training step the frees of the previous step's gradients are missing and the peak
    comes out too high by their size.
    """
    from torch.profiler import ProfilerActivity, profile
    for _ in range(2):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events()
         if e.name() == '[memory]' and e.device_type() == torch.autograd.DeviceType.CPU),
        key=lambda e: e.start_ns())
    held = peak = 0
    for e in events:
        held += e.nbytes()
        peak = max(peak, held)
    return peak


def _check(cfg: BenchConfig) -> None:
    if not cfg.models:
        raise ValueError('bench: models is empty; expected at least one model name.')
    for name, value in (('rounds', cfg.rounds), ('iters', cfg.iters), ('batch_size', cfg.batch_size)):
        if value < 1:
            raise ValueError(f'bench: {name}={value} is not allowed; expected an integer >= 1.')
    if cfg.warmup < 0:
        raise ValueError(f'bench: warmup={cfg.warmup} is not allowed; expected an integer >= 0.')
    if cfg.amp is not None and cfg.amp not in _AMP_DTYPES:
        raise ValueError(f'bench: amp={cfg.amp!r} is not allowed; expected one of {sorted(_AMP_DTYPES)} or None.')
    if cfg.memory and 'train' in cfg.modes and cfg.device.type not in ('cpu', 'cuda'):
        # checked before the rounds, not after minutes of timing
        raise ValueError(f'bench: peak memory on device {cfg.device} is not supported; expected cpu or cuda '
                         f'(pass --no-memory).')
    bad = [k for k in cfg.kernels if k not in KERNEL_MODES]
    if bad or not cfg.kernels:
        raise ValueError(f'bench: kernels={cfg.kernels!r} is not allowed; expected a non-empty subset of '
                         f'({", ".join(KERNEL_MODES)}).')
    bad = [m for m in cfg.modes if m not in ('infer', 'train')]
    if bad or not cfg.modes:
        raise ValueError(f'bench: modes={cfg.modes!r} is not allowed; expected a non-empty subset of (infer, train).')


def input_size(cfg: BenchConfig) -> Tuple[int, int, int]:
    """(C, H, W) of the inputs: the first model's default, or ``img_size`` square."""
    first = timm.create_model(cfg.models[0], device='meta').pretrained_cfg['input_size']
    return (first[0], cfg.img_size, cfg.img_size) if cfg.img_size else tuple(first)


def bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> Tuple[List[BenchResult], List[str]]:
    """Measure every entry of ``cfg.models``; returns the results in entry order (twins first where they were first
    needed) and notes on rows left out (an official-code reference that cannot be built for a configuration)."""
    _check(cfg)
    entries = entries_for(cfg.models, cfg.official, cfg.control, cfg.kernels)
    size = input_size(cfg)
    runners, notes = [], []
    for entry in entries:
        log(f'building {entry.label}' + (' (compiling in warm-up)' if cfg.compile else ''))
        try:
            runner = _Runner(entry, cfg, size)
        except ValueError as e:
            if entry.impl != OFFICIAL:
                raise
            notes.append(f'{entry.name}: no official-code row: {e}')
            log(notes[-1])
            continue
        for mode in cfg.modes:
            for _ in range(cfg.warmup):
                runner.time(mode, 1)
        runners.append(runner)
    results = {r.entry: BenchResult(r.entry, {m: [] for m in cfg.modes}, {m: [] for m in cfg.modes}) for r in runners}
    order = random.Random(cfg.seed)
    for round_idx in range(cfg.rounds):
        shuffled = runners[:]
        order.shuffle(shuffled)  # no model always runs right after another (caches, clocks, neighbours)
        timed: Dict[Tuple[str, str, str], float] = {}
        for runner in shuffled:
            for mode in cfg.modes:
                seconds = runner.time(mode, cfg.iters)
                results[runner.entry].times[mode].append(seconds)
                timed[(runner.entry.name, runner.entry.impl, mode)] = seconds
        for entry, result in results.items():
            for mode in cfg.modes:
                twin = timed[(entry.baseline, BASELINE, mode)]
                result.ratios[mode].append(timed[(entry.name, entry.impl, mode)] / twin)
        log(f'round {round_idx + 1}/{cfg.rounds} done')
    if cfg.memory and 'train' in cfg.modes:
        peaks = {r.entry: r.peak_train_bytes() for r in runners}
        for entry, result in results.items():
            result.peak_bytes = peaks[entry]
            result.baseline_peak_bytes = peaks[Entry(entry.baseline, BASELINE, entry.baseline)]
    return list(results.values()), notes
