"""Batched local fits of small SMoE models to the blocks (AS paper, Algorithm 1).

Algorithm 1 details.  L = 10 kernels per block at uniform random centres,
round with standard deviation ``block / (2 sqrt(L))`` (about 5 px: ten such
disks tile the block), ``pi = 1 / L``, experts = the block pixel under the
centre.  Per block the loss is MSE + ``lam * sum(pi)``; the parameters are
those of :mod:`smoe.parameters` (centres, ``(log b00, b10, log b11)``,
``pi`` and experts), as in :mod:`smoe.fitting`.  Every iteration each block's
PSNR is measured and its best parameters (by PSNR) are kept; a block whose
PSNR reaches ``target_psnr`` is frozen and leaves the mosaic.  Kernels whose
``pi`` drops to ``<= 0`` are removed at once.  Every ``double_every``
iterations each block still fitting doubles its kernels: every kernel gets a
copy whose centre is jittered by a normal offset of ``jitter`` px, both keep
half the gate weight (so the block's output barely moves), and both keep the
parent's Adam state.  A block that may not double any more (``max_kernels``)
gives up at that checkpoint instead of running on to ``max_iters``
(``stop_at_cap``): with the defaults (10 -> 20 kernels, C = 30) every block
is done after 60 iterations.  Each block ends with its best parameters.

The cap of 20 (one doubling) is measured, not the paper's: textured blocks
never reach the target and end at the cap, so it sets the kernel density of
textured images.  With a cap of 40, the global fit from the AS start on the
textured kodim05 (grey) was no better than a grid of as many kernels (23.63
against 23.62 dB after 300 iterations, a kernel saving of 1 %), and the
initialization took longer than Grid needed to reach 95 % of the best PSNR
(time ratio 1.9).  With 20, ``benchmarks/initialization.py`` measured a
saving of 17 % and a time ratio of 0.80 there (kodim01: 11 -> 28 %, 0.95 ->
0.34), and the saving on the other four images went from 33-67 % to 48-68 %.
A sparser start is where placement matters most.

Batch independence.  All blocks of a chunk are fitted together in one
:class:`~smoe.initializers.adaptive.mosaic.Mosaic`, whose rendering and
gradients do not depend on which blocks share it.  The fit keeps that
property: per-block errors are summed per tile row and then over the tiles
in a fixed order, and Adam runs in NumPy with elementwise operations only
(per-kernel step counts, bias corrections from a table): a kernel born by
doubling has taken fewer steps than its block, and torch's Adam counts steps
per tensor, not per row.  Hence ``workers=2`` gives bit for bit the result
of ``workers=1``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numba
import numpy as np

from ...executor import Executor, available_cores, make_executor
from ...parameters import ADAM_BETAS, ADAM_EPS, GROUPS, decay_factor, from_log_chol, learning_rates
from ...validate import check_finite, is_whole
from .mosaic import Mosaic, quantize

#: Bounds on the local log Cholesky diagonal: standard deviations between
#: 1/8 px and two block widths (for block = 32).
_LOG_B_RANGE = (math.log(1.0 / 64.0), math.log(8.0))


def check_int(name: str, value, low: int) -> int:
    """A whole number >= ``low`` (a bool is not one); returns it as int."""
    if not (is_whole(value) and value >= low):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class LocalFitSettings:
    """Settings of the batched local fits (AS Algorithm 1), in block pixels.

    kernels : initial kernels per block (the paper's L = 10)
    target_psnr : a block stops once its PSNR reaches this (dB, Q)
    max_iters : iterations before giving up (E)
    double_every : a block still below the target doubles its kernels every
        this many iterations (C)
    max_kernels : no doubling beyond this many kernels per block
    lam : weight of the L1 term ``lam * sum(pi)`` per block
    lr_mu, lr_mu_final : Adam step for the centres (px), decaying
        exponentially from the first to the second over ``max_iters``
    lr_chol, lr_pi, lr_experts : Adam steps for ``(log b00, b10, log b11)``,
        gate weights and experts
    jitter : standard deviation (px) of the centre offset of a doubled kernel
    outside_weight : weight of the block pixels outside the block's own
        pixels in the loss and PSNR (1: plain MSE, as the paper)
    init_in_segment : draw initial centres from the block's own pixels
        (weighted as the loss) instead of uniformly
    stop_at_cap : a block that may not double any more gives up at the
        checkpoint instead of iterating to ``max_iters``
    cull : list a kernel only on the sub-tiles of its block that its 99 %
        box touches
    """

    kernels: int = 10
    target_psnr: float = 30.0
    max_iters: int = 300
    double_every: int = 30
    max_kernels: int = 20
    lam: float = 1e-4
    lr_mu: float = 0.2
    lr_mu_final: float = 0.02
    lr_chol: float = 0.03
    lr_pi: float = 0.005
    lr_experts: float = 0.02
    jitter: float = 0.5
    outside_weight: float = 1.0
    init_in_segment: bool = False
    stop_at_cap: bool = True
    cull: bool = True

    def validate(self) -> "LocalFitSettings":
        """Raise ValueError for a field out of range; returns self."""
        for name in ("kernels", "max_iters", "double_every", "max_kernels"):
            check_int(name, getattr(self, name), 1)
        if self.max_kernels < self.kernels:
            raise ValueError(f"max_kernels ({self.max_kernels}) must be at least kernels ({self.kernels})")
        check_finite("target_psnr (dB)", self.target_psnr)
        for name in ("lam", "lr_mu", "lr_mu_final", "lr_chol", "lr_pi", "lr_experts", "jitter", "outside_weight"):
            check_finite(name, getattr(self, name), low=0)
        for name in ("init_in_segment", "stop_at_cap", "cull"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        return self


class _Adam:
    """Adam with a step count per kernel row, in NumPy, elementwise only (batch-independent).

    torch's Adam counts steps per tensor, but a kernel born by doubling has
    taken fewer steps than the rest of its block.
    """

    def __init__(self, max_steps: int):
        b1, b2 = ADAM_BETAS
        t = np.arange(max_steps + 2, dtype=np.float64)
        t[0] = 1.0  # unused
        self.bc1 = (1.0 - b1 ** t).astype(np.float32)
        self.bc2 = (1.0 - b2 ** t).astype(np.float32)

    def step(self, p, m, v, g, t, lr):
        """Update the rows of ``p`` and its moments ``m``, ``v`` in place; ``t`` (N,) counts each row's steps."""
        b1, b2 = ADAM_BETAS
        m *= np.float32(b1)
        m += np.float32(1 - b1) * g
        v *= np.float32(b2)
        v += np.float32(1 - b2) * (g * g)
        shape = (-1,) + (1,) * (p.ndim - 1)
        mhat = m / self.bc1[t].reshape(shape)
        vhat = v / self.bc2[t].reshape(shape)
        p -= np.float32(lr) * mhat / (np.sqrt(vhat) + np.float32(ADAM_EPS))


def _initial_kernels(blocks: np.ndarray, weights: np.ndarray, block_ids: np.ndarray, base_seed: int,
                     cfg: LocalFitSettings):
    """L random round kernels per block; a generator per block seeded by (base_seed, block id).

    Centres are uniform over the block, or with ``cfg.init_in_segment`` drawn
    with probability proportional to the pixel weights (uniform inside a pixel).
    """
    B, size, _, C = blocks.shape
    L = cfg.kernels
    gens = [np.random.default_rng([base_seed, int(i)]) for i in block_ids]
    if cfg.init_in_segment:
        cells = []
        for g, wb in zip(gens, weights):
            p = wb.ravel().astype(np.float64)
            cell = g.choice(size * size, L, p=p / p.sum())
            cells.append(np.stack([cell % size, cell // size], 1) + g.uniform(0.0, 1.0, (L, 2)))
    else:
        cells = [g.uniform(0.0, size, (L, 2)) for g in gens]
    mu = quantize(np.concatenate(cells).astype(np.float32)) if B else np.zeros((0, 2), np.float32)
    owner = np.repeat(np.arange(B), L)
    sigma = size / (2.0 * math.sqrt(L))
    log_chol = np.tile(np.array([-math.log(sigma), 0.0, -math.log(sigma)], np.float32), (B * L, 1))
    pi = np.full(B * L, 1.0 / L, np.float32)
    px = np.clip(np.floor(mu).astype(np.int64), 0, size - 1)
    experts = blocks[owner, px[:, 1], px[:, 0]].astype(np.float32)
    return gens, {"mu": mu, "chol": log_chol, "pi": pi, "experts": experts, "owner": owner}


class _LocalFit:
    """State of the batched fit of one chunk of blocks.

    Per-kernel arrays (rows grouped by block, ascending) live in ``self.k``:
    the parameters of every group of :data:`smoe.parameters.GROUPS` (``chol``
    in the log-diagonal form of :func:`smoe.parameters.to_log_chol`, the one
    Adam moves), Adam moments and step counts, the owning block, and ``best_*``,
    a copy of the parameters aligned with the current rows that holds a block's
    best snapshot while ``aligned[b]`` is True.  When a block's rows change
    (doubling, pruning, freezing) its aligned snapshot moves to ``archive``.
    """

    def __init__(self, blocks, masks, block_ids, base_seed, cfg: LocalFitSettings):
        self.cfg = cfg
        self.blocks = np.ascontiguousarray(blocks, np.float32)
        B, self.size, _, C = blocks.shape
        self.npx = self.size * self.size * C
        # Pixel weights: 1 on the segment, outside_weight elsewhere, mean 1 per block.
        if masks is None:
            masks = np.ones((B, self.size, self.size), np.float32)
        wgt = cfg.outside_weight + (1.0 - cfg.outside_weight) * masks.astype(np.float64)
        wgt = wgt / np.maximum(wgt.mean(axis=(1, 2), keepdims=True), 1e-12)
        self.weights = np.ascontiguousarray(wgt[..., None], np.float32)  # (B, size, size, 1)
        self.gens, k = _initial_kernels(self.blocks, self.weights[..., 0], block_ids, base_seed, cfg)
        for name in GROUPS:
            k["m_" + name] = np.zeros_like(k[name])
            k["v_" + name] = np.zeros_like(k[name])
            k["best_" + name] = k[name].copy()
        k["t"] = np.zeros(len(k["owner"]), np.int64)
        self.k = k
        self.active = np.ones(B, bool)
        self.aligned = np.zeros(B, bool)
        self.archive: dict[int, tuple] = {}
        self.best_psnr = np.full(B, -np.inf)
        self.iters = np.zeros(B, np.int64)
        self.reached = np.zeros(B, bool)
        self.adam = _Adam(cfg.max_iters)
        self.rates = learning_rates(cfg)
        self._mos = None  # mosaic of the active blocks, rebuilt when that set changes

    # -- bookkeeping ---------------------------------------------------------
    def _rows(self, b):
        own = self.k["owner"]
        return slice(np.searchsorted(own, b, "left"), np.searchsorted(own, b, "right"))

    def _commit(self, blocks):
        """Move the aligned best snapshots of ``blocks`` to the archive."""
        for b in blocks:
            if self.aligned[b]:
                r = self._rows(b)
                self.archive[int(b)] = tuple(self.k["best_" + n][r].copy() for n in GROUPS)
                self.aligned[b] = False

    def _select(self, keep):
        self.k = {name: a[keep] for name, a in self.k.items()}

    def _mosaic(self):
        if self._mos is None:
            self._ids = np.nonzero(self.active)[0]
            self._mos = Mosaic(len(self._ids), self.size)
            self._target = self._mos.split(self.blocks[self._ids])
            self._weight = self._mos.split(self.weights[self._ids])
        return self._ids, self._mos, self._target, self._weight

    # -- one iteration -------------------------------------------------------
    def run(self):
        cfg = self.cfg
        decay = decay_factor(cfg.lr_mu, cfg.lr_mu_final, cfg.max_iters)
        it = 0
        for it in range(1, cfg.max_iters + 1):
            if not self.active.any():
                it -= 1
                break
            last = it == cfg.max_iters
            self._iterate(it, last, cfg.lr_mu * decay ** (it - 1))
            if last:
                break
        self.iters[self.active] = cfg.max_iters
        self._commit(np.nonzero(self.aligned)[0])
        return it

    def _iterate(self, it, last, lr_mu):
        cfg, k = self.cfg, self.k
        ids, mosaic, target, weight = self._mosaic()
        slot = np.searchsorted(ids, k["owner"])
        chol = from_log_chol(k["chol"])
        image, backward = mosaic.render(k["mu"], chol, k["pi"], k["experts"], slot, grad=True, cull=cfg.cull)
        diff = image - target
        wdiff = weight * diff
        # Row sums per sub-tile, then the sub-tiles in a fixed order: independent of batching.
        part = (wdiff * diff).reshape(mosaic.nq, len(ids), -1).sum(-1)
        mse = part[0].astype(np.float64)
        for q in range(1, mosaic.nq):
            mse += part[q]
        mse /= self.npx
        with np.errstate(divide="ignore"):
            psnr = -10.0 * np.log10(mse)

        better = psnr > self.best_psnr[ids]
        if better.any():
            rows = better[slot]
            for n in GROUPS:
                k["best_" + n][rows] = k[n][rows]
            self.aligned[ids[better]] = True
            self.best_psnr[ids[better]] = psnr[better]
        done = psnr >= cfg.target_psnr
        self.reached[ids[done]] = True
        self.iters[ids[done]] = it
        if last:
            return

        grads = dict(zip(GROUPS, backward(wdiff * np.float32(2.0 / self.npx))))
        grads["chol"][:, [0, 2]] *= chol[:, [0, 2]]  # d/d(log b) = b d/db
        grads["pi"] = grads["pi"] + np.float32(cfg.lam)
        t = k["t"]
        t += 1
        rates = {**self.rates, "mu": lr_mu}
        for name in GROUPS:
            self.adam.step(k[name], k["m_" + name], k["v_" + name], grads[name], t, rates[name])
        # Kernels that wander more than a block away are useless and would leave the exact range.
        k["mu"][:] = quantize(np.clip(k["mu"], -self.size, 2 * self.size))
        k["chol"][:, [0, 2]] = np.clip(k["chol"][:, [0, 2]], *_LOG_B_RANGE)

        # Frozen blocks leave; dead kernels (pi <= 0) are removed at once.
        if done.any():
            self.active[ids[done]] = False
            self._mos = None
        dead = k["pi"] <= 0
        drop = done[slot] | dead
        if drop.any():
            self._commit(np.unique(k["owner"][drop]))
            self._select(~drop)
            emptied = self.active & (np.bincount(self.k["owner"], minlength=len(self.active)) == 0)
            if emptied.any():
                self.iters[emptied] = it
                self.active[emptied] = False
                self._mos = None
        if it % cfg.double_every == 0:
            self._checkpoint(it)

    def _checkpoint(self, it):
        """Every C iterations a block below the target doubles, or gives up if it may not grow."""
        k, cfg = self.k, self.cfg
        counts = np.bincount(k["owner"], minlength=len(self.active))
        if cfg.stop_at_cap:
            stuck = self.active & (2 * counts > cfg.max_kernels)
            if stuck.any():
                self._commit(np.nonzero(stuck)[0])
                self.iters[stuck] = it
                self.active[stuck] = False
                self._mos = None
                self._select(~stuck[k["owner"]])
                k = self.k
        grow = self.active & (2 * counts <= cfg.max_kernels)
        if not grow.any():
            return
        self._commit(np.nonzero(grow)[0])
        rows_grow = grow[k["owner"]]
        reps = np.where(rows_grow, 2, 1)
        first = np.cumsum(reps) - reps
        self._select(np.repeat(np.arange(len(reps)), reps))
        k = self.k
        copies = first[rows_grow] + 1
        k["pi"][np.concatenate([copies - 1, copies])] *= np.float32(0.5)
        # Each block draws its jitter from its own generator, in block order.
        own = k["owner"][copies]
        for b in np.nonzero(grow)[0]:
            sel = copies[own == b]
            k["mu"][sel] += self.gens[b].normal(0.0, cfg.jitter, (len(sel), 2)).astype(np.float32)
        k["mu"][:] = quantize(k["mu"])

    def result(self) -> dict:
        """Best parameters of every block, concatenated in block order."""
        B = len(self.active)
        parts = [self.archive.get(b) for b in range(B)]
        counts = np.array([0 if p is None else len(p[0]) for p in parts], np.int64)
        C = self.blocks.shape[-1]
        empty = (np.zeros((0, 2), np.float32), np.zeros((0, 3), np.float32), np.zeros(0, np.float32),
                 np.zeros((0, C), np.float32))
        cat = [np.concatenate([p[i] if p is not None else empty[i] for p in parts] + [empty[i]])
               for i in range(4)]
        mu, log_chol, pi, experts = cat
        keep = pi > 0
        owner = np.repeat(np.arange(B), counts)
        return {"mu": mu[keep], "chol": from_log_chol(log_chol[keep]), "pi": pi[keep], "experts": experts[keep],
                "owner": owner[keep], "psnr": self.best_psnr.copy(), "iterations": self.iters.copy(),
                "reached": self.reached.copy()}


def fit_block_chunk(blocks: np.ndarray, masks: np.ndarray | None, block_ids: np.ndarray, base_seed: int,
                    settings: dict) -> dict:
    """Fit local SMoE models to a chunk of blocks (AS Algorithm 1), batched.

    A plain top-level function on NumPy arrays, so it can run in a worker process.

    Parameters
    ----------
    blocks : (B, block, block, C) float32
    masks : (B, block, block) float32 or None
        Fraction of each block pixel covered by the image pixels the block owns
        (for ``outside_weight`` and ``init_in_segment``); None: the whole block.
    block_ids : (B,) int
        Global index of each block; block randomness comes from ``(base_seed, id)``.
    base_seed : int
    settings : dict
        Fields of :class:`LocalFitSettings`.

    Returns
    -------
    dict of NumPy arrays
        ``mu`` (N, 2) local centres, ``chol`` (N, 3), ``pi`` (N,), ``experts`` (N, C),
        ``owner`` (N,) chunk-local block index (ascending); per block ``psnr``
        (best, block pixels), ``iterations``, ``reached``; and ``loop_iterations``.
    """
    cfg = LocalFitSettings(**settings).validate()
    step = Mosaic.max_blocks(blocks.shape[1])
    parts = []
    for lo in range(0, len(blocks), step):
        fit = _LocalFit(blocks[lo:lo + step], None if masks is None else masks[lo:lo + step],
                        np.asarray(block_ids)[lo:lo + step], base_seed, cfg)
        n_it = fit.run()
        r = fit.result()
        r["owner"] = r["owner"] + lo
        r["loop_iterations"] = np.array([n_it])
        parts.append(r)
    return _merge(parts, [None] * len(parts), blocks.shape[-1])


def _merge(parts: list[dict], index: list, channels: int) -> dict:
    """Concatenate chunk results; ``index[i]`` maps chunk i's block numbers to global ones (None: as is)."""
    if not parts:
        z = np.zeros
        return {"mu": z((0, 2), np.float32), "chol": z((0, 3), np.float32), "pi": z(0, np.float32),
                "experts": z((0, channels), np.float32), "owner": z(0, np.int64), "psnr": z(0),
                "iterations": z(0, np.int64), "reached": z(0, bool), "loop_iterations": np.array([0])}
    owner = np.concatenate([p["owner"] if ix is None else ix[p["owner"]] for p, ix in zip(parts, index)])
    order = np.argsort(owner, kind="stable")
    out = {n: np.concatenate([p[n] for p in parts])[order] for n in ("mu", "chol", "pi", "experts")}
    out["owner"] = owner[order]
    nb = sum(len(p["psnr"]) for p in parts)
    # Chunks without an index are consecutive runs of blocks, already in order.
    block_index = np.arange(nb) if index[0] is None else np.concatenate(index)
    for n in ("psnr", "iterations", "reached"):
        vals = np.concatenate([p[n] for p in parts])
        arr = np.empty_like(vals)
        arr[block_index] = vals
        out[n] = arr
    out["loop_iterations"] = np.array([max(int(p["loop_iterations"].max()) for p in parts)])
    return out


def _fit_chunk(block_ids: np.ndarray, *, blocks: np.ndarray, masks: np.ndarray | None, base_seed: int,
               settings: dict) -> dict:
    """Executor work unit: :func:`fit_block_chunk` on the blocks ``block_ids`` of the full arrays."""
    return fit_block_chunk(blocks[block_ids], None if masks is None else masks[block_ids], block_ids, base_seed,
                           settings)


def fit_blocks(blocks: np.ndarray, masks: np.ndarray | None, base_seed: int, settings: LocalFitSettings,
               workers: int = 1, *, executor: Executor | None = None) -> dict:
    """Fit all blocks on an :mod:`smoe.executor`, split into one chunk per worker.

    Blocks are dealt to the chunks round-robin (block i to chunk i mod n, n =
    the executor's workers, at most the block count), which spreads easy and
    hard blocks evenly on average; the result does not depend on n, on the
    backend or on the thread count.  Without ``executor`` one is made for
    ``workers`` (:func:`smoe.executor.make_executor`, backend ``"auto"``):
    ``workers=1`` fits in this process with its current numba thread count;
    more start that many worker processes (a Dask LocalCluster, or a local
    process pool without Dask) with one numba and one torch thread each,
    which costs a few seconds (each worker imports torch), so on two cores
    one worker (two threads) is as fast for a single image.  As with any
    spawned processes, a script that asks for ``workers > 1`` must guard its
    entry point with ``if __name__ == "__main__":``.

    Parameters
    ----------
    blocks : (B, block, block, C) float32
    masks : (B, block, block) float32 or None
    base_seed : int
    settings : LocalFitSettings
    workers : int
        Ignored with ``executor``.
    executor : smoe.executor.Executor, optional
        Run the chunks on this executor (in-process, local processes, a Dask
        cluster) instead of one made for ``workers``; it is not closed.

    Returns
    -------
    dict, as :func:`fit_block_chunk` with global block indices.
    """
    B = len(blocks)
    ids = np.arange(B)
    own = executor is None
    n = max(1, min(workers if own else executor.workers, B))
    if own:
        threads = min(numba.get_num_threads(), available_cores()) if n == 1 else 1
        executor = make_executor(n, threads_per_worker=threads)
    chunks = [ids[i::n] for i in range(n)]
    try:
        parts = executor.map(_fit_chunk, chunks, blocks=blocks, masks=masks, base_seed=base_seed,
                             settings=asdict(settings))
    finally:
        if own:
            executor.close()
    return _merge(parts, chunks, blocks.shape[-1])
