""" The statistics of every registered model, measured once per version and then read from a table.

``timm_gct.stats.measure`` builds a model on the meta device and counts its MACs under a FLOP counter: a few tenths of
a second per model, half a minute for all of them on a 2-core CPU. The figures depend only on the code that builds
and counts, so they are measured once for a (timm_gct, timm, torch) version triple and stored:

* the package ships ``model_stats.json``, measured with the versions CI pins (``.ci/constraints.txt``); a test checks
  every figure in it against ``measure`` for every registered model;
* with other versions, models missing from that table are measured on first use and stored in a file named after the
  versions in the user cache folder (``timm_gct._cache``). A new version of any of the three misses both tables.

torch enters with its release number only: the local build tag (``+cpu``, ``+cu130``) names a compute backend, and
the counts come from shapes on the meta device. Regenerate the shipped table with ``python -m timm_gct.stats_table``.
"""
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Dict, Iterable, Tuple

import timm
import torch

import timm_gct
from ._cache import cache_dir
from .models import MODEL_MODULES
from .stats import ModelStats, measure

__all__ = ['SHIPPED_TABLE', 'cache_file', 'cached_stats', 'read_table', 'stats_versions', 'store_stats', 'write_table']

SHIPPED_TABLE = Path(__file__).with_name('model_stats.json')


def stats_versions() -> Dict[str, str]:
    """The versions the figures depend on, as written in (and required of) a table."""
    return {'timm_gct': timm_gct.__version__, 'timm': timm.__version__, 'torch': torch.__version__.split('+')[0]}


def cache_file() -> Path:
    v = stats_versions()
    return cache_dir() / f"model-stats-timm_gct{v['timm_gct']}-timm{v['timm']}-torch{v['torch']}.json"


def read_table(path: Path) -> Tuple[Dict[str, str], Dict[str, ModelStats]]:
    """The versions a table was measured with, and its stats by model name (OSError, ValueError when unreadable)."""
    data = json.loads(Path(path).read_text(encoding='utf-8'))
    try:
        stats = {name: ModelStats(name=name, **{**s, 'attn_stages': tuple(s['attn_stages']),
                                                'input_size': tuple(s['input_size'])})
                 for name, s in data['models'].items()}
        return dict(data['versions']), stats
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f'{path} is not a model stats table: {e!r}') from e


def _format(versions: Dict[str, str], stats: Iterable[ModelStats]) -> str:
    # One line per model, in name order: a regenerated table diffs model by model.
    lines = [json.dumps(s.name) + ': ' + json.dumps({k: v for k, v in asdict(s).items() if k != 'name'})
             for s in sorted(stats, key=lambda s: s.name)]
    return '{\n"versions": ' + json.dumps(versions) + ',\n"models": {\n' + ',\n'.join(lines) + '\n}}\n'


def _write_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing: a reader never sees half a table, whoever wrote last wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix='.tmp')
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _matching(path: Path) -> Dict[str, ModelStats]:
    """A table's stats if it was measured with the installed versions; nothing if it is absent, unreadable or
    from other versions (a damaged cache is measured again and rewritten)."""
    try:
        versions, stats = read_table(path)
    except (OSError, ValueError):
        return {}
    return stats if versions == stats_versions() else {}


def cached_stats() -> Dict[str, ModelStats]:
    """Every model's stats known for the installed versions: the shipped table's, then the user cache's."""
    return {**_matching(SHIPPED_TABLE), **_matching(cache_file())}


def store_stats(stats: Iterable[ModelStats]) -> Path:
    """Add measured stats to the user cache file of the installed versions; OSError when it cannot be written."""
    path = cache_file()
    merged = {**_matching(path), **{s.name: s for s in stats}}
    _write_atomic(path, _format(stats_versions(), merged.values()))
    return path


def write_table(path: Path = SHIPPED_TABLE) -> Path:
    """Measure every registered model and write the table (the shipped one by default)."""
    names = timm.list_models(module=MODEL_MODULES)
    _write_atomic(Path(path), _format(stats_versions(), [measure(n) for n in names]))
    return Path(path)


if __name__ == '__main__':
    print(f'wrote {write_table()}')
