"""Plain PyTorch reference of the space-time rasterizer.

Readable, differentiable by autograd, and device-agnostic: it defines what
the fused CPU kernel (:mod:`smoe.video.fused_cpu`) computes, runs on CUDA,
and the tests hold the two to each other.  Blocks are processed in chunks
under activation checkpointing, so memory stays bounded.
"""

from __future__ import annotations

import torch

from ..reference import CHUNK_EVALS, DEN_EPS, _maybe_checkpoint
from ..tiles import TileBins
from .tiles import VideoGrid


def _mixture(xyt, mu, chol, pi, experts, valid, mode):
    """The mixture at a batch of points: xyt (B, P, 3), kernels (B, K, *), valid (B, K).  Returns (B, P, C)."""
    d = xyt.unsqueeze(-2) - mu.unsqueeze(-3)  # (B, P, K, 3)
    b = [chol[..., i].unsqueeze(-2) for i in range(6)]
    dx, dy, dt = d[..., 0], d[..., 1], d[..., 2]
    u = b[0] * dx
    v = b[1] * dx + b[2] * dy
    w = b[3] * dx + b[4] * dy + b[5] * dt
    k = torch.exp(-0.5 * (u * u + v * v + w * w))
    k = torch.where(valid.unsqueeze(-2), k, torch.zeros_like(k))
    if mode == "rbf":
        return k @ experts
    g = k * pi.unsqueeze(-2)
    den = g.sum(-1, keepdim=True)
    reached = den > DEN_EPS
    safe = torch.where(reached, den, torch.ones_like(den))
    return torch.where(reached, (g @ experts) / safe, torch.zeros_like(den))


def rasterize_blocks(mu, chol, pi, experts, grid: VideoGrid, bins: TileBins, *, mode="smoe"):
    """Each space-time block with its listed kernels.  Returns (F, H, W, C).

    ``mu`` and ``chol`` are in output coordinates (pixels of the output raster, clip frames in time).
    """
    C = experts.shape[1]
    dev = mu.device
    nt, ny, nx = grid.shape
    H, W, F = grid.space.height, grid.space.width, grid.frames
    redges, cedges = (torch.as_tensor(e, device=dev) for e in grid.space.edges())
    fedges = torch.as_tensor(grid.frame_edges(), device=dev)
    th, tw, tf = redges.diff(), cedges.diff(), fedges.diff()
    hmax, wmax, fmax = int(th.max()), int(tw.max()), int(tf.max())
    out = mu.new_zeros(F * H * W, C)
    counts = bins.counts
    kmax = int(counts.max()) if counts.numel() else 0
    if kmax == 0 or hmax * wmax * fmax == 0:
        return out.reshape(F, H, W, C)
    slot = torch.arange(kmax, device=dev)
    valid = slot.unsqueeze(0) < counts.unsqueeze(1)
    idx = (bins.starts.unsqueeze(1) + slot).clamp(max=max(0, bins.ids.numel() - 1))
    table = torch.where(valid, bins.ids[idx], torch.zeros_like(idx))
    # Padded voxel table per block: frame, row and column inside the block, and whether it exists.
    blocks = torch.arange(nt * ny * nx, device=dev)
    kt, ty, tx = blocks // (ny * nx), (blocks // nx) % ny, blocks % nx
    per = hmax * wmax
    lf = torch.arange(fmax, device=dev).repeat_interleave(per)
    lr = torch.arange(hmax, device=dev).repeat_interleave(wmax).repeat(fmax)
    lc = torch.arange(wmax, device=dev).repeat(hmax * fmax)
    frames = fedges[kt].unsqueeze(1) + lf
    rows = redges[ty].unsqueeze(1) + lr
    cols = cedges[tx].unsqueeze(1) + lc
    inside = (lf < tf[kt].unsqueeze(1)) & (lr < th[ty].unsqueeze(1)) & (lc < tw[tx].unsqueeze(1))
    times = torch.as_tensor(grid.times, dtype=mu.dtype, device=dev)
    t = times[frames.clamp(max=F - 1)]
    xyt = torch.stack([cols.to(mu.dtype) + 0.5, rows.to(mu.dtype) + 0.5, t], -1)
    step = max(1, CHUNK_EVALS // (fmax * per * kmax))
    for i in range(0, blocks.numel(), step):
        sl = slice(i, i + step)
        ids, ok = table[sl], valid[sl]
        vals = _maybe_checkpoint(lambda q, a, b, g, h, ok=ok: _mixture(q, a, b, g, h, ok, mode),
                                 xyt[sl], mu[ids], chol[ids], pi[ids], experts[ids])
        keep = inside[sl]
        flat = ((frames[sl] * H + rows[sl]) * W + cols[sl])[keep]
        out = out.index_add(0, flat, vals[keep])
    return out.reshape(F, H, W, C)
