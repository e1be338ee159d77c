"""Fused CPU rasterizer: forward and backward in numba, wrapped for autograd.

Computes exactly what :mod:`smoe.reference` computes (same tiles, same
kernels, same order of summation inside a tile), but without materialising a
pixels x kernels tensor:

* threads take tiles in a strided order (tile t goes to thread t mod n), which
  balances images whose kernel density varies from place to place;
* inside a tile, the loop over listed kernels is outer and the loop over the
  tile's pixels is inner, over small scratch buffers that stay in L1 and are
  allocated once per thread;
* the inner loops carry no branches and no libm call, so LLVM vectorizes them:
  numba has no SVML here, so ``exp`` in float32 is our own range reduction plus
  polynomial (relative error about 2e-7 for the Mahalanobis distances that
  matter); float64 uses the exact ``math.exp`` so finite-difference tests
  can be tight;
* a listed kernel whose Mahalanobis distance exceeds the underflow point of
  ``gauss`` everywhere in the tile is skipped: it would add exact zeros.  The
  square tile boxes list elongated kernels for many such tiles (a third of the
  pairs in a fitted denoising model), so this saves work without changing a bit;
* backward accumulates each kernel's gradient in a per-thread buffer, which is
  summed at the end: no atomics, and deterministic for a fixed thread count;
* on x86 each worker flushes denormals to zero while it runs (and restores its
  floating-point state after): loss gradients times far-off kernel weights
  land in float32's denormal range, which made backward twice as slow.
"""

from __future__ import annotations

import math
import platform

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from .reference import DEN_EPS
from .tiles import TileBins, TileGrid

# Reassociation lets LLVM vectorize the reductions; NaN/Inf semantics are kept
# so the "reached by no kernel" test stays exact.
_FASTMATH = {"reassoc", "contract", "arcp", "nsz", "afn"}


@intrinsic
def _f32_from_bits(typingctx, bits):
    """Reinterpret an int32 as the float32 with the same bits."""
    if not (isinstance(bits, types.Integer) and bits.bitwidth == 32):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(bits), codegen


_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
_FTZ_DAZ = 0x8040  # MXCSR bits: flush denormal results to zero, read denormal inputs as zero


@intrinsic
def _mxcsr_or(typingctx, bits):
    """Set ``bits`` in this thread's MXCSR and return its previous value (x86 only)."""
    if not (isinstance(bits, types.Integer) and bits.bitwidth == 32):
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        slot = builder.alloca(i32)
        ptr = builder.bitcast(slot, ir.IntType(8).as_pointer())
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type])
        stmxcsr = builder.module.declare_intrinsic("llvm.x86.sse.stmxcsr", fnty=fnty)
        ldmxcsr = builder.module.declare_intrinsic("llvm.x86.sse.ldmxcsr", fnty=fnty)
        builder.call(stmxcsr, [ptr])
        old = builder.load(slot)
        builder.store(builder.or_(old, args[0]), slot)
        builder.call(ldmxcsr, [ptr])
        return old

    return types.int32(bits), codegen


@intrinsic
def _mxcsr_set(typingctx, value):
    """Restore a value saved by :func:`_mxcsr_or` (x86 only)."""
    if not (isinstance(value, types.Integer) and value.bitwidth == 32):
        return None

    def codegen(context, builder, signature, args):
        slot = builder.alloca(ir.IntType(32))
        builder.store(args[0], slot)
        ptr = builder.bitcast(slot, ir.IntType(8).as_pointer())
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type])
        builder.call(builder.module.declare_intrinsic("llvm.x86.sse.ldmxcsr", fnty=fnty), [ptr])
        return context.get_dummy_value()

    return types.none(value), codegen


if _X86:
    @njit(cache=True, inline="always")
    def _flush_denormals():
        """Make this thread flush denormals to zero; returns the state to restore.

        Gradients of a mean-squared error are tiny, and their products with
        small kernel weights fall into float32's denormal range, where x86
        arithmetic is many times slower.  Values that small do not change any
        sum they enter, so flushing them is harmless.
        """
        return _mxcsr_or(np.int32(_FTZ_DAZ))

    @njit(cache=True, inline="always")
    def _restore_fp_state(state):
        _mxcsr_set(state)
else:
    @njit(cache=True, inline="always")
    def _flush_denormals():
        return np.int32(0)

    @njit(cache=True, inline="always")
    def _restore_fp_state(state):
        pass


