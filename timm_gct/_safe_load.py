""" Loading checkpoint files without running code: ``torch.load(weights_only=True)`` with an explicit allowlist. """
import re
from pathlib import Path
from typing import Any, Sequence, Union

import torch

__all__ = ['safe_torch_load']


def safe_torch_load(path: Union[str, Path], safe_globals: Sequence[type] = (), what: str = 'checkpoint') -> Any:
    """``torch.load(path, weights_only=True)``: tensors, containers and numbers, plus ``safe_globals``.

    Any failure is a ValueError naming ``what`` and the file with one line of reason (torch's own message also
    suggests ``weights_only=False``, which is never an option here).
    """
    if not Path(path).is_file():
        raise ValueError(f'{what}={str(path)!r} is not a file.')
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # UnpicklingError for unsafe content, RuntimeError for a file that is not torch's
        unsafe = re.search(r'Unsupported global: GLOBAL (\S+)', str(e))
        reason = f'it holds {unsafe.group(1)}' if unsafe else (str(e).strip().splitlines() or [type(e).__name__])[0]
        allowed = ''.join(f', {g.__name__}' for g in safe_globals)
        raise ValueError(
            f'{what}={str(path)!r} cannot be loaded with weights_only=True, which allows only tensors, containers, '
            f'numbers{allowed}: {reason}') from None

