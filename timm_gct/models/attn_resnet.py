""" Attention-augmented ResNets: the registration table

Every model is timm's own ``ResNet`` with an attention layer from ``timm_gct.layers`` passed through its
``block_args=dict(attn_layer=...)`` hook, which puts one layer in each residual block after the last BN, before
drop-path and the residual add (the block attribute ``se``). Small post-construction steps cover what the hook
cannot express, all applied before any weights are loaded:

* stage and block selection (``attn_stages``, ``attn_blocks``): attention stays only in the chosen stages, and
  optionally only in their last block (GC: stages 2-4 as in its official configs; GSoP: the last block of each
  stage); the other blocks' layers are removed;
* per-stage layer settings (e.g. ECA's kernel sizes, FcaNet's DCT sizes): passed by the hook keyed on the block
  width, which differs from stage to stage in these ResNets;
* ``layer4_stride``: 1 keeps layer3's resolution in layer4 without dilation (official GSoP-Net);
* stage wrappers, for a mechanism whose layer is shared by all blocks of a stage (DIANet);
* the CIFAR stem of the ``*_cifar`` models: a 3x3 stride-1 stem conv and no max-pool, so stages run at 1/1, 1/2,
  1/4 and 1/8 of a 32x32 input (``feature_info`` reductions are updated to match).

Models: ``<mechanism>_resnet{18,34,50,101,152}`` (ImageNet stem), ``<mechanism>_resnet{18,34,50}_cifar`` and the
plain baselines ``resnet{18,34,50}_cifar``. Model kwargs on top of timm's ResNet ones:

* ``attn_kwargs``: dict of keyword arguments for the attention layer, e.g. ``{'sparsity': 1e-4}`` for NAM or
  ``{'rd_ratio': 0.25}`` for GC r4 (train.py: ``--model-kwargs "attn_kwargs={'rd_ratio': 0.25}"``); they override
  per-stage settings;
* ``attn_stages``: the stages (1-4, as in ``layer1``-``layer4``) that keep attention;
* ``attn_blocks``: 'all' blocks of those stages, or only the 'last' one;
* ``layer4_stride``: 2 (standard) or 1.

Pretrained tags: a mechanism whose authors released ImageNet-1k weights at a URL (``Mechanism.release``; FcaNet's
GitHub release) gets the tag ``<model>.official_in1k`` at the released depths, its default tag: timm's loader
downloads the authors' file and ``timm_gct.convert.checkpoint_filter_fn`` maps it onto the model with the code of
``timm-gct convert``. The identity-at-init mechanisms (GCT, GC, CC) get timm's plain-ResNet weights instead, with the
attention untrained, as ``<model>.resnet_<tag>_attn_identity``.

Papers: ResNet, `Deep Residual Learning for Image Recognition` - https://arxiv.org/abs/1512.03385; each mechanism's
paper and official code are in ``MECHANISMS`` below (and in its layer's docstring).
"""
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, Optional, Tuple, Type, Union

import torch
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import (
    build_model_with_cfg, generate_default_cfgs, get_pretrained_cfg, is_model_in_modules, register_model)
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from ..convert import SUPPORTED, checkpoint_filter_fn
from ..layers import get_attn
from ..layers._checks import check_choice
from ..layers.dia import DIAStage

__all__ = [
    'Mechanism', 'MECHANISMS', 'RESNET_WEIGHTS', 'Release', 'model_mechanism', 'model_release', 'resnet_weights_source',
    'resnet_weights_tag',
]  # register_model adds each entrypoint fn to this

_logger = logging.getLogger(__name__)

# Source: the official NAM CIFAR-100 script (Christian-lyc/NAM train_cifar100.py), which uses CIFAR-10 statistics.
CIFAR_DEFAULT_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR_DEFAULT_STD = (0.24703233, 0.24348505, 0.26158768)

