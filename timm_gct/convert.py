""" Converters from the released official checkpoints to this package's models

``convert_checkpoint(path)`` loads an official file (``torch.load(..., weights_only=True)``), unwraps its container
(``{'state_dict': ...}`` or ``{'model': ...}``) and the ``module.`` prefix of (Distributed)DataParallel, detects the
layout from the keys, infers the depth from the block counts of ``layer1``-``layer4``, and returns the registered
model name and a state dict in that model's key layout, checked key by key and shape by shape against the model.
Nothing is written; saving is the caller's job. ``checkpoint_filter_fn`` is the same conversion as timm's
``pretrained_filter_fn``, checked against the model being built: the models with an official release (FcaNet's
``fca_resnet{34,50,101,152}.official_in1k``) load the authors' file through timm's own loader with it.

Supported checkpoints:

* FcaNet (cfzd/FcaNet, ``model/fcanet.py`` on torchvision's ``ResNet``): ``fca{34,50,101,152}.pth``,
  https://github.com/cfzd/FcaNet/releases/download/v1.0/fca{34,50,101,152}.pth (also Google Drive / Baidu), a plain
  state dict. Keys: torchvision ResNet keys plus ``layerX.Y.att.dct_layer.weight`` (the fixed DCT filter, a
  persistent buffer, (C, S, S) with S = 56, 28, 14, 7 in stages 1-4) and ``layerX.Y.att.fc.{0,2}.weight``.
  Mapping: ``.att.`` -> ``.se.``, to ``fca_resnet{34,50,101,152}``. The DCT filter must be the fixed 'top16' filter
  the model builds; the README's ablation checkpoints with learnt or random filters are refused.
* ECA-Net (BangguWu/ECANet, ``models/eca_resnet.py``): ``eca_resnet18_k3577``, ``eca_resnet34_k3357``,
  ``eca_resnet50_k3557``, ``eca_resnet101_k3357``, ``eca_resnet152_k3357`` (``.pth.tar``, Google Drive / Baidu links
  in the official README), containers ``{'epoch', 'arch', 'state_dict', 'best_prec1', 'optimizer'}`` whose
  ``state_dict`` keys carry the ``module.`` prefix. Keys: torchvision-style ResNet keys plus
  ``layerX.Y.eca.conv.weight``, shape (1, 1, k). Mapping: ``.eca.`` -> ``.se.``, to ``eca_resnet{18,...,152}``,
  whose per-stage kernel sizes are the released ones (a checkpoint trained with other ``--ksize`` values is refused
  with the shape mismatch).
* GCT (z-x-yang/GCT, ``PyTorch/resnet.py`` + ``PyTorch/GCT.py``): GCT-ResNet-50, Google Drive only,
  https://drive.google.com/file/d/1y5a56UzBjUWlWwlrU42lxueJY_cBpWLL, container ``{'epoch', 'arch', 'state_dict',
  'best_acc1', 'optimizer'}`` with ``module.``-prefixed keys. Keys: ``stem.conv1.0.{alpha,gamma,beta}`` (GCT(3)),
  ``stem.conv1.1.weight``, ``stem.bn1.*``; ``layerX.Y.conv{1,2,3}.0.{alpha,gamma,beta}`` and
  ``layerX.Y.conv{1,2,3}.1.weight`` (each conv an ``nn.Sequential(GCT, Conv2d)``), ``layerX.Y.bn{1,2,3}.*``;
  ``layerX.0.downsample.{0: GCT, 1: conv, 2: BN}``; ``fc.*``. Mapping, to ``gct_resnet50_official``:
  ``stem.conv1.0.*`` -> ``conv1.gct.*``, ``stem.conv1.1.weight`` -> ``conv1.weight``, ``stem.bn1.*`` -> ``bn1.*``,
  ``<conv>.0.*`` -> ``<conv>.gct.*``, ``<conv>.1.weight`` -> ``<conv>.weight``, ``downsample.0.*`` ->
  ``downsample.0.gct.*``, ``downsample.1.weight`` -> ``downsample.0.weight``, ``downsample.2.*`` ->
  ``downsample.1.*``; every GCT ``beta`` is reshaped from (1, C, 1, 1) to (C,).

BatchNorm ``num_batches_tracked`` entries missing from a checkpoint (files saved by PyTorch < 0.4.1) are added as 0,
as ``BatchNorm2d`` does when it loads such a state dict.
"""
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple, Union

