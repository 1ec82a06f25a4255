""" ``timm-gct bench``: what the attention layers cost in speed and memory, against plain ResNets and official code.

Not part of the library API: nothing in ``timm_gct.layers`` or ``timm_gct.models`` imports from here.
"""
