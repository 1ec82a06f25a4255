""" timm_gct: attention-augmented ResNets for timm.

``import timm_gct`` registers the models (``gct_resnet50``, ``nam_resnet50``, ``gc_resnet50``, ...) in timm's model
registry; after that they work like any timm model: ``timm.create_model('gct_resnet50')``.
"""
from .layers import *
from .models import *

__version__ = '0.1.0'