import timm
import torch
from torch import nn

from ._safe_load import safe_torch_load
from ._text import few
from .layers.fca import dct_filter

__all__ = [
    'OfficialSource', 'SUPPORTED', 'checkpoint_filter_fn', 'convert_checkpoint', 'convert_state_dict', 'supported_text',
]


@dataclass(frozen=True)
class OfficialSource:
    """One family of released official checkpoints."""
    name: str  # layout name, also the model name prefix
    title: str
    files: str  # the released file names
    where: str  # where the files are published
    models: Tuple[str, ...]  # the models they convert to
    license: str  # of the official repository, for the card ('other': the repository states none)

    def describe(self) -> str:
        """One line for help texts."""
        return f'{self.title}: {self.files} ({self.where}) -> {", ".join(self.models)}'


SUPPORTED: Dict[str, OfficialSource] = {s.name: s for s in (
    OfficialSource(
        'fca', 'FcaNet', 'fca{34,50,101,152}.pth', 'https://github.com/cfzd/FcaNet/releases/tag/v1.0',
        ('fca_resnet34', 'fca_resnet50', 'fca_resnet101', 'fca_resnet152'), 'mit'),
    OfficialSource(
        'eca', 'ECA-Net', 'eca_resnet{18,34,50,101,152}_k*.pth.tar',
        'Google Drive / Baidu links in https://github.com/BangguWu/ECANet',
        ('eca_resnet18', 'eca_resnet34', 'eca_resnet50', 'eca_resnet101', 'eca_resnet152'), 'mit'),
    OfficialSource(
        'gct', 'GCT', 'the GCT-ResNet-50 checkpoint',
        'https://drive.google.com/file/d/1y5a56UzBjUWlWwlrU42lxueJY_cBpWLL',
        ('gct_resnet50_official',), 'other'),
)}

# (Bottleneck?, blocks per stage) -> depth
_DEPTHS = {
    (False, (2, 2, 2, 2)): 18, (False, (3, 4, 6, 3)): 34,
    (True, (3, 4, 6, 3)): 50, (True, (3, 4, 23, 3)): 101, (True, (3, 8, 36, 3)): 152,
}

# GCT: official key pattern -> this package's key. Anything else in a GCT checkpoint has no counterpart.
_GCT_RULES = (
    (r'stem\.conv1\.0\.(alpha|gamma|beta)', r'conv1.gct.\1'),
    (r'stem\.conv1\.1\.weight', r'conv1.weight'),
    (r'stem\.bn1\.(\w+)', r'bn1.\1'),
    (r'(layer\d\.\d+\.conv\d)\.0\.(alpha|gamma|beta)', r'\1.gct.\2'),
    (r'(layer\d\.\d+\.conv\d)\.1\.weight', r'\1.weight'),
    (r'(layer\d\.\d+\.bn\d\.\w+)', r'\1'),
    (r'(layer\d\.\d+\.downsample)\.0\.(alpha|gamma|beta)', r'\1.0.gct.\2'),
    (r'(layer\d\.\d+\.downsample)\.1\.weight', r'\1.0.weight'),
    (r'(layer\d\.\d+\.downsample)\.2\.(\w+)', r'\1.1.\2'),
    (r'fc\.(weight|bias)', r'fc.\1'),
)


def _gct_key(key: str) -> Optional[str]:
    for pattern, repl in _GCT_RULES:
        match = re.fullmatch(pattern, key)
        if match:
            return match.expand(repl)
    return None


_KEY_MAPS: Dict[str, Callable[[str], Optional[str]]] = {
    'fca': lambda key: key.replace('.att.', '.se.'),
    'eca': lambda key: key.replace('.eca.', '.se.'),
    'gct': _gct_key,
}


def supported_text() -> str:
    """One line per supported checkpoint family, for help texts and errors."""
    return '; '.join(s.describe() for s in SUPPORTED.values())


def _unwrap(obj: object, what: str) -> Dict[str, torch.Tensor]:
    """The state dict inside a checkpoint container, without the (Distributed)DataParallel 'module.' prefix."""
    if isinstance(obj, dict):
        for key in ('state_dict', 'model'):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f'{what} holds no state dict: expected a dict of tensors, or a dict with one under "state_dict" or '
            f'"model".')
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in obj.items()}