def gauss(q):
    """``exp(-q / 2)`` for ``q >= 0``; specialised per float width in numba."""
    return math.exp(-0.5 * q)


@overload(gauss, jit_options={"fastmath": _FASTMATH})
def _gauss_impl(q):
    if isinstance(q, types.Float) and q.bitwidth == 32:
        log2e = np.float32(1.4426950408889634)
        ln2_hi = np.float32(0.693359375)
        ln2_lo = np.float32(-2.12194440e-4)
        lo = np.float32(-87.0)
        half = np.float32(-0.5)
        c2, c3, c4 = np.float32(1 / 2), np.float32(1 / 6), np.float32(1 / 24)
        c5, c6 = np.float32(1 / 120), np.float32(1 / 720)
        one = np.float32(1.0)

        zero = np.float32(0.0)

        def impl(q):
            h = half * q
            x = max(h, lo)  # keeps 2^n a normal number; below it the result is 0
            n = np.int32(x * log2e - np.float32(0.5))  # round to nearest (x <= 0)
            nf = np.float32(n)
            r = (x - nf * ln2_hi) - nf * ln2_lo
            p = one + r * (one + r * (c2 + r * (c3 + r * (c4 + r * (c5 + r * c6)))))
            y = p * _f32_from_bits(np.int32((n + np.int32(127)) << np.int32(23)))
            return y if h > lo else zero

        return impl
    return lambda q: math.exp(-0.5 * q)


def underflow_q(dtype) -> float:
    """A Mahalanobis distance q beyond which ``gauss(q)`` is exactly 0 in ``dtype``, with a margin for rounding."""
    # float32: our exp returns 0 once -q/2 <= -87; float64: math.exp underflows below -745.
    return 180.0 if dtype == np.float32 else 1500.0


@njit(cache=True, inline="always")
def _q_at(b00, b10, b11, dx, dy):
    u = b00 * dx
    v = b10 * dx + b11 * dy
    return u * u + v * v


@njit(cache=True, inline="always")
def min_q_in_box(mx, my, b00, b10, b11, x0, x1, y0, y1):
    """Smallest q = |B (x - mu)|^2 over the box [x0, x1] x [y0, y1] (x0 <= x1, y0 <= y1).

    q is convex, so with mu outside the box its minimum lies on one of the
    four edges, where q is a 1-D quadratic minimised in closed form.  Returns
    0 for non-finite parameters, so such a kernel is never skipped.
    """
    if not (math.isfinite(mx) and math.isfinite(my) and math.isfinite(b00) and math.isfinite(b10)
            and math.isfinite(b11)):
        return 0.0
    if x0 <= mx <= x1 and y0 <= my <= y1:
        return 0.0
    a = b00 * b00 + b10 * b10  # along a horizontal edge q = a dx^2 + 2 b10 b11 dy dx + (b11 dy)^2
    best = np.inf
    for dy in (y0 - my, y1 - my):
        dx = min(max(-b10 * b11 * dy / a if a > 0 else 0.0, x0 - mx), x1 - mx)
        best = min(best, _q_at(b00, b10, b11, dx, dy))
    for dx in (x0 - mx, x1 - mx):  # along a vertical edge q = (b00 dx)^2 + b11^2 (dy + b10 dx / b11)^2
        dy = min(max(-b10 * dx / b11 if b11 != 0 else 0.0, y0 - my), y1 - my)
        best = min(best, _q_at(b00, b10, b11, dx, dy))
    return best


@njit(cache=True, inline="always")
def beyond(mx, my, b00, b10, b11, x0, x1, y0, y1, cutoff):
    """Whether q exceeds ``cutoff`` everywhere in the box [x0, x1] x [y0, y1]."""
    # The box point nearest the centre bounds the minimum from above: for the
    # round kernels of most pairs it settles the question without the edge search.
    dx = min(max(mx, x0), x1) - mx
    dy = min(max(my, y0), y1) - my
    if _q_at(b00, b10, b11, dx, dy) <= cutoff:
        return False
    return min_q_in_box(mx, my, b00, b10, b11, x0, x1, y0, y1) > cutoff


