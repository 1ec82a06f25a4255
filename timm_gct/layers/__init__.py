""" Attention layers for timm's ``attn_layer`` hooks, and the name -> class table.

Every layer takes ``channels`` first and ``device`` / ``dtype`` last, so it can be passed wherever timm takes an
attention class: ``timm.create_model('resnet50', block_args=dict(attn_layer=get_attn('gct')))``.
"""
from typing import Any, Callable, Dict, List, Optional

import timm.layers
from torch import nn

from .bilinear import BilinearAttention
from .criss_cross import CrissCrossAttention
from .dia import DenseImplicitAttention, DIAStage
from .eca import EfficientChannelAttention
from .encoding import EncodingAttention
from .fca import MultiSpectralAttention
from .gct import GatedChannelTransform
from .global_context import GlobalContextBlock
from .gsop import GSoPChannelAttention
from .nam import NormalizationAttention
from .soca import SecondOrderChannelAttention
from .srm import StyleRecalibration
from .triplet import TripletAttention

__all__ = [
    'BilinearAttention', 'CrissCrossAttention', 'DenseImplicitAttention', 'DIAStage', 'EfficientChannelAttention',
    'EncodingAttention', 'GatedChannelTransform', 'GlobalContextBlock', 'GSoPChannelAttention',
    'MultiSpectralAttention', 'NormalizationAttention', 'SecondOrderChannelAttention', 'StyleRecalibration',
    'TripletAttention', 'get_attn', 'list_attn',
]

# Names are lower case. 'gc' and 'eca' shadow timm's own: its 'gc' is GlobalContext with scale fusion, its 'eca'
# derives the kernel size from the channel count. DIA is not here: its cell is shared by the blocks of a stage
# (DIAStage), which a per-block attention hook cannot express.
_ATTN_LAYERS: Dict[str, Callable[..., nn.Module]] = {
    'gct': GatedChannelTransform,
    'nam': NormalizationAttention,
    'gc': GlobalContextBlock,
    'triplet': TripletAttention,
    'eca': EfficientChannelAttention,
    'srm': StyleRecalibration,
    'fca': MultiSpectralAttention,
    'gsop': GSoPChannelAttention,
    'soca': SecondOrderChannelAttention,
    'enc': EncodingAttention,
    'ba': BilinearAttention,
    'cc': CrissCrossAttention,
}


def list_attn() -> List[str]:
    """Names this package adds to (or overrides in) timm's attention names."""
    return sorted(_ATTN_LAYERS)


def get_attn(attn_type: Any) -> Optional[Callable[..., nn.Module]]:
    """Resolve an attention type to a layer class, like ``timm.layers.get_attn``, knowing this package's names.

    Args:
        attn_type: A name from ``list_attn()`` or any value ``timm.layers.get_attn`` accepts (one of its names, a
            class or callable, or a falsy value for no attention).

    Returns:
        The layer class (or callable), or None for no attention.
    """
    if isinstance(attn_type, str) and attn_type.lower() in _ATTN_LAYERS:
        return _ATTN_LAYERS[attn_type.lower()]
    try:
        return timm.layers.get_attn(attn_type)
    except AssertionError:
        # timm asserts on unknown names; turn that into an error that says what is allowed.
        raise ValueError(
            f'get_attn: attn_type={attn_type!r} is not a known attention name; expected one of '
            f'{list_attn()} or a name timm.layers.get_attn accepts (e.g. se, eca, gca, cbam).') from None
