""" Locate timm's ``tests/test_models.py`` for the installed timm version.

The file ships in timm's sdist (not in the wheel). ``TIMM_TESTS_DIR`` may point at a directory holding it; otherwise
the sdist of the installed version is fetched once with pip and cached under ``~/.cache/timm_gct`` (see
``timm_gct._cache``: ``TIMM_GCT_CACHE_DIR`` moves it).
"""
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

import timm

from timm_gct._cache import cache_dir

__all__ = ['load_timm_test_models']


def _cache_dir() -> Path:
    return cache_dir() / f'timm-{timm.__version__}-tests'


def _fetch_sdist_tests(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--no-binary', ':all:',
            f'timm=={timm.__version__}', '--dest', tmp,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob('timm-*.tar.gz'))
        if result.returncode != 0 or not sdists:
            raise RuntimeError(
                f'Could not download the timm {timm.__version__} sdist for its test suite ({" ".join(cmd)}):\n'
                f'{result.stderr.strip()}\nSet TIMM_TESTS_DIR to a directory holding timm\'s tests/test_models.py.')
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdists[0]) as tar:
            member = tar.getmember(f'timm-{timm.__version__}/tests/test_models.py')
            data = tar.extractfile(member).read()
        (dest / 'test_models.py').write_bytes(data)


def load_timm_test_models() -> ModuleType:
    """Import timm's test_models.py (fetching it if needed) as module ``timm_test_models``."""
    tests_dir = os.environ.get('TIMM_TESTS_DIR')
    path = Path(tests_dir) / 'test_models.py' if tests_dir else _cache_dir() / 'test_models.py'
    if not path.exists():
        if tests_dir:
            raise FileNotFoundError(f'TIMM_TESTS_DIR={tests_dir!r} holds no test_models.py')
        _fetch_sdist_tests(path.parent)
    spec = importlib.util.spec_from_file_location('timm_test_models', path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
