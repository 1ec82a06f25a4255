""" Devices for the commands that run models (compare, bench). """
from typing import Optional

import torch

__all__ = ['one_line', 'resolve_device', 'sync']


def one_line(e: BaseException) -> str:
    """An exception's message on one line, for a command-line error."""
    return ' '.join(str(e).split()) or type(e).__name__


def resolve_device(name: Optional[str]) -> torch.device:
    """``--device``: cuda when available without a name, else the named device, checked by allocating on it."""
    if name is None:
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise ValueError(f'--device {name!r}: {one_line(e)}') from None
    return device


def sync(device: torch.device) -> None:
    """Wait for queued work, so that a timer measures compute and not only the launch."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    elif device.type != 'cpu' and hasattr(torch, 'accelerator'):
        torch.accelerator.synchronize(device)
