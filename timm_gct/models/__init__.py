""" Model registrations. Importing this package registers every model with timm. """
from typing import Any, Dict

import timm

from .attn_resnet import *
from .attn_resnet import _MODEL_DEFS, _model_cfg
from .gct_official import *

MODEL_MODULES = ('attn_resnet', 'gct_official')  # the modules (timm's module names) that register timm_gct models


def architecture_cfg(model_name: str) -> Dict[str, Any]:
    """A registered architecture's own cfg, without the provenance of any pretrained tag (e.g. timm's ResNet
    weights): what weights trained for it should be described with."""
    arch = model_name.split('.')[0]
    if arch in _MODEL_DEFS:
        return _model_cfg(_MODEL_DEFS[arch])
    return timm.models.get_pretrained_cfg(arch).to_dict()
