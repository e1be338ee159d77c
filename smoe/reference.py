"""Plain PyTorch reference rasterizer.

Readable, autograd-differentiable, device-agnostic (CPU or CUDA).  It defines
what the fused CPU kernel (:mod:`smoe.fused_cpu`) must compute, and the tests
hold the two to each other.  Memory stays bounded by processing tiles (raster
scope) or pixels (global scope) in chunks under activation checkpointing, so
the backward pass recomputes each chunk instead of storing it.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from .tiles import TileBins, TileGrid

#: A pixel whose summed gate weight is below this is reached by no kernel and
#: renders as 0 (SMoE mode).
DEN_EPS = 1e-30

#: Rough number of kernel-pixel evaluations per chunk (bounds peak memory).
CHUNK_EVALS = 1 << 23


def _mixture(xy, mu, chol, pi, experts, valid, mode):
    """Evaluate the mixture at a batch of pixels.

    xy : (..., P, 2) pixel centres; mu, chol, pi, experts: (..., K, *) kernels;
    valid : (..., K) bool, False for padding.  Returns (..., P, C).
    """
    d = xy.unsqueeze(-2) - mu.unsqueeze(-3)  # (..., P, K, 2)
    b00, b10, b11 = (chol[..., i].unsqueeze(-2) for i in range(3))
    u = b00 * d[..., 0]
    v = b10 * d[..., 0] + b11 * d[..., 1]
    k = torch.exp(-0.5 * (u * u + v * v))
    k = torch.where(valid.unsqueeze(-2), k, torch.zeros_like(k))
    if mode == "rbf":
        return k @ experts
    w = k * pi.unsqueeze(-2)
    den = w.sum(-1, keepdim=True)
    reached = den > DEN_EPS
    safe = torch.where(reached, den, torch.ones_like(den))
    return torch.where(reached, (w @ experts) / safe, torch.zeros_like(den))


def _pixel_centres(rows, cols, dtype, device):
    ys = torch.arange(rows, dtype=dtype, device=device) + 0.5
    xs = torch.arange(cols, dtype=dtype, device=device) + 0.5
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy], -1)


def _maybe_checkpoint(fn, *args):
    if torch.is_grad_enabled() and any(a.requires_grad for a in args if isinstance(a, torch.Tensor)):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def rasterize_global(mu, chol, pi, experts, height, width, active, *, mode="smoe"):
    """Every active kernel at every pixel.  Returns (height, width, C)."""
    C = experts.shape[1]
    xy = _pixel_centres(height, width, mu.dtype, mu.device).reshape(-1, 2)
    m, c, p, e = mu[active], chol[active], pi[active], experts[active]
    valid = torch.ones(m.shape[0], dtype=torch.bool, device=mu.device)
    step = max(1, CHUNK_EVALS // max(1, m.shape[0]))
    parts = [
        _maybe_checkpoint(lambda q, a, b, g, h: _mixture(q, a, b, g, h, valid, mode), xy[i:i + step], m, c, p, e)
        for i in range(0, xy.shape[0], step)
    ]
    out = torch.cat(parts) if parts else xy.new_zeros(0, C)
    return out.reshape(height, width, C)


def rasterize_tiles(mu, chol, pi, experts, grid: TileGrid, bins: TileBins, *, mode="smoe"):
    """Each tile with its listed kernels only.  Returns (height, width, C).

    ``mu`` and ``chol`` are in output-pixel coordinates; ``grid.edges()`` says
    which output pixels each tile holds (up to hmax x wmax of them, padded).
    """
    C = experts.shape[1]
    dev = mu.device
    ny, nx = grid.shape
    redges, cedges = (torch.as_tensor(e, device=dev) for e in grid.edges())
    th, tw = redges.diff(), cedges.diff()
    hmax, wmax = int(th.max()), int(tw.max())
    counts = bins.counts
    kmax = int(counts.max()) if counts.numel() else 0
    out = mu.new_zeros(grid.height * grid.width, C)
    if kmax == 0 or hmax * wmax == 0:
        return out.reshape(grid.height, grid.width, C)
    # Padded (T, kmax) kernel table; padding points at kernel 0 and is masked.
    slot = torch.arange(kmax, device=dev)
    valid = slot.unsqueeze(0) < counts.unsqueeze(1)
    idx = (bins.starts.unsqueeze(1) + slot).clamp(max=max(0, bins.ids.numel() - 1))
    table = torch.where(valid, bins.ids[idx], torch.zeros_like(idx))
    # Padded (T, hmax*wmax) pixel table: row/column inside the tile, and whether it exists.
    tiles = torch.arange(ny * nx, device=dev)
    ty, tx = tiles // nx, tiles % nx
    lr = torch.arange(hmax, device=dev).repeat_interleave(wmax)
    lc = torch.arange(wmax, device=dev).repeat(hmax)
    rows = redges[ty].unsqueeze(1) + lr
    cols = cedges[tx].unsqueeze(1) + lc
    inside = (lr < th[ty].unsqueeze(1)) & (lc < tw[tx].unsqueeze(1))
    xy = torch.stack([cols, rows], -1).to(mu.dtype) + 0.5
    step = max(1, CHUNK_EVALS // (hmax * wmax * kmax))
    for i in range(0, ny * nx, step):
        sl = slice(i, i + step)
        ids, ok = table[sl], valid[sl]
        vals = _maybe_checkpoint(lambda q, a, b, g, h, ok=ok: _mixture(q, a, b, g, h, ok, mode),
                                 xy[sl], mu[ids], chol[ids], pi[ids], experts[ids])
        keep = inside[sl]
        flat = (rows[sl] * grid.width + cols[sl])[keep]
        out = out.index_add(0, flat, vals[keep])
    return out.reshape(grid.height, grid.width, C)
