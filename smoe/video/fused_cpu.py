"""Fused CPU space-time rasterizer: forward and backward in numba, wrapped for autograd.

It computes what :mod:`smoe.video.reference` computes (same blocks, same
kernels, same order of summation within a block) without a voxels x kernels
tensor, with the layout of the 2D kernel (:mod:`smoe.fused_cpu`, whose
``exp``, denormal flushing and thread layout it shares): threads take blocks
in a strided order, the loop over a block's kernels is outer and the loop
over its voxels inner and branch-free, and backward accumulates per-thread
gradients that are summed at the end (deterministic for a thread count).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange

from ..fused_cpu import _FASTMATH, _flush_denormals, _restore_fp_state, gauss
from ..reference import DEN_EPS
from ..tiles import TileBins
from .tiles import VideoGrid

#: Gradient columns per kernel before the experts: mu (3), chol (6), pi.
_HEAD = 10


@njit(cache=True, inline="always")
def _block_voxels(b, ny, nx, fedges, redges, cedges, times, xs, ys, ts):
    """Fill xs, ys, ts with the coordinates of block b's voxels; return (count, f0, f1, r0, r1, c0, c1)."""
    kt, rest = b // (ny * nx), b % (ny * nx)
    ty, tx = rest // nx, rest % nx
    f0, f1 = fedges[kt], fedges[kt + 1]
    r0, r1 = redges[ty], redges[ty + 1]
    c0, c1 = cedges[tx], cedges[tx + 1]
    n = 0
    for f in range(f0, f1):
        for r in range(r0, r1):
            for c in range(c0, c1):
                xs[n] = c + 0.5
                ys[n] = r + 0.5
                ts[n] = times[f]
                n += 1
    return n, f0, f1, r0, r1, c0, c1


@njit(cache=True, parallel=True, fastmath=_FASTMATH)
def _forward(mu, chol, gate, experts, starts, ends, ids, ny, nx, fedges, redges, cedges, times, maxvox, normalize,
             nthreads, out, den):
    C = experts.shape[1]
    B = starts.shape[0]
    for tid in prange(nthreads):
        xs = np.empty(maxvox, mu.dtype)
        ys = np.empty(maxvox, mu.dtype)
        ts = np.empty(maxvox, mu.dtype)
        w = np.empty(maxvox, mu.dtype)
        dacc = np.empty(maxvox, mu.dtype)
        nacc = np.empty((C, maxvox), mu.dtype)
        fp_state = _flush_denormals()
        for b in range(tid, B, nthreads):
            n, f0, f1, r0, r1, c0, c1 = _block_voxels(b, ny, nx, fedges, redges, cedges, times, xs, ys, ts)
            if n == 0:
                continue
            dacc[:n] = 0
            nacc[:, :n] = 0
            for e in range(starts[b], ends[b]):
                j = ids[e]
                mx, my, mt = mu[j, 0], mu[j, 1], mu[j, 2]
                b00, b10, b11, b20, b21, b22 = chol[j, 0], chol[j, 1], chol[j, 2], chol[j, 3], chol[j, 4], chol[j, 5]
                g = gate[j]
                for p in range(n):
                    dx = xs[p] - mx
                    dy = ys[p] - my
                    dt = ts[p] - mt
                    u = b00 * dx
                    v = b10 * dx + b11 * dy
                    z = b20 * dx + b21 * dy + b22 * dt
                    w[p] = g * gauss(u * u + v * v + z * z)
                    dacc[p] += w[p]
                for c in range(C):
                    m = experts[j, c]
                    for p in range(n):
                        nacc[c, p] += w[p] * m
            p = 0
            for f in range(f0, f1):
                for r in range(r0, r1):
                    for cc in range(c0, c1):
                        den[f, r, cc] = dacc[p]
                        if normalize:
                            ok = dacc[p] > DEN_EPS
                            for c in range(C):
                                out[f, r, cc, c] = nacc[c, p] / dacc[p] if ok else 0
                        else:
                            for c in range(C):
                                out[f, r, cc, c] = nacc[c, p]
                        p += 1
        _restore_fp_state(fp_state)


