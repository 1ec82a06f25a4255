""" Constructor argument checks shared by the attention layers.

Each check raises ``ValueError`` naming the layer, the argument, the value and what is allowed, so a bad
hyper-parameter fails when the model is built rather than deep inside a forward pass.
"""
from typing import Any, Collection

from torch import nn
from timm.layers import create_act_layer

__all__ = [
    'check_act_layer', 'check_bool', 'check_channels', 'check_choice', 'check_int', 'check_odd_kernel',
    'check_positive', 'divided_channels', 'reduced_channels',
]


def check_channels(layer: str, channels: Any) -> None:
    """Require a positive integer channel count."""
    if not _is_int(channels) or channels < 1:
        raise ValueError(f'{layer}: channels={channels!r} is not allowed; expected a positive int.')


def check_bool(layer: str, name: str, value: Any) -> None:
    """Require True or False (a truthy 1 or 'yes' is a typo more often than a choice)."""
    if not isinstance(value, bool):
        raise ValueError(f'{layer}: {name}={value!r} is not allowed; expected True or False.')


def check_act_layer(layer: str, act_layer: Any) -> None:
    """Require what timm's ``create_act_layer`` turns into a module: an activation name timm knows, or a class."""
    try:
        module = create_act_layer(act_layer)
    except (KeyError, TypeError):  # timm: KeyError for an unknown name; calling a non-class: TypeError
        module = None
    if not isinstance(module, nn.Module):
        raise ValueError(
            f"{layer}: act_layer={act_layer!r} is not allowed; expected an activation name timm knows (e.g. 'relu', "
            f"'gelu', 'silu') or an nn.Module class.")


def check_int(layer: str, name: str, value: Any, minimum: int = 1, allow_none: bool = False) -> None:
    """Require an int >= ``minimum`` (or None with ``allow_none``)."""
    if allow_none and value is None:
        return
    if not _is_int(value) or value < minimum:
        none = ' or None' if allow_none else ''
        raise ValueError(f'{layer}: {name}={value!r} is not allowed; expected an int >= {minimum}{none}.')


def check_choice(layer: str, name: str, value: Any, allowed: Collection[Any]) -> None:
    """Require ``value`` to be one of ``allowed`` (True / False are not 1 / 0 here)."""
    if not any(a == value and isinstance(a, bool) == isinstance(value, bool) for a in allowed):
        choices = ', '.join(repr(a) for a in allowed)
        raise ValueError(f'{layer}: {name}={value!r} is not allowed; expected one of {choices}.')


def check_positive(layer: str, name: str, value: Any, allow_zero: bool = False) -> None:
    """Require a finite real number > 0 (>= 0 with ``allow_zero``)."""
    is_number = not isinstance(value, bool) and isinstance(value, (int, float))
    if not is_number or not (0 <= value if allow_zero else 0 < value) or not value < float('inf'):
        bound = '>= 0' if allow_zero else '> 0'
        raise ValueError(f'{layer}: {name}={value!r} is not allowed; expected a finite number {bound}.')


def check_odd_kernel(layer: str, kernel_size: Any) -> None:
    """Require an odd int >= 1, so that 'same' padding (k - 1) / 2 keeps the size."""
    if not _is_int(kernel_size) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'{layer}: kernel_size={kernel_size!r} is not allowed; expected an odd int >= 1.')


def reduced_channels(layer: str, channels: int, rd_ratio: Any, what: str) -> int:
    """``int(channels * rd_ratio)``, required to be at least 1; ``what`` names the reduced quantity in the error."""
    check_positive(layer, 'rd_ratio', rd_ratio)
    reduced = int(channels * rd_ratio)
    if reduced < 1:
        raise ValueError(
            f'{layer}: rd_ratio={rd_ratio!r} leaves int({channels} * {rd_ratio}) = {reduced} {what}; at least 1 is '
            f'needed, so rd_ratio must be >= 1 / {channels}.')
    return reduced


def divided_channels(layer: str, channels: int, reduction: Any) -> int:
    """``channels // reduction`` for an int ``reduction``, required to be at least 1."""
    check_int(layer, 'reduction', reduction)
    hidden = channels // reduction
    if hidden < 1:
        raise ValueError(
            f'{layer}: reduction={reduction!r} leaves {channels} // {reduction} = 0 hidden channels; it must be <= '
            f'channels ({channels}).')
    return hidden


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
