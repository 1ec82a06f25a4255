""" Dense-and-Implicit Attention (DIA): one LSTM-style gate shared by all blocks of a stage

Paper: `DIANet: Dense-and-Implicit Attention Network` - https://arxiv.org/abs/1905.10671 (AAAI 2020)
Official code: https://github.com/gbup-group/DIANet (``models/cifar/dia_resnet.py``: ``LSTMCell``, ``small_cell``,
    ``Attention``; commit 51685ca)

Math, per stage, for the blocks b = 1..n of the stage in order, with out_b the block's last-BN output:
    m_b            = GAP(out_b)                                              (N, C)
    i, f, g, o     = split(W_ih(m_b) + W_hh(h_{b-1}))         W_* = Linear(C, C/4) -> ReLU -> Linear(C/4, 4C)
    c_b            = sigmoid(f) * c_{b-1} + sigmoid(i) * tanh(g)
    h_b            = sigmoid(o) * sigmoid(c_b)                               (the official cell's sigmoid, not tanh)
    block output   = act(out_b * h_b + shortcut)                             h_b, in (0, 1), is the channel gate
with h_0 = c_0 = 0 at the start of every stage. One cell (W_ih, W_hh) is shared by all blocks of a stage; each stage
has its own.

How it sits in timm's ResNet without forking its blocks: ``DIAStage`` replaces a stage's ``nn.Sequential``, keeps its
blocks under the same names (``layer1.0.conv1.weight`` ...) and puts one ``DenseImplicitAttention`` instance in the
attention slot (``se``) of every block. The recurrent state lives on that instance only while the stage's forward
runs: ``DIAStage.forward`` resets it before the first block and clears it after the last, so nothing carries over
between forward calls or between models. The stage is one unit for gradient checkpointing (timm's
``checkpoint_seq`` then recomputes the whole stage from its input, state included); checkpointing single blocks of a
DIA stage would be wrong and is never done by timm. In the state dict the shared cell appears once, under the first
block (``layerN.0.se.*``); the other blocks' aliases are dropped on save and restored on load, so checkpoints hold no
shared tensors (safetensors refuses those).

Deviations from the official code:
* No ``.cuda()``: the initial state is created with the input's device and dtype.
* The official cell's dropout (p=0.1) only feeds a second LSTM layer, which the models never have; it is left out.
* timm's ResNet zero-initialises each block's last BN (the official DIANet ResNet does not), so at init the gate sees
  zeros; the cell's Linear layers keep PyTorch's default init, as officially (timm re-initialises only Conv2d).
Parameters per stage: 2 * (1.25 C^2 + 4.25 C), e.g. +14.0 M for ResNet-50 widths (256...2048).
"""
from typing import Optional, Tuple

import torch
from torch import nn

from ._checks import check_bool, check_channels

__all__ = ['DenseImplicitAttention', 'DIAStage']


def _small_cell(in_features: int, hidden: int, device=None, dtype=None) -> nn.Sequential:
    dd = {'device': device, 'dtype': dtype}
    return nn.Sequential(
        nn.Linear(in_features, in_features // 4, **dd),
        nn.ReLU(inplace=True),
        nn.Linear(in_features // 4, 4 * hidden, **dd),
    )


class DenseImplicitAttention(nn.Module):
    """The DIA cell and gate. ``DIAStage`` shares one instance between all blocks of a stage and makes it recurrent.

    Used on its own (``recurrent=False``), every call starts from the zero state and keeps nothing, so an instance
    placed in each block by a plain ``attn_layer`` hook is a per-block gate without DIANet's recurrence.
    """
    h: Optional[torch.Tensor]
    c: Optional[torch.Tensor]

    def __init__(self, channels: int, recurrent: bool = False, device=None, dtype=None):
        """
        Args:
            channels: Width of the stage (input and hidden size of the cell); at least 4 for the C/4 bottleneck.
            recurrent: Carry (h, c) from one call to the next until ``reset()``; set by ``DIAStage``.
        """
        super().__init__()
        check_channels(type(self).__name__, channels)
        if channels < 4:
            raise ValueError(
                f'DenseImplicitAttention: channels={channels} is not allowed; the cell reduces to channels // 4 '
                f'hidden units, so it needs channels >= 4.')
        check_bool(type(self).__name__, 'recurrent', recurrent)
        self.recurrent = recurrent
        self.w_ih = _small_cell(channels, channels, device=device, dtype=dtype)
        self.w_hh = _small_cell(channels, channels, device=device, dtype=dtype)
        self.h = None
        self.c = None

    def reset(self) -> None:
        """Forget the recurrent state: the next call starts a stage."""
        self.h = None
        self.c = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(2, 3))
        h = self.h
        c = self.c
        if h is None or c is None:
            h = torch.zeros_like(m)
            c = torch.zeros_like(m)
        i, f, g, o = (self.w_ih(m) + self.w_hh(h)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.sigmoid(c)
        if self.recurrent:
            self.h = h
            self.c = c
        return x * h.to(x.dtype).unsqueeze(-1).unsqueeze(-1)


class DIAStage(nn.Module):
    """A ResNet stage whose blocks share one recurrent ``DenseImplicitAttention`` in their attention slot (``se``)."""

    def __init__(self, blocks: nn.Sequential, channels: int, device=None, dtype=None):
        """
        Args:
            blocks: The stage's blocks (timm ResNet ``BasicBlock`` / ``Bottleneck``, built without attention).
            channels: The blocks' output width.
        """
        super().__init__()
        attn = DenseImplicitAttention(channels, recurrent=True, device=device, dtype=dtype)
        for name, block in blocks.named_children():
            if getattr(block, 'se', None) is not None:
                raise ValueError(f'DIAStage: block {name} already has an attention layer ({type(block.se).__name__}).')
            block.se = attn
            self.add_module(name, block)
        self.register_state_dict_post_hook(_drop_aliases)
        self.register_load_state_dict_pre_hook(_restore_aliases)

    def __iter__(self):
        # timm's checkpoint_seq iterates stages to checkpoint block by block; the shared recurrent state makes the
        # stage the smallest unit that can be recomputed on its own.
        return iter((self,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Every block holds the same cell, so resetting through each is resetting it once (TorchScript unrolls these
        # loops and has no break).
        for block in self.children():
            block.se.reset()  # start the stage from the zero state
        for block in self.children():
            x = block(x)
        for block in self.children():
            block.se.reset()  # leave no state (and no autograd graph) behind
        return x


def _alias_prefixes(stage: DIAStage, prefix: str) -> Tuple[str, Tuple[str, ...]]:
    names = [name for name, _ in stage.named_children()]
    return f'{prefix}{names[0]}.se.', tuple(f'{prefix}{name}.se.' for name in names[1:])


def _drop_aliases(stage: DIAStage, state_dict, prefix: str, local_metadata) -> None:
    _, aliases = _alias_prefixes(stage, prefix)
    for key in [k for k in state_dict if k.startswith(aliases)]:
        del state_dict[key]


def _restore_aliases(stage: DIAStage, state_dict, prefix: str, *args) -> None:
    canonical, aliases = _alias_prefixes(stage, prefix)
    for key in [k for k in state_dict if k.startswith(canonical)]:
        for alias in aliases:
            state_dict.setdefault(alias + key[len(canonical):], state_dict[key])
