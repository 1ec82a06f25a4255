""" Model registrations. Importing this package registers every model with timm. """
from .attn_resnet import *
from .gct_official import *