@njit(cache=True, inline="always")
def _tile_pixels(t, redges, cedges, xs, ys):
    """Fill xs, ys with the centres of tile t's output pixels; return (count, r0, r1, c0, c1)."""
    ntx = cedges.shape[0] - 1
    r0, r1 = redges[t // ntx], redges[t // ntx + 1]
    c0, c1 = cedges[t % ntx], cedges[t % ntx + 1]
    n = 0
    for r in range(r0, r1):
        for c in range(c0, c1):
            xs[n] = c + 0.5
            ys[n] = r + 0.5
            n += 1
    return n, r0, r1, c0, c1


@njit(cache=True, parallel=True, fastmath=_FASTMATH)
def _forward(mu, chol, gate, experts, starts, ends, ids, redges, cedges, maxpix, normalize, cutoff, nthreads,
             out, den):
    C = experts.shape[1]
    T = starts.shape[0]
    for tid in prange(nthreads):
        xs = np.empty(maxpix, mu.dtype)
        ys = np.empty(maxpix, mu.dtype)
        w = np.empty(maxpix, mu.dtype)
        dacc = np.empty(maxpix, mu.dtype)
        nacc = np.empty((C, maxpix), mu.dtype)
        fp_state = _flush_denormals()
        for t in range(tid, T, nthreads):
            n, r0, r1, c0, c1 = _tile_pixels(t, redges, cedges, xs, ys)
            if n == 0:
                continue
            dacc[:n] = 0
            nacc[:, :n] = 0
            for e in range(starts[t], ends[t]):
                j = ids[e]
                mx, my = mu[j, 0], mu[j, 1]
                b00, b10, b11 = chol[j, 0], chol[j, 1], chol[j, 2]
                if beyond(mx, my, b00, b10, b11, c0 + 0.5, c1 - 0.5, r0 + 0.5, r1 - 0.5, cutoff):
                    continue
                g = gate[j]
                for p in range(n):
                    dx = xs[p] - mx
                    dy = ys[p] - my
                    u = b00 * dx
                    v = b10 * dx + b11 * dy
                    w[p] = g * gauss(u * u + v * v)
                    dacc[p] += w[p]
                for c in range(C):
                    m = experts[j, c]
                    for p in range(n):
                        nacc[c, p] += w[p] * m
            p = 0
            for r in range(r0, r1):
                for cc in range(c0, c1):
                    den[r, cc] = dacc[p]
                    if normalize:
                        ok = dacc[p] > DEN_EPS
                        for c in range(C):
                            out[r, cc, c] = nacc[c, p] / dacc[p] if ok else 0
                    else:
                        for c in range(C):
                            out[r, cc, c] = nacc[c, p]
                    p += 1
        _restore_fp_state(fp_state)


@njit(cache=True, parallel=True, fastmath=_FASTMATH)
def _backward(mu, chol, gate, experts, starts, ends, ids, redges, cedges, maxpix, normalize, cutoff, nthreads,
              out, den, gout, acc):
    """Accumulate dL/d(mu_x, mu_y, b00, b10, b11, pi, m_0..m_C-1) into acc[thread, kernel]."""
    C = experts.shape[1]
    T = starts.shape[0]
    for tid in prange(nthreads):
        xs = np.empty(maxpix, mu.dtype)
        ys = np.empty(maxpix, mu.dtype)
        k = np.empty(maxpix, mu.dtype)
        dw = np.empty(maxpix, mu.dtype)
        s = np.empty(maxpix, mu.dtype)
        G = np.empty((C, maxpix), mu.dtype)
        a = acc[tid]
        zero = mu.dtype.type(0)
        fp_state = _flush_denormals()
        for t in range(tid, T, nthreads):
            n, r0, r1, c0, c1 = _tile_pixels(t, redges, cedges, xs, ys)
            if n == 0 or ends[t] == starts[t]:
                continue
            # Per pixel: G_c = dL/dy_c / den and s = sum_c G_c y_c, so that
            # dL/dw_j = sum_c G_c m_jc - s for the gate weight w_j = pi_j K_j.
            p = 0
            for r in range(r0, r1):
                for cc in range(c0, c1):
                    d = den[r, cc]
                    inv = (1 / d if d > DEN_EPS else 0) if normalize else 1
                    s[p] = 0
                    for c in range(C):
                        G[c, p] = gout[r, cc, c] * inv
                        if normalize:
                            s[p] += G[c, p] * out[r, cc, c]
                    p += 1
            for e in range(starts[t], ends[t]):
                j = ids[e]
                mx, my = mu[j, 0], mu[j, 1]
                b00, b10, b11 = chol[j, 0], chol[j, 1], chol[j, 2]
                if beyond(mx, my, b00, b10, b11, c0 + 0.5, c1 - 0.5, r0 + 0.5, r1 - 0.5, cutoff):
                    continue
                g = gate[j]
                for p in range(n):
                    dx = xs[p] - mx
                    dy = ys[p] - my
                    u = b00 * dx
                    v = b10 * dx + b11 * dy
                    k[p] = gauss(u * u + v * v)
                    dw[p] = -s[p]
                for c in range(C):
                    m = experts[j, c]
                    for p in range(n):
                        dw[p] += G[c, p] * m
                s_pi = s_udx = s_vdx = s_vdy = s_u = s_v = zero
                for p in range(n):
                    dx = xs[p] - mx
                    dy = ys[p] - my
                    u = b00 * dx
                    v = b10 * dx + b11 * dy
                    kd = k[p] * dw[p]
                    s_pi += kd
                    dq = g * kd  # dL/dq = -1/2 * pi * K * dL/dw; the -1/2 is applied below
                    s_u += dq * u
                    s_v += dq * v
                    s_udx += dq * u * dx
                    s_vdx += dq * v * dx
                    s_vdy += dq * v * dy
                # dq/db00 = 2 u dx, dq/db10 = 2 v dx, dq/db11 = 2 v dy,
                # dq/dmx = -2 (u b00 + v b10), dq/dmy = -2 v b11; with dL/dq = -g K dw / 2.
                a[j, 0] += s_u * b00 + s_v * b10
                a[j, 1] += s_v * b11
                a[j, 2] -= s_udx
                a[j, 3] -= s_vdx
                a[j, 4] -= s_vdy
                a[j, 5] += s_pi
                for c in range(C):
                    sm = zero
                    for p in range(n):
                        sm += k[p] * G[c, p]
                    a[j, 6 + c] += g * sm
        _restore_fp_state(fp_state)


def _launch_args(mu, chol, pi, experts, grid: TileGrid, bins: TileBins, mode: str):
    gate = pi if mode == "smoe" else torch.ones_like(pi)
    arrays = [t.detach().contiguous().numpy() for t in (mu, chol, gate, experts)]
    index = [t.contiguous().numpy() for t in (bins.starts, bins.ends, bins.ids)]
    redges, cedges = grid.edges()
    maxpix = max(1, int(np.diff(redges).max()) * int(np.diff(cedges).max()))
    # The thread count is passed in: calling numba.get_num_threads() inside a
    # jitted function makes it uncacheable.
    return (*arrays, *index, redges, cedges, maxpix, mode == "smoe", underflow_q(arrays[0].dtype),
            numba.get_num_threads())


class _RasterizeCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, chol, pi, experts, grid, bins, mode):
        args = _launch_args(mu, chol, pi, experts, grid, bins, mode)
        C = experts.shape[1]
        out = np.empty((grid.height, grid.width, C), dtype=args[0].dtype)
        den = np.empty((grid.height, grid.width), dtype=args[0].dtype)
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
        acc = np.zeros((args[-1], L, 6 + C), dtype=args[0].dtype)
        _backward(*args, out.numpy(), den.numpy(), gout.contiguous().numpy(), acc)
        g = torch.from_numpy(acc.sum(0))
        g_pi = g[:, 5] if ctx.mode == "smoe" else torch.zeros_like(pi)
        return g[:, 0:2], g[:, 2:5], g_pi, g[:, 6:], None, None, None


def rasterize_cpu(mu, chol, pi, experts, grid: TileGrid, bins: TileBins, *, mode="smoe"):
    """Fused CPU rendering of the listed kernels per tile.

    Parameters
    ----------
    mu : (L, 2) tensor, chol : (L, 3) tensor, pi : (L,) tensor, experts : (L, C) tensor
        CPU tensors of one floating dtype (float32 or float64), in *output* pixel
        coordinates (already rescaled when the grid has a scale).
    grid : TileGrid
    bins : TileBins
        From :func:`smoe.tiles.bin_kernels` (raster or global scope).
    mode : {"smoe", "rbf"}

    Returns
    -------
    (H, W, C) tensor, differentiable with respect to mu, chol, pi and experts.
    """
    return _RasterizeCPU.apply(mu, chol, pi, experts, grid, bins, mode)
