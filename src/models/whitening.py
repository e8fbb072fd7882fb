"""A fixed patch-whitening first layer, set from the training images' k x k patches before training starts.

From the fast CIFAR-10 training line of work: David Page's "How to train your ResNet 8" (2019) and Keller Jordan's
airbench (2024) replace the first learned convolution by one whose filters are the PCA whitening of the input's
k x k patches: filter i is eigenvector i of the patch covariance divided by the square root of its eigenvalue, and
each filter is used with both signs (2*k*k*C output channels) so that a ReLU or GELU after it loses nothing. The
filters are never trained (a buffer); only the bias is. The layer decorrelates pixels before the first learned
layer, which makes the early epochs learn faster; on a short schedule that is accuracy per second.

`init_from_data(x)` computes the filters from a batch of training images. The trainer calls it on a fresh start,
with the first batch of training images as rank 0 of one process would see them, so the filters do not depend on
the number of processes (see trainer.loop.fit); the `initialised` buffer travels with checkpoints, so a model
loaded from one (a resume, a stage's `init`) is never re-initialised.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchWhitening(nn.Module):
    def __init__(self, in_channels: int, patch: int = 3, eps: float = 5e-4):
        super().__init__()
        if patch < 1:
            raise ValueError(f"patch={patch} must be a positive patch size")
        dim = in_channels * patch * patch
        self.patch, self.eps, self.out_channels = patch, eps, 2 * dim
        self.padding = (patch - 1) // 2  # odd patches keep the size; airbench's 2x2 takes one pixel off
        self.register_buffer("weight", torch.zeros(2 * dim, in_channels, patch, patch))  # a buffer: never trained
        self.bias = nn.Parameter(torch.zeros(2 * dim))
        self.register_buffer("initialised", torch.tensor(False))

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> None:
        """Set the filters to the whitening of the k x k patches of `x` (B, C, H, W); a no-op once initialised."""
        if bool(self.initialised):
            return
        k, c = self.patch, x.shape[1]
        patches = F.unfold(x.detach().cpu().double(), k).transpose(1, 2).reshape(-1, c * k * k)  # float64: not on MPS
        eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(patches.T))
        filters = (eigenvectors / torch.sqrt(eigenvalues.clamp_min(0) + self.eps)).T.reshape(-1, c, k, k)
        self.weight.copy_(torch.cat([filters, -filters]))
        self.initialised.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=self.padding)
