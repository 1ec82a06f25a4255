""" The official ``MPNCOV.Covpool`` (covariance pooling with its hand-written backward), shared by two references.

GSoP-Net (ZilinGao/Global-Second-order-Pooling-Convolutional-Networks, ``MPNCOV.py``) and SAN (daitao/SAN,
``TrainCode/model/MPNCOV/python/MPNCOV.py``) ship the same ``Covpool``: the covariance Z I_hat Z^T formed with the
explicit M x M centring matrix I_hat = (I - 1 1^T / M) / M, built per sample and saved for the backward.
"""
from typing import Any

import torch

__all__ = ['Covpool']


class Covpool(torch.autograd.Function):
    """The official ``MPNCOV.Covpool``: Z I_hat Z^T with the explicit M x M centring matrix, and its backward."""

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor) -> torch.Tensor:
        batch_size, dim, h, w = input.shape
        m = h * w
        x = input.reshape(batch_size, dim, m)
        # Built in the default dtype and cast, one copy per sample, as officially.
        i_hat = (-1. / m / m) * torch.ones(m, m, device=x.device) + (1. / m) * torch.eye(m, m, device=x.device)
        i_hat = i_hat.view(1, m, m).repeat(batch_size, 1, 1).type(x.dtype)
        y = x.bmm(i_hat).bmm(x.transpose(1, 2))
        ctx.save_for_backward(input, i_hat)
        return y

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        input, i_hat = ctx.saved_tensors
        batch_size, dim, h, w = input.shape
        x = input.reshape(batch_size, dim, h * w)
        grad_input = grad_output + grad_output.transpose(1, 2)
        grad_input = grad_input.bmm(x).bmm(i_hat)
        return grad_input.reshape(batch_size, dim, h, w)