def _layout(keys: Iterable[str]) -> Optional[str]:
    """The official layout the keys are in, or None."""
    keys = set(keys)
    if 'stem.conv1.0.alpha' in keys:
        return 'gct'
    if any(k.endswith('.att.dct_layer.weight') for k in keys):
        return 'fca'
    if any(k.endswith('.eca.conv.weight') for k in keys):
        return 'eca'
    return None


def _detect(keys: Iterable[str]) -> str:
    keys = set(keys)
    layout = _layout(keys)
    if layout is None:
        raise ValueError(
            f'The checkpoint keys ({few(sorted(keys), 3)}) match no supported layout; supported: {supported_text()}.')
    return layout


def _depth(keys: Iterable[str], layout: str) -> int:
    keys = list(keys)
    counts = []
    for stage in range(1, 5):
        blocks = {int(m.group(1)) for k in keys if (m := re.match(rf'layer{stage}\.(\d+)\.', k))}
        counts.append(max(blocks) + 1 if blocks else 0)
    bottleneck = any(k.startswith('layer1.0.conv3.') for k in keys)
    depth = _DEPTHS.get((bottleneck, tuple(counts)))
    if depth is None:
        block = 'Bottleneck' if bottleneck else 'BasicBlock'
        known = ', '.join(f'{c} {"Bottleneck" if b else "BasicBlock"} ({d})' for (b, c), d in _DEPTHS.items())
        raise ValueError(
            f'The {SUPPORTED[layout].title} checkpoint has {block} blocks per stage {tuple(counts)}, which is no '
            f'ResNet depth; expected one of {known}.')
    return depth


def _target(state_dict: Dict[str, torch.Tensor], layout: str, model_name: Optional[str]) -> str:
    """The registered model an official state dict converts to; a ValueError if ``model_name`` says another."""
    detected = f'{layout}_resnet{_depth(state_dict, layout)}' + ('_official' if layout == 'gct' else '')
    if model_name is not None and model_name != detected:
        raise ValueError(
            f'model_name={model_name!r} does not match the checkpoint, whose keys are the official '
            f'{SUPPORTED[layout].title} layout of {detected!r}.')
    if not timm.is_model(detected):
        raise ValueError(
            f'The checkpoint is an official {SUPPORTED[layout].title} {detected!r}, which is not a registered model; '
            f'supported: {supported_text()}.')
    return detected


def _check(
        model_name: str,
        state_dict: Dict[str, torch.Tensor],
        source_keys: Dict[str, str],
        unmapped: List[str],
        expected: Dict[str, torch.Tensor],
        left_to_timm: FrozenSet[str],
) -> None:
    """Require the converted keys and shapes to be exactly those of ``expected``; fill num_batches_tracked.

    Keys in ``left_to_timm`` (classifier, first conv) are adapted to the model by timm's loader after the filter, and
    any leftover mismatch is reported by its strict load."""
    for key in expected:
        if key.endswith('.num_batches_tracked') and key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
    unmapped = unmapped + [source_keys[k] for k in state_dict if k not in expected and k not in left_to_timm]
    if unmapped:
        raise ValueError(
            f'Checkpoint keys with no counterpart in {model_name}: {few(unmapped)}.')
    missing = [k for k in expected if k not in state_dict and k not in left_to_timm]
    if missing:
        raise ValueError(f'{model_name} keys missing from the checkpoint: {few(missing)}.')
    mismatched = [
        f'{source_keys[k]} {tuple(v.shape)} (expected {tuple(expected[k].shape)})'
        for k, v in state_dict.items() if k not in left_to_timm and v.shape != expected[k].shape]
    if mismatched:
        raise ValueError(f'Checkpoint shapes that differ from {model_name}: {few(mismatched)}.')


def _check_dct_filters(state_dict: Dict[str, torch.Tensor], source_keys: Dict[str, str]) -> None:
    """The DCT buffers must be the fixed 'top16' filter the fca models build (and rebuild in reset_parameters)."""
    wrong, filters = [], {}
    for key, value in state_dict.items():
        if key.endswith('.se.dct_layer.weight'):
            shape = tuple(value.shape[:2])  # (channels, size); blocks of a stage share their filter
            if shape not in filters:
                filters[shape] = dct_filter(*shape)
            if not (value.double() - filters[shape]).abs().max() <= 1e-6:
                wrong.append(source_keys[key])
    if wrong:
        raise ValueError(
            f"Checkpoint DCT filters that are not the fixed 'top16' DCT filter: {few(wrong)}; the fca models "
            f'only hold that filter (the FcaNet README ablations with learnt or random filters are not supported).')


