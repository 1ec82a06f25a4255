""" DIANet's shared recurrent attention as the official DIANet code computes it (benchmark reference)

Mechanism: Dense-and-Implicit Attention (DIA): one LSTM-style cell per stage, shared by its blocks, whose hidden state
gates each block's last-BN output.
Official code: https://github.com/gbup-group/DIANet at commit 51685ca (51685ca548d862f13201c7620cce2b54b061f358):
    ``models/cifar/dia_resnet.py`` (``small_cell``, ``LSTMCell``, and the loop body of ``Attention.forward``).

Kept from the official code, in its order, for each block of a stage: ``AdaptiveAvgPool2d((1, 1))`` of the block's
output, the concatenation of every block's pooled vector into ``list`` (computed officially although only a
commented-out return uses it), zero (1, N, C) states at the first block, the official ``LSTMCell`` with one layer
(``w_ih`` / ``w_hh``: ModuleLists of ``small_cell``; gates, ``h = o * sigmoid(c)``, ``torch.stack`` of the states,
and its dropout of h (p = 0.1), whose result only a second layer would read), and ``x * ht[-1].view(N, C, 1, 1)``.
The residual add and the ReLU that follow officially are the timm block's own. Parameter names are the official
ones below ``lstm`` (``lstm.w_ih.0.seq.0.weight`` ...).

How it is driven: the official ``Attention`` module loops over a stage's blocks and keeps the states in local
variables; here our ``DIAStage`` runs the blocks, and the reference keeps (ht, ct, list) between its calls until
``reset()``, which ``DIAStage`` calls before and after the stage, i.e. the official first-block (``idx == 0``) state.

Differences from the official code:
* The zero states are created on the input's device and in its dtype (officially ``torch.zeros(...).cuda()``, in the
  default dtype, which fails on CPU and for float64).
* Only the stage-shared, recurrent cell exists officially: ``from_layer`` refuses a per-block, non-recurrent layer of
  ours (``recurrent=False``).
"""
from typing import List, Optional, Tuple

import torch
from torch import nn

from ...layers import DenseImplicitAttention

__all__ = ['OfficialDIA', 'from_layer']

LAYER = DenseImplicitAttention


class _SmallCell(nn.Module):
    """The official ``small_cell``: Linear(C, C // 4), ReLU, Linear(C // 4, 4 * hidden)."""

    def __init__(self, input_size: int, hidden_size: int, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.seq = nn.Sequential(
            nn.Linear(input_size, input_size // 4, **dd),
            nn.ReLU(inplace=True),
            nn.Linear(input_size // 4, 4 * hidden_size, **dd),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class _LSTMCell(nn.Module):
    """The official ``LSTMCell`` (DIANet uses ``nlayers=1``)."""

    def __init__(self, input_size: int, hidden_size: int, nlayers: int, dropout: float = 0.1, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.nlayers = nlayers
        self.dropout = nn.Dropout(p=dropout)
        ih: List[nn.Module] = []
        hh: List[nn.Module] = []
        for i in range(nlayers):
            if i == 0:
                ih.append(_SmallCell(input_size, hidden_size, **dd))
                hh.append(_SmallCell(hidden_size, hidden_size, **dd))
            else:
                ih.append(nn.Linear(hidden_size, 4 * hidden_size, **dd))
                hh.append(nn.Linear(hidden_size, 4 * hidden_size, **dd))
        self.w_ih = nn.ModuleList(ih)
        self.w_hh = nn.ModuleList(hh)

    def forward(
            self, input: torch.Tensor, hidden: Tuple[torch.Tensor, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        hy, cy = [], []
        for i in range(self.nlayers):
            hx, cx = hidden[0][i], hidden[1][i]
            gates = self.w_ih[i](input) + self.w_hh[i](hx)
            i_gate, f_gate, c_gate, o_gate = gates.chunk(4, 1)
            i_gate = torch.sigmoid(i_gate)
            f_gate = torch.sigmoid(f_gate)
            c_gate = torch.tanh(c_gate)
            o_gate = torch.sigmoid(o_gate)
            ncx = (f_gate * cx) + (i_gate * c_gate)
            nhx = o_gate * torch.sigmoid(ncx)  # the official sigmoid, not tanh
            cy.append(ncx)
            hy.append(nhx)
            input = self.dropout(nhx)  # computed officially; read only by a second layer
        return torch.stack(hy, 0), torch.stack(cy, 0)  # nlayers x N x C


class OfficialDIA(nn.Module):
    """One stage's official DIA cell and gate, called once per block; ``reset()`` starts a stage."""
    ht: Optional[torch.Tensor]
    ct: Optional[torch.Tensor]
    seq_list: Optional[torch.Tensor]

    def __init__(self, channels: int, device=None, dtype=None):
        """
        Args:
            channels: Stage width (official ``LSTMCell(C, C, 1)``).
        """
        super().__init__()
        self.lstm = _LSTMCell(channels, channels, 1, device=device, dtype=dtype)
        self.GlobalAvg = nn.AdaptiveAvgPool2d((1, 1))
        self.reset()

    def reset(self) -> None:
        """Forget the states: the next call is the stage's first block (official ``idx == 0``)."""
        self.ht = None
        self.ct = None
        self.seq_list = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.GlobalAvg(x)
        if self.ht is None or self.ct is None or self.seq_list is None:
            seq_list = seq.view(seq.size(0), 1, seq.size(1))
            seq = seq.view(seq.size(0), seq.size(1))
            ht = torch.zeros(1, seq.size(0), seq.size(1), device=x.device, dtype=x.dtype)  # 1: the number of layers
            ct = torch.zeros(1, seq.size(0), seq.size(1), device=x.device, dtype=x.dtype)
        else:
            seq_list = torch.cat((self.seq_list, seq.view(seq.size(0), 1, seq.size(1))), 1)
            seq = seq.view(seq.size(0), seq.size(1))
            ht, ct = self.ht, self.ct
        ht, ct = self.lstm(seq, (ht, ct))
        self.ht, self.ct, self.seq_list = ht, ct, seq_list
        return x * (ht[-1].view(ht.size(1), ht.size(2), 1, 1))


def from_layer(layer: DenseImplicitAttention) -> OfficialDIA:
    """The official cell with ``layer``'s parameters, on its device and dtype, to be shared as ``layer`` is."""
    if not layer.recurrent:
        raise ValueError(
            'DIA reference: recurrent=False (a per-block gate without recurrence) is not supported; the official '
            'cell is shared by the blocks of a stage and recurrent (DIAStage).')
    weight = layer.w_ih[0].weight
    ref = OfficialDIA(layer.w_ih[0].in_features, device=weight.device, dtype=weight.dtype)
    # Ours: w_ih.0.weight ...; officially lstm.w_ih.0.seq.0.weight ...
    state = {}
    for name, value in layer.state_dict().items():
        cell, _, rest = name.partition('.')
        state[f'lstm.{cell}.0.seq.{rest}'] = value
    ref.load_state_dict(state)
    ref.train(layer.training)
    return ref
