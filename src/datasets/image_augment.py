"""Vectorised image augmentations of a whole batch, each sample's randomness drawn from (seed, epoch, index).

Every function takes a float batch (B, C, H, W) and a matrix of per-sample uniforms `u` (B, k) from
`trainer.datasets.base.per_sample_uniform`, so a sample is augmented the same way whatever batch, worker or rank it lands
in, and a resumed run repeats the augmentations of an uninterrupted one. They are batch tensor operations (one
gather, one mask), not a Python loop over samples: at Fashion-MNIST's size the per-sample PIL path of torchvision
costs more than the training step of a small net.

What each one follows:
  - `hflip`: torchvision's RandomHorizontalFlip.
  - `pad_crop`: the CIFAR/ResNet "pad 4 and take a random crop" (He et al. 2016), with the pad mode configurable.
  - `erase`: Random Erasing (Zhong et al. 2020), torchvision's RandomErasing parameterisation: an area fraction in
    `scale`, a log-uniform aspect ratio in `ratio`, a uniform position; filled with `value`.
  - `quadrant_mask`: blank one of the four quadrants (the dog fine-tuning original's "mask a quadrant").
  - `affine`: per-sample rotation, zoom (in and out), translation, horizontal shear and flip in one
    `affine_grid`/`grid_sample` pass, the batched form of torchvision's RandomAffine + RandomHorizontalFlip.
  - `warp`: an elastic distortion (Simard et al. 2003: every pixel moved by a smooth random field), the field drawn
    at a coarse grid of control points and upsampled, as torchvision's ElasticTransform smooths a dense one.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

#: How many uniforms each augmentation consumes per sample (callers size `per_sample_uniform` with these).
DRAWS = {"hflip": 1, "pad_crop": 2, "erase": 5, "quadrant_mask": 2, "affine": 6}
#: The control points of `warp`'s displacement field (rows, columns); it draws two uniforms per point, the x
#: displacements of all points, then their y displacements.
WARP_GRID = (3, 8)
DRAWS["warp"] = 2 * WARP_GRID[0] * WARP_GRID[1]


def _u(u: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(u, dtype=torch.float32, device=device)


def hflip(x: torch.Tensor, u: np.ndarray, p: float = 0.5) -> torch.Tensor:
    """Mirror the samples whose uniform is below p."""
    flip = (_u(u[:, 0], x.device) < p).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def pad_crop(x: torch.Tensor, u: np.ndarray, pad: int = 2, mode: str = "constant", value: float = 0.0) -> torch.Tensor:
    """Pad each side by `pad`, then crop back to (H, W) at a per-sample offset in [0, 2*pad]."""
    if pad <= 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode=mode, value=value) if mode == "constant" else \
        F.pad(x, (pad, pad, pad, pad), mode=mode)
    uu = _u(u, x.device)
    dy = (uu[:, 0] * (2 * pad + 1)).long().clamp_(max=2 * pad)
    dx = (uu[:, 1] * (2 * pad + 1)).long().clamp_(max=2 * pad)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])  # (B, H)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])  # (B, W)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def erase(x: torch.Tensor, u: np.ndarray, p: float = 0.5, scale: tuple[float, float] = (0.02, 0.33),
          ratio: tuple[float, float] = (0.3, 3.3), value: float = 0.0) -> torch.Tensor:
    """Random Erasing: with probability p, fill one rectangle of area fraction in `scale` with `value`."""
    b, _, h, w = x.shape
    uu = _u(u, x.device)
    area = (scale[0] + uu[:, 1] * (scale[1] - scale[0])) * (h * w)
    log_r = math.log(ratio[0]) + uu[:, 2] * (math.log(ratio[1]) - math.log(ratio[0]))
    aspect = torch.exp(log_r)
    eh = torch.sqrt(area * aspect).round().clamp(1, h)
    ew = torch.sqrt(area / aspect).round().clamp(1, w)
    top = (uu[:, 3] * (h - eh + 1)).floor()
    left = (uu[:, 4] * (w - ew + 1)).floor()
    ys = torch.arange(h, device=x.device, dtype=torch.float32)[None, :]
    xs = torch.arange(w, device=x.device, dtype=torch.float32)[None, :]
    in_rows = (ys >= top[:, None]) & (ys < (top + eh)[:, None])  # (B, H)
    in_cols = (xs >= left[:, None]) & (xs < (left + ew)[:, None])  # (B, W)
    mask = in_rows[:, :, None] & in_cols[:, None, :] & (uu[:, 0] < p)[:, None, None]
    return x.masked_fill(mask[:, None], value)


def quadrant_mask(x: torch.Tensor, u: np.ndarray, p: float = 0.5, value: float = 0.0) -> torch.Tensor:
    """With probability p, fill one of the four quadrants (chosen uniformly) with `value`."""
    b, _, h, w = x.shape
    uu = _u(u, x.device)
    quadrant = (uu[:, 1] * 4).long().clamp_(max=3)
    top = (quadrant // 2) == 1
    left = (quadrant % 2) == 0
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    in_rows = torch.where(top[:, None], ys >= h // 2, ys < h // 2)
    in_cols = torch.where(left[:, None], xs < w // 2, xs >= w // 2)
    mask = in_rows[:, :, None] & in_cols[:, None, :] & (uu[:, 0] < p)[:, None, None]
    return x.masked_fill(mask[:, None], value)


def affine(x: torch.Tensor, u: np.ndarray, degrees: float = 0.0, zoom: tuple[float, float] = (1.0, 1.0),
           translate: float = 0.0, flip_p: float = 0.0, out_size: tuple[int, int] | None = None,
           fill: float = 0.0, shear: float = 0.0) -> torch.Tensor:
    """Rotate by up to +-degrees, zoom by a factor in `zoom` (>1 zooms in), shift by up to `translate` of the size,
    slant by a horizontal shear of up to +-shear (x moves by shear * y, in pixels: upright letters lean like an
    italic), mirror with probability flip_p; resample bilinearly to `out_size` (default: the input size)."""
    b, c, h, w = x.shape
    uu = _u(u, x.device)
    angle = (uu[:, 0] * 2 - 1) * math.radians(degrees)
    log_zoom = math.log(zoom[0]) + uu[:, 1] * (math.log(zoom[1]) - math.log(zoom[0]))
    s = torch.exp(-log_zoom)  # the sampling grid shrinks when zooming in
    tx = (uu[:, 2] * 2 - 1) * translate * 2  # affine_grid coordinates span [-1, 1]: a shift of f*size is 2f
    ty = (uu[:, 3] * 2 - 1) * translate * 2
    mirror = torch.where(uu[:, 4] < flip_p, -1.0, 1.0)
    cos, sin = torch.cos(angle) * s, torch.sin(angle) * s
    k = (uu[:, 5] * 2 - 1) * shear
    # in pixels, the shear after the rotation: [[1, k], [0, 1]] @ [[cos, -sin], [sin, cos]]; affine_grid's [-1, 1]
    # coordinates scale x by 2/w and y by 2/h, so on a wide image the off-diagonal terms take a factor h/w or w/h
    a = w / h
    theta = torch.stack([torch.stack([(cos + k * sin) * mirror, (k * cos - sin) / a, tx], 1),
                         torch.stack([sin * a * mirror, cos, ty], 1)], 1)
    oh, ow = out_size or (h, w)
    grid = F.affine_grid(theta, [b, c, oh, ow], align_corners=False)
    if fill == 0.0:
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # grid_sample fills outside pixels with 0: sample (x - fill) and add fill back.
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


def warp_limit(height: int, width: int) -> float:
    """The largest `warp` pixels for an image of this size that never folds it: a quarter of the control points'
    spacing. (Two neighbouring points displaced oppositely, with the bicubic overshoot, make the field's slope about
    3 * pixels / spacing at worst: 0.76 at a quarter, measured over 20,000 fields at 96x36; where it reaches 1,
    neighbouring pixels land on the same source pixel and the image folds.)"""
    rows, cols = WARP_GRID
    return 0.25 * min(width / (cols - 1), height / (rows - 1))


def warp(x: torch.Tensor, u: np.ndarray, pixels: float, fill: float = 0.0) -> torch.Tensor:
    """Move every pixel by a smooth random displacement: uniform displacements of up to `pixels` in x and in y at
    the `WARP_GRID` control points, upsampled bicubically to the image (which overshoots them between points by up to
    ~40%), so strokes bend and thicken locally rather than the whole image moving (a glyph's shape changes, as from
    one typeface to another). Past `warp_limit` the field can fold the image over itself."""
    b, c, h, w = x.shape
    rows, cols = WARP_GRID
    field = (_u(u, x.device).view(b, 2, rows, cols) * 2 - 1) * pixels
    field = F.interpolate(field, size=(h, w), mode="bicubic", align_corners=True)
    to_grid = torch.tensor([2.0 / w, 2.0 / h], device=x.device).view(1, 2, 1, 1)  # pixels -> [-1, 1] coordinates
    identity = torch.eye(2, 3, device=x.device).expand(b, 2, 3)
    grid = F.affine_grid(identity, [b, c, h, w], align_corners=False) + (field * to_grid).permute(0, 2, 3, 1)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