def _convert(
        state_dict: Dict[str, torch.Tensor],
        layout: str,
        model_name: str,
        expected: Dict[str, torch.Tensor],
        left_to_timm: FrozenSet[str] = frozenset(),
) -> Dict[str, torch.Tensor]:
    """Map an official state dict's keys (and GCT's beta shapes) onto ``model_name``, checked against ``expected``."""
    converted, source_keys, unmapped = {}, {}, []
    for key, value in state_dict.items():
        new_key = _KEY_MAPS[layout](key)
        if new_key is None:
            unmapped.append(key)
            continue
        if layout == 'gct' and new_key.endswith('.gct.beta'):
            value = value.reshape(-1)  # official (1, C, 1, 1), here (C,)
        converted[new_key] = value
        source_keys[new_key] = key
    _check(model_name, converted, source_keys, unmapped, expected, left_to_timm)
    if layout == 'fca':
        _check_dct_filters(converted, source_keys)
    return converted


def convert_state_dict(
        state_dict: Dict[str, torch.Tensor],
        model_name: Optional[str] = None,
) -> Tuple[str, Dict[str, torch.Tensor]]:
    """Convert an official state dict to a registered model's; see the module docstring for the layouts.

    Args:
        state_dict: Official FcaNet, ECA-Net or GCT ResNet state dict (``module.`` prefixes allowed), or a
            checkpoint dict holding one under ``'state_dict'`` or ``'model'``.
        model_name: The expected target model; a ValueError if the keys say another.

    Returns:
        The model name and the converted state dict, in the model's key order.
    """
    state_dict = _unwrap(state_dict, 'The state_dict argument')
    layout = _detect(state_dict)
    detected = _target(state_dict, layout, model_name)
    expected = timm.create_model(detected, device='meta').state_dict()
    converted = _convert(state_dict, layout, detected, expected)
    return detected, {k: converted[k] for k in expected}


def _names(cfg_value: Union[None, str, Sequence[str]]) -> Tuple[str, ...]:
    """A pretrained cfg's module name(s), e.g. ``classifier``, as a tuple."""
    return (cfg_value,) if isinstance(cfg_value, str) else tuple(cfg_value or ())


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """``pretrained_filter_fn`` of the models with an official release (e.g. ``fca_resnet50.official_in1k``).

    A state dict in an official layout is converted by the code of ``convert_state_dict`` and checked against
    ``model`` itself: every key and shape, and FcaNet's DCT filters. The classifier and first-conv weights are left to
    timm's loader, which adapts them to ``num_classes``, ``features_only`` and ``in_chans`` as for its own tags. Any
    other state dict (this package's own layout, e.g. weights re-published with ``timm-gct convert``) passes
    unchanged to timm's strict load.
    """
    official = _unwrap(state_dict, 'The pretrained weights')
    layout = _layout(official)
    if layout is None:
        return state_dict
    cfg = model.pretrained_cfg
    name = _target(official, layout, cfg.get('architecture'))
    left_to_timm = frozenset(
        [f'{c}.{p}' for c in _names(cfg.get('classifier')) for p in ('weight', 'bias')] +
        [f'{c}.weight' for c in _names(cfg.get('first_conv'))])
    return _convert(official, layout, name, model.state_dict(), left_to_timm)


def convert_checkpoint(
        path: Union[str, Path],
        model_name: Optional[str] = None,
) -> Tuple[str, Dict[str, torch.Tensor]]:
    """Load an official checkpoint file and convert it (see the module docstring for the supported files).

    Args:
        path: The released file, e.g. ``fca50.pth`` or ``eca_resnet50_k3557.pth.tar``.
        model_name: The expected target model; a ValueError if the keys say another.

    Returns:
        The registered model name and a state dict that loads into ``timm.create_model(model_name)`` with
        ``strict=True``.
    """
    checkpoint = safe_torch_load(path, what='path')  # a file from the internet must not run code when unpickled
    return convert_state_dict(_unwrap(checkpoint, f'path={str(path)!r}'), model_name)
