""" The user cache folder of timm_gct: ``$TIMM_GCT_CACHE_DIR``, else ``$XDG_CACHE_HOME/timm_gct``, else
``~/.cache/timm_gct``. """
import os
from pathlib import Path

__all__ = ['cache_dir']


def cache_dir() -> Path:
    override = os.environ.get('TIMM_GCT_CACHE_DIR')
    if override:
        return Path(override)
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / 'timm_gct'