_DEPTHS: Dict[int, Tuple[Type[Union[BasicBlock, Bottleneck]], Tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
_NUM_STAGES = 4


# Released ECA-Net kernel sizes per stage (checkpoint names eca_resnet18_k3577, ..._k3357, eca_resnet50_k3557); the
# CIFAR twins reuse their depth's values (no official CIFAR models).
_ECA_KERNELS = {18: (3, 5, 7, 7), 34: (3, 3, 5, 7), 50: (3, 5, 5, 7), 101: (3, 3, 5, 7), 152: (3, 3, 5, 7)}


def _eca_kernel_sizes(depth: int, cifar: bool) -> Tuple[Dict[str, Any], ...]:
    return tuple(dict(kernel_size=k) for k in _ECA_KERNELS[depth])


def _fca_dct_sizes(depth: int, cifar: bool) -> Tuple[Dict[str, Any], ...]:
    # Official c2wh: the stage's map size at 224 for both block types. At 32 x 32 (maps 32, 16, 8, 4) a 4 x 4 stage
    # cannot hold the 7 x 7 frequency grid, so the CIFAR models use 7 everywhere, as the FcaNet authors advise for
    # other networks and resolutions (cfzd/FcaNet #10, #24).
    return tuple(dict(dct_size=s) for s in ((7, 7, 7, 7) if cifar else (56, 28, 14, 7)))


def _enc_widths(depth: int, cifar: bool) -> Tuple[Dict[str, Any], ...]:
    # The official CIFAR blocks reduce to planes / 4 codeword dimensions: C / 4 in a BasicBlock, C / 16 in a Bottleneck.
    return (dict(rd_ratio=1 / 16) if _DEPTHS[depth][0] is Bottleneck else {},) * 4


def _gsop_strides(depth: int, cifar: bool) -> Tuple[Dict[str, Any], ...]:
    # Official: the reduction conv has stride 2 where planes == 64, i.e. in stage 1.
    return dict(stride=2), {}, {}, {}


@dataclass(frozen=True)
class Release:
    """ImageNet-1k weights released by a mechanism's authors at a URL that timm's own loader downloads, in the official
    layout that ``timm-gct convert`` maps (its license is that source's, ``timm_gct.convert.SUPPORTED``)."""
    tag: str  # the pretrained tag, timm style <recipe>_<dataset>
    url: str  # the file of each depth, '{depth}' filled in
    origin_url: str
    top1: Tuple[Tuple[int, str, str], ...]  # (depth, reported, evaluated): ImageNet-1k top-1 (%) per released depth
    top1_source: str  # where the authors publish those numbers
    data_config: Tuple[Tuple[str, Any], ...]  # the official evaluation preprocessing, as timm cfg fields

    @property
    def depths(self) -> Tuple[int, ...]:
        return tuple(d for d, _, _ in self.top1)

    def top1_of(self, depth: int) -> Tuple[str, str]:
        """The reported and the evaluated top-1 of a released depth."""
        return next((reported, evaluated) for d, reported, evaluated in self.top1 if d == depth)


# FcaNet's GitHub release v1.0, the files of the official hubconf.py (plain state dicts). Numbers: the official
# README's "Reported" and "Evaluation Results" columns, the latter the authors' evaluation of the released FP32 files
# (trained in FP16). Data config: the official main.py evaluates at 224 x 224 (HybridValPipe: shorter side resized
# to 256 with DALI's triangular filter, i.e. antialiased linear like PIL's bilinear, centre crop 224 = crop_pct
# 0.875, ImageNet mean / std); it trains at 224 too (HybridTrainPipe).
_FCA_RELEASE = Release(
    tag='official_in1k',
    url='https://github.com/cfzd/FcaNet/releases/download/v1.0/fca{depth}.pth',
    origin_url='https://github.com/cfzd/FcaNet',
    top1=((34, '75.07', '75.02'), (50, '78.52', '78.57'), (101, '79.64', '79.63'), (152, '80.08', '80.02')),
    top1_source='https://github.com/cfzd/FcaNet/blob/aa5fb63505575bb4e4e094613565379c3f6ada33/README.md',
    data_config=(
        ('input_size', (3, 224, 224)), ('crop_pct', 0.875), ('interpolation', 'bilinear'),
        ('mean', IMAGENET_DEFAULT_MEAN), ('std', IMAGENET_DEFAULT_STD)),
)


StageKwargs = Callable[[int, bool], Tuple[Dict[str, Any], ...]]  # (depth, cifar) -> layer kwargs for stages 1-4


@dataclass(frozen=True)
class Mechanism:
    """One attention mechanism: its layer, official placement and paper."""
    name: str  # model name prefix, and the layer's name in ``timm_gct.layers.get_attn`` (unless stage_wrapper)
    title: str
    paper_name: str
    paper_id: str
    code: str
    stages: Tuple[int, ...] = (1, 2, 3, 4)  # official placement: stages (1-4) whose blocks carry the layer
    blocks: str = 'all'  # 'all' blocks of those stages, or only the 'last' one
    stage_kwargs: Optional[StageKwargs] = None  # official per-stage layer settings
    layer4_stride: int = 2  # ImageNet-stem models; the CIFAR models keep the plain twin's stride 2
    stage_wrapper: Optional[Callable[..., nn.Module]] = None  # (blocks, channels, device, dtype) -> stage module
    depths: Tuple[int, ...] = (18, 34, 50, 101, 152)
    cifar_depths: Tuple[int, ...] = (18, 34, 50)
    identity_init: bool = False  # the layer is exactly the identity at init: the ImageNet models get ResNet weights
    # Layer arguments of every model (attn_kwargs override them); the channel gates get inplace=True, since timm's
    # blocks never read the attention layer's input again.
    layer_kwargs: Tuple[Tuple[str, Any], ...] = ()
    release: Optional[Release] = None  # the authors' ImageNet-1k weights: a pretrained tag at the released depths


MECHANISMS: Dict[str, Mechanism] = {m.name: m for m in (
    Mechanism(
        'gct', 'GCT', 'Gated Channel Transformation for Visual Recognition', 'arXiv:1909.11519',
        'https://github.com/z-x-yang/GCT', identity_init=True, layer_kwargs=(('inplace', True),)),
    Mechanism(
        'nam', 'NAM', 'NAM: Normalization-based Attention Module', 'arXiv:2111.12419',
        'https://github.com/Christian-lyc/NAM', layer_kwargs=(('inplace', True),)),
    Mechanism(
        'gc', 'GC', 'GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond', 'arXiv:1904.11492',
        'https://github.com/xvjiarui/GCNet', stages=(2, 3, 4), identity_init=True),
    Mechanism(
        'triplet', 'Triplet', 'Rotate to Attend: Convolutional Triplet Attention Module', 'arXiv:2010.03045',
        'https://github.com/landskape-ai/triplet-attention'),
    Mechanism(
        'eca', 'ECA', 'ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks',
        'arXiv:1910.03151', 'https://github.com/BangguWu/ECANet', stage_kwargs=_eca_kernel_sizes,
        layer_kwargs=(('inplace', True),)),
    Mechanism(
        'srm', 'SRM', 'SRM: A Style-based Recalibration Module for Convolutional Neural Networks',
        'arXiv:1903.10829', 'https://github.com/hyunjaelee410/style-based-recalibration-module',
        layer_kwargs=(('inplace', True),)),
    Mechanism(
        'fca', 'FcaNet', 'FcaNet: Frequency Channel Attention Networks', 'arXiv:2012.11879',
        'https://github.com/cfzd/FcaNet', stage_kwargs=_fca_dct_sizes, layer_kwargs=(('inplace', True),),
        release=_FCA_RELEASE),
    Mechanism(
        'gsop', 'GSoP', 'Global Second-order Pooling Convolutional Networks', 'arXiv:1811.12006',
        'https://github.com/ZilinGao/Global-Second-order-Pooling-Convolutional-Networks', blocks='last',
        stage_kwargs=_gsop_strides, layer4_stride=1),
    Mechanism(
        'soca', 'SoCA', 'Second-Order Attention Network for Single Image Super-Resolution',
        'doi:10.1109/CVPR.2019.01132', 'https://github.com/daitao/SAN'),
    Mechanism(
        # The in-block Encoding layer is a CIFAR design; at ResNet-101/152 widths it would add 78 M / 109 M
        # parameters (1.8x the backbone) for a mechanism with no ImageNet result, so those depths are not registered.
        'enc', 'EncNet', 'Context Encoding for Semantic Segmentation', 'arXiv:1803.08904',
        'https://github.com/zhanghang1989/PyTorch-Encoding', stage_kwargs=_enc_widths, depths=(18, 34, 50)),
    Mechanism(
        # Official: one block after each of the last three Inception groups of a re-ID network; here the last block
        # of each of the last three stages.
        'ba', 'BA', 'Bilinear Attention Networks for Person Retrieval',
        'https://openaccess.thecvf.com/content_ICCV_2019/html/Fang_Bilinear_Attention_Networks_for_Person_Retrieval_ICCV_2019_paper.html',
        'https://github.com/PengfeiFANGanu/Attention-in-Attention-Networks', stages=(2, 3, 4), blocks='last'),
    Mechanism(
        # Official: one module, applied twice, on the backbone's final feature map; here the last block of stage 4.
        'cc', 'CC', 'CCNet: Criss-Cross Attention for Semantic Segmentation', 'arXiv:1811.11721',
        'https://github.com/speedinghzl/CCNet', stages=(4,), blocks='last', identity_init=True),
    Mechanism(
        'dia', 'DIA', 'DIANet: Dense-and-Implicit Attention Network', 'arXiv:1905.10671',
        'https://github.com/gbup-group/DIANet', stage_wrapper=DIAStage),
)}


@dataclass(frozen=True)
class _ModelDef:
    mechanism: Optional[Mechanism]  # None: plain ResNet baseline
    depth: int
    cifar: bool


def _model_defs() -> Dict[str, _ModelDef]:
    defs = {f'resnet{d}_cifar': _ModelDef(None, d, True) for d in (18, 34, 50)}
    for m in MECHANISMS.values():
        defs.update({f'{m.name}_resnet{d}': _ModelDef(m, d, False) for d in m.depths})
        defs.update({f'{m.name}_resnet{d}_cifar': _ModelDef(m, d, True) for d in m.cifar_depths})
    return defs


_MODEL_DEFS = _model_defs()


def model_mechanism(model_name: str) -> Optional[Mechanism]:
    """The mechanism of a model registered by timm_gct: GCT for the ``gct_resnet*_official`` models (``gct_official``),
    None for a plain baseline; KeyError for other names."""
    arch = model_name.split('.')[0]
    if is_model_in_modules(arch, ['gct_official']):
        return MECHANISMS['gct']
    return _MODEL_DEFS[arch].mechanism


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv1', 'classifier': 'fc',
        'license': 'apache-2.0',
        **kwargs,
    }


def _model_cfg(model_def: _ModelDef) -> Dict[str, Any]:
    m = model_def.mechanism
    paper = dict(paper_name=m.paper_name, paper_ids=m.paper_id) if m is not None else dict(
        paper_name='Deep Residual Learning for Image Recognition', paper_ids='arXiv:1512.03385')
    if model_def.cifar:
        return _cfg(
            num_classes=10, input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0,
            mean=CIFAR_DEFAULT_MEAN, std=CIFAR_DEFAULT_STD, **paper)
    pool = 7 if m is None or m.layer4_stride == 2 else 14
    return _cfg(pool_size=(pool, pool), **paper)


# timm's plain-ResNet weights that the identity-at-init mechanisms start from: timm's default tag for the depth
# (ResNet Strikes Back A1 / A1h) and torchvision's original weights.
RESNET_WEIGHTS: Dict[int, Tuple[str, ...]] = {
    18: ('a1_in1k', 'tv_in1k'),
    34: ('a1_in1k', 'tv_in1k'),
    50: ('a1_in1k', 'tv_in1k'),
    101: ('a1h_in1k', 'tv_in1k'),
    152: ('a1h_in1k', 'tv_in1k'),
}
_RESNET_WEIGHTS_SUFFIX = '_attn_identity'
# The source cfg's fields that describe its weights and their data; the rest (papers, name) stays this model's own.
_SOURCE_FIELDS = (
    'input_size', 'test_input_size', 'interpolation', 'crop_pct', 'test_crop_pct', 'crop_mode', 'mean', 'std',
    'num_classes', 'pool_size', 'test_pool_size', 'license', 'origin_url')


def resnet_weights_tag(source_tag: str) -> str:
    """Tag of an identity-at-init model holding timm's ``resnet<depth>.<source_tag>`` weights."""
    return f'resnet_{source_tag}{_RESNET_WEIGHTS_SUFFIX}'


def resnet_weights_source(model_name: str) -> Optional[str]:
    """``gct_resnet50.resnet_a1_in1k_attn_identity`` -> ``resnet50.a1_in1k``; None for any other name."""
    arch, _, tag = model_name.partition('.')
    if arch not in _MODEL_DEFS or not (tag.startswith('resnet_') and tag.endswith(_RESNET_WEIGHTS_SUFFIX)):
        return None
    source_tag = tag[len('resnet_'):-len(_RESNET_WEIGHTS_SUFFIX)]
    return f'resnet{_MODEL_DEFS[arch].depth}.{source_tag}'


def _resnet_weights_cfg(model_def: _ModelDef, source_tag: str) -> Dict[str, Any]:
    source = get_pretrained_cfg(f'resnet{model_def.depth}.{source_tag}').to_dict()
    title = model_def.mechanism.title
    cfg = _model_cfg(model_def)
    return {
        **cfg,
        **{k: source[k] for k in _SOURCE_FIELDS if source.get(k) is not None},
        'paper_ids': (cfg['paper_ids'],) + ((source['paper_ids'],) if source.get('paper_ids') else ()),
        'hf_hub_id': source['hf_hub_id'],  # the ResNet's own Hub repo: its weights file is downloaded and shared
        'description': (
            f"timm's resnet{model_def.depth}.{source_tag} weights ({source['hf_hub_id']}) with every {title} layer "
            f"at its identity initialisation, untrained: the model computes exactly that ResNet's function. A "
            f'starting point for fine-tuning, not {title}-trained weights.'),
        'notes': (
            f"Only the {title} layers' parameters are absent from the source weights; they keep their init.",),
    }


def model_release(model_name: str) -> Optional[Tuple[Release, int]]:
    """The release and depth whose weights ``model_name`` names: ``fca_resnet50.official_in1k``, or ``fca_resnet50``
    whose default tag it is -> (FcaNet's release, 50); None for any other name."""
    arch, _, tag = model_name.partition('.')
    d = _MODEL_DEFS.get(arch)
    release = d.mechanism.release if d is not None and d.mechanism is not None else None
    if release is None or d.cifar or d.depth not in release.depths or tag not in ('', release.tag):
        return None
    return release, d.depth


def _release_cfg(model_def: _ModelDef, release: Release) -> Dict[str, Any]:
    title, depth = model_def.mechanism.title, model_def.depth
    reported, evaluated = release.top1_of(depth)
    url = release.url.format(depth=depth)
    return {
        **_model_cfg(model_def),
        **dict(release.data_config),
        'url': url,
        'license': SUPPORTED[model_def.mechanism.name].license,
        'origin_url': release.origin_url,
        'description': (
            f'{title} ResNet-{depth} weights trained on ImageNet-1k by the {title} authors, from their release '
            f'({url}); the official keys are mapped onto this model by the code of `timm-gct convert`.'),
        'notes': (
            f'ImageNet-1k top-1 published by the authors: {reported} % reported, {evaluated} % in their evaluation '
            f'of the released file ({release.top1_source}).',),
    }


def _model_cfgs() -> Dict[str, Dict[str, Any]]:
    cfgs = {}
    for name, d in _MODEL_DEFS.items():
        release = d.mechanism.release if d.mechanism is not None else None
        # Tagged cfgs only, so pretrained=True without a tag takes the first one, as for timm's resnet50.
        if d.mechanism is not None and d.mechanism.identity_init and not d.cifar:
            cfgs.update({
                f'{name}.{resnet_weights_tag(t)}': _resnet_weights_cfg(d, t) for t in RESNET_WEIGHTS[d.depth]})
        elif release is not None and not d.cifar and d.depth in release.depths:
            cfgs[f'{name}.{release.tag}'] = _release_cfg(d, release)
        else:
            cfgs[name] = _model_cfg(d)
    return cfgs


# timm reads ``default_cfgs`` when ``register_model`` runs, so it must be defined above the entrypoints.
default_cfgs = generate_default_cfgs(_model_cfgs())


def _use_cifar_stem(model: ResNet) -> None:
    """Swap the 7x7/2 stem conv and max-pool for a 3x3/1 conv, and fix the feature reductions to match."""
    old = model.conv1
    model.conv1 = nn.Conv2d(
        old.in_channels, old.out_channels, kernel_size=3, padding=1, bias=False,
        device=old.weight.device, dtype=old.weight.dtype,
    )
    nn.init.kaiming_normal_(model.conv1.weight, mode='fan_out', nonlinearity='relu')  # as ResNet.init_weights
    model.maxpool = nn.Identity()
    model.feature_info[0]['reduction'] = 1  # stem conv stride 2 -> 1
    for info in model.feature_info[1:]:
        info['reduction'] //= 4  # and no max-pool


def _set_layer4_stride(model: ResNet, stride: int) -> None:
    """Stride 1 in layer4's first block (its strided conv and downsample path): layer4 keeps layer3's resolution."""
    if stride == 2:
        return
    block = model.layer4[0]
    conv = block.conv2 if isinstance(block, Bottleneck) else block.conv1
    if conv.stride != (2, 2) or not isinstance(block.aa, nn.Identity):
        raise ValueError(
            f'layer4_stride={stride} is only supported for a layer4 that downsamples with a strided conv (not with '
            f'output_stride < 32 or an anti-aliasing layer).')
    conv.stride = (1, 1)
    for name, m in block.downsample.named_children():
        if isinstance(m, nn.Conv2d):
            m.stride = (1, 1)
        elif isinstance(m, nn.AvgPool2d):  # avg_down
            setattr(block.downsample, name, nn.Identity())
    model.feature_info[-1]['reduction'] //= 2


def _prune_attn(model: ResNet, stages: Tuple[int, ...], blocks: str) -> None:
    """Remove the attention layer (block attribute ``se``) from every block outside the placement."""
    for stage_idx in range(1, _NUM_STAGES + 1):
        stage_blocks = list(getattr(model, f'layer{stage_idx}').children())
        for block_idx, block in enumerate(stage_blocks):
            if stage_idx not in stages or (blocks == 'last' and block_idx < len(stage_blocks) - 1):
                del block.se
                block.se = None  # a plain attribute, exactly as timm's blocks hold "no attention"


def _wrap_stages(model: ResNet, wrapper: Callable[..., nn.Module], stages: Tuple[int, ...], **dd: Any) -> None:
    for stage_idx in stages:
        name = f'layer{stage_idx}'
        setattr(model, name, wrapper(getattr(model, name), model.feature_info[stage_idx]['num_chs'], **dd))


def _build_resnet(
        cifar_stem: bool = False,
        layer4_stride: int = 2,
        attn_stages: Optional[Tuple[int, ...]] = None,
        attn_blocks: str = 'all',
        stage_wrapper: Optional[Callable[..., nn.Module]] = None,
        **kwargs: Any,
) -> ResNet:
    model = ResNet(**kwargs)
    if cifar_stem:
        _use_cifar_stem(model)
    _set_layer4_stride(model, layer4_stride)
    if stage_wrapper is not None:
        _wrap_stages(model, stage_wrapper, attn_stages, device=kwargs.get('device'), dtype=kwargs.get('dtype'))
    elif attn_stages is not None:
        _prune_attn(model, attn_stages, attn_blocks)
    return model


def _check_attn_stages(variant: str, attn_stages: Any) -> Tuple[int, ...]:
    try:
        stages = tuple(attn_stages)
    except TypeError:
        stages = None
    valid = range(1, _NUM_STAGES + 1)
    if stages is None or any(isinstance(s, bool) or not isinstance(s, int) or s not in valid for s in stages):
        raise ValueError(
            f'{variant}: attn_stages={attn_stages!r} is not allowed; expected a sequence of stage numbers from '
            f'{tuple(valid)} (layer1-layer4).')
    return stages


def _attn_factory(
        variant: str,
        layer: Callable[..., nn.Module],
        attn_kwargs: Dict[str, Any],
        stage_kwargs: Optional[Tuple[Dict[str, Any], ...]],
        widths: Tuple[int, ...],
) -> Callable[..., nn.Module]:
    """The ``attn_layer`` for the hook; per-stage settings are looked up by the block width the hook passes."""
    if not stage_kwargs:
        return partial(layer, **attn_kwargs) if attn_kwargs else layer
    if len(set(widths)) != len(widths):
        raise ValueError(
            f'{variant}: per-stage attention settings need a different width in every stage; got stage widths '
            f'{widths}.')
    by_width = dict(zip(widths, stage_kwargs))

    def make(channels: int, **kwargs: Any) -> nn.Module:
        return layer(channels, **{**by_width[channels], **attn_kwargs}, **kwargs)
    return make


def _keep_attn_init(state_dict: Dict[str, torch.Tensor], model: ResNet) -> Dict[str, torch.Tensor]:
    """``pretrained_filter_fn`` of the identity-at-init mechanisms: plain-ResNet weights load, the attention keeps
    its init. Only attention-layer keys (block attribute ``se``) may be absent; any other missing or unexpected key is
    a ValueError naming them. The classifier is left to timm, which drops it when ``num_classes`` differs."""
    attn = {k for k in model.state_dict() if 'se' in k.split('.')[:-1]}
    if not attn & state_dict.keys():  # plain-ResNet weights: the layers' own init, which is their identity (GC's
        for name, m in model.named_modules():  # zero last conv is otherwise lost with zero_init_last=False)
            if name.split('.')[-1] == 'se' and hasattr(m, 'reset_parameters'):
                m.reset_parameters()
    own = model.state_dict()
    classifier = f"{model.pretrained_cfg.get('classifier', 'fc')}."
    # BatchNorm fills a missing num_batches_tracked itself (files written before PyTorch 0.4.1 have none).
    optional = attn | {k for k in own if k.endswith('.num_batches_tracked')}
    missing = sorted(k for k in own.keys() - state_dict.keys() - optional if not k.startswith(classifier))
    unexpected = sorted(k for k in state_dict.keys() - own.keys() if not k.startswith(classifier))
    if missing or unexpected:
        arch = model.pretrained_cfg.get('architecture', type(model).__name__)
        raise ValueError(
            f'{arch}: the pretrained weights do not fit this model; only attention-layer keys may be missing. '
            f'Missing keys: {missing or "none"}; unexpected keys: {unexpected or "none"}.')
    kept = sorted(optional - state_dict.keys())
    if attn - state_dict.keys():
        _logger.info(f'{len(attn - state_dict.keys())} attention-layer tensors are not in the pretrained weights and '
                     f'keep their identity init.')
    return {**state_dict, **{k: own[k] for k in kept}}


def _create_attn_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> ResNet:
    model_def = _MODEL_DEFS[variant]
    block, layers = _DEPTHS[model_def.depth]
    model_args: Dict[str, Any] = dict(block=block, layers=layers)
    m = model_def.mechanism
    layer4_stride = 2
    if m is not None:
        attn_kwargs = kwargs.pop('attn_kwargs', None) or {}
        if not isinstance(attn_kwargs, dict):
            raise ValueError(f'{variant}: attn_kwargs={attn_kwargs!r} is not allowed; expected a dict.')
        attn_kwargs = {**dict(m.layer_kwargs), **attn_kwargs}
        model_args['attn_stages'] = _check_attn_stages(variant, kwargs.pop('attn_stages', m.stages))
        model_args['attn_blocks'] = kwargs.pop('attn_blocks', m.blocks)
        check_choice(variant, 'attn_blocks', model_args['attn_blocks'], ('all', 'last'))
        if m.stage_wrapper is not None:
            model_args['stage_wrapper'] = partial(m.stage_wrapper, **attn_kwargs)
        else:
            widths = tuple(c * block.expansion for c in kwargs.get('channels', (64, 128, 256, 512)))
            stage_kwargs = m.stage_kwargs(model_def.depth, model_def.cifar) if m.stage_kwargs else None
            attn_layer = _attn_factory(variant, get_attn(m.name), attn_kwargs, stage_kwargs, widths)
            model_args['block_args'] = {'attn_layer': attn_layer, **(kwargs.pop('block_args', None) or {})}
        layer4_stride = 2 if model_def.cifar else m.layer4_stride
        if m.identity_init:
            kwargs.setdefault('pretrained_filter_fn', _keep_attn_init)
        elif m.release is not None:
            kwargs.setdefault('pretrained_filter_fn', checkpoint_filter_fn)
    model_args['layer4_stride'] = kwargs.pop('layer4_stride', layer4_stride)
    check_choice(variant, 'layer4_stride', model_args['layer4_stride'], (2, 1))
    if model_def.cifar:
        for key in ('stem_type', 'stem_width', 'replace_stem_pool'):
            if key in kwargs:
                raise ValueError(
                    f'{variant}: {key}={kwargs[key]!r} is not allowed; CIFAR models have a fixed 3x3 stride-1 stem.')
        model_args['cifar_stem'] = True
    return build_model_with_cfg(_build_resnet, variant, pretrained, **dict(model_args, **kwargs))


def _entrypoint(name: str) -> Callable[..., ResNet]:
    model_def = _MODEL_DEFS[name]
    title = model_def.mechanism.title + '-' if model_def.mechanism is not None else ''
    where = 'CIFAR stem (3x3 stride 1, no max-pool), 32x32 input' if model_def.cifar else 'ImageNet stem'

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> ResNet:
        return _create_attn_resnet(name, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = f'{title}ResNet-{model_def.depth}, {where}.'
    return register_model(entrypoint)


for _name in _MODEL_DEFS:
    globals()[_name] = _entrypoint(_name)
