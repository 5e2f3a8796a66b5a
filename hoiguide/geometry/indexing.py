"""Gathers whose backward pass is deterministic on the CPU.

``x[index]`` (advanced indexing) with repeated indices back-propagates through
``index_put_(accumulate=True)``, which PyTorch runs on the CPU, for float32 tensors of at least
32768 gathered elements and more than one thread, as a parallel loop of atomic float additions:
the order of the additions, hence the last bits of the gradient, changes from run to run (and
a guided reconstruction amplifies those bits into visibly different meshes). ``index_select``
back-propagates through ``index_add_``, which adds in index order: same inputs, same thread
count, same bits. The forward values are identical either way.
"""

from __future__ import annotations

import torch

__all__ = ["take"]


def take(x: torch.Tensor, index: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``x`` indexed along ``dim`` by an integer ``index`` of any shape, like
    ``x[index]`` (``dim=0``) or ``x[:, index]`` (``dim=1``), with a deterministic backward.

    Returns a tensor of shape ``x.shape[:dim] + index.shape + x.shape[dim + 1:]``.
    """
    d = dim % x.ndim
    out = x.index_select(d, index.reshape(-1))
    return out.reshape(*x.shape[:d], *index.shape, *x.shape[d + 1:])