@njit(cache=True, parallel=True, fastmath=_FASTMATH)
def _backward(mu, chol, gate, experts, starts, ends, ids, ny, nx, fedges, redges, cedges, times, maxvox, normalize,
              nthreads, out, den, gout, acc):
    """Accumulate dL/d(mu x,y,t, b00..b22, pi, m_0..m_C-1) into acc[thread, kernel]."""
    C = experts.shape[1]
    B = starts.shape[0]
    for tid in prange(nthreads):
        xs = np.empty(maxvox, mu.dtype)
        ys = np.empty(maxvox, mu.dtype)
        ts = np.empty(maxvox, mu.dtype)
        k = np.empty(maxvox, mu.dtype)
        dw = np.empty(maxvox, mu.dtype)
        s = np.empty(maxvox, mu.dtype)
        G = np.empty((C, maxvox), mu.dtype)
        a = acc[tid]
        zero = mu.dtype.type(0)
        fp_state = _flush_denormals()
        for b in range(tid, B, nthreads):
            n, f0, f1, r0, r1, c0, c1 = _block_voxels(b, ny, nx, fedges, redges, cedges, times, xs, ys, ts)
            if n == 0 or ends[b] == starts[b]:
                continue
            # G_c = dL/dy_c / den and s = sum_c G_c y_c, so dL/dw_j = sum_c G_c m_jc - s for w_j = pi_j K_j.
            p = 0
            for f in range(f0, f1):
                for r in range(r0, r1):
                    for cc in range(c0, c1):
                        d = den[f, r, cc]
                        inv = (1 / d if d > DEN_EPS else 0) if normalize else 1
                        s[p] = 0
                        for c in range(C):
                            G[c, p] = gout[f, r, cc, c] * inv
                            if normalize:
                                s[p] += G[c, p] * out[f, r, cc, c]
                        p += 1
            for e in range(starts[b], ends[b]):
                j = ids[e]
                mx, my, mt = mu[j, 0], mu[j, 1], mu[j, 2]
                b00, b10, b11, b20, b21, b22 = chol[j, 0], chol[j, 1], chol[j, 2], chol[j, 3], chol[j, 4], chol[j, 5]
                g = gate[j]
                for p in range(n):
                    dx = xs[p] - mx
                    dy = ys[p] - my
                    dt = ts[p] - mt
                    u = b00 * dx
                    v = b10 * dx + b11 * dy
                    z = b20 * dx + b21 * dy + b22 * dt
                    k[p] = gauss(u * u + v * v + z * z)
                    dw[p] = -s[p]
                for c in range(C):
                    m = experts[j, c]
                    for p in range(n):
                        dw[p] += G[c, p] * m
                s_pi = s_u = s_v = s_z = s_udx = s_vdx = s_vdy = s_zdx = s_zdy = s_zdt = zero
                for p in range(n):
                    dx = xs[p] - mx
                    dy = ys[p] - my
                    dt = ts[p] - mt
                    u = b00 * dx
                    v = b10 * dx + b11 * dy
                    z = b20 * dx + b21 * dy + b22 * dt
                    kd = k[p] * dw[p]
                    s_pi += kd
                    dq = g * kd  # dL/dq = -dq / 2
                    s_u += dq * u
                    s_v += dq * v
                    s_z += dq * z
                    s_udx += dq * u * dx
                    s_vdx += dq * v * dx
                    s_vdy += dq * v * dy
                    s_zdx += dq * z * dx
                    s_zdy += dq * z * dy
                    s_zdt += dq * z * dt
                # q = u^2 + v^2 + z^2: dq/dmu = -2 B^T (u, v, z), dq/db_ik = 2 (row i of B d) d_k.
                a[j, 0] += s_u * b00 + s_v * b10 + s_z * b20
                a[j, 1] += s_v * b11 + s_z * b21
                a[j, 2] += s_z * b22
                a[j, 3] -= s_udx
                a[j, 4] -= s_vdx
                a[j, 5] -= s_vdy
                a[j, 6] -= s_zdx
                a[j, 7] -= s_zdy
                a[j, 8] -= s_zdt
                a[j, 9] += s_pi
                for c in range(C):
                    sm = zero
                    for p in range(n):
                        sm += k[p] * G[c, p]
                    a[j, _HEAD + c] += g * sm
        _restore_fp_state(fp_state)


def _launch_args(mu, chol, pi, experts, grid: VideoGrid, bins: TileBins, mode: str):
    gate = pi if mode == "smoe" else torch.ones_like(pi)
    arrays = [t.detach().contiguous().numpy() for t in (mu, chol, gate, experts)]
    index = [t.contiguous().numpy() for t in (bins.starts, bins.ends, bins.ids)]
    _, ny, nx = grid.shape
    redges, cedges = grid.space.edges()
    fedges = grid.frame_edges()
    maxvox = max(1, int(np.diff(redges).max()) * int(np.diff(cedges).max()) * int(np.diff(fedges).max()))
    times = grid.times.astype(arrays[0].dtype)
    return (*arrays, *index, ny, nx, fedges, redges, cedges, times, maxvox, mode == "smoe", numba.get_num_threads())


class _RasterizeVideoCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, chol, pi, experts, grid, bins, mode):
        args = _launch_args(mu, chol, pi, experts, grid, bins, mode)
        shape = (grid.frames, grid.space.height, grid.space.width)
        out = np.empty((*shape, experts.shape[1]), dtype=args[0].dtype)
        den = np.empty(shape, dtype=args[0].dtype)
        _forward(*args, out, den)
        out_t = torch.from_numpy(out)
        ctx.save_for_backward(mu, chol, pi, experts, out_t, torch.from_numpy(den))
        ctx.grid, ctx.bins, ctx.mode = grid, bins, mode
        return out_t

    @staticmethod
    def backward(ctx, gout):
        mu, chol, pi, experts, out, den = ctx.saved_tensors
        args = _launch_args(mu, chol, pi, experts, ctx.grid, ctx.bins, ctx.mode)
        L, C = experts.shape
        acc = np.zeros((args[-1], L, _HEAD + C), dtype=args[0].dtype)
        _backward(*args, out.numpy(), den.numpy(), gout.contiguous().numpy(), acc)
        g = torch.from_numpy(acc.sum(0))
        g_pi = g[:, 9] if ctx.mode == "smoe" else torch.zeros_like(pi)
        return g[:, 0:3], g[:, 3:9], g_pi, g[:, _HEAD:], None, None, None


def rasterize_video_cpu(mu, chol, pi, experts, grid: VideoGrid, bins: TileBins, *, mode="smoe"):
    """Fused CPU rendering of the listed kernels per block.

    Parameters
    ----------
    mu : (L, 3) tensor, chol : (L, 6) tensor, pi : (L,) tensor, experts : (L, C) tensor
        CPU tensors of one dtype (float32 or float64), in output coordinates.
    grid : VideoGrid
    bins : TileBins
        From :func:`smoe.video.tiles.bin_video`.
    mode : {"smoe", "rbf"}

    Returns
    -------
    (F, H, W, C) tensor, differentiable with respect to mu, chol, pi and experts.
    """
    return _RasterizeVideoCPU.apply(mu, chol, pi, experts, grid, bins, mode)
