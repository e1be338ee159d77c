"""Fitting a space-time model to a clip, window by window, in bounded memory.

The clip is cut into windows of frames (groups of pictures).  Each window
gets its share of the kernel budget, initialized from its content
(:mod:`smoe.video.init`), and is fitted by Adam on the mean squared error of
its frames, as in 2D (:mod:`smoe.fitting`).  Kernels are shared across
window borders: the kernels of earlier windows that reach into a window are
rendered with it, frozen, and the window's loss also covers the last
``overlap`` frames of the window before, so new kernels learn not to spoil
frames that are already fitted.  Only one window's frames, renders and
gradients are in memory at a time.

The loop is the 2D fit's: L1 on the gates with dead kernels pruned
(:class:`smoe.strategy.PruneDead`), the centres' rate decaying from
``lr_mu`` to ``lr_mu_final`` over the window's share of the iterations or of
the time budget, whichever runs out first, and the convergence rule of
:func:`smoe.fitting.converged` per window.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from ..fitting import converged, psnr_from_mse
from ..parameters import KernelLeaves, learning_rates
from ..sizes import TILE, check_tile_size
from ..spec import ALLOCATION_RATES, MODES
from ..strategy import FitState, PruneDead
from ..validate import check_choice, check_finite, is_whole
from .extent import FloorTimeExtent
from .fitted import MAX_VIDEO_PIXELS, TILE_T, FittedVideo, check_tile_t
from .init import init_video
from .model import VideoModel, half_extents
from .rasterizer import kernels_per_block, rasterize_video, render_video

__all__ = ["VideoFitSpec", "VideoFitResult", "fit_video", "as_clip", "WINDOW_VOXELS"]

#: Voxels (frames x pixels) per window by default: about 200 MB per float32 RGB copy of a window.
WINDOW_VOXELS = 1 << 24


@dataclass(frozen=True)
class VideoFitSpec:
    """Everything :func:`fit_video` computes, validated once (:meth:`validate`).

    n_kernels : total kernel budget over the clip.
    mode : "smoe" or "rbf".
    window : frames per window (a multiple of ``tile_t`` is best); None picks
        the most that :data:`WINDOW_VOXELS` allows, spread evenly.
    overlap : frames of the previous window that also enter a window's loss.
    iters : most steps per window.
    time_budget : seconds for the whole clip, initialization included; window
        w must end by the share of the budget its last frame reaches, so time
        one window leaves over goes to the next. None for no limit.
    min_gain : stop a window once its PSNR gains less than this many dB per
        second (:func:`smoe.fitting.converged`); None to run to ``iters``.
    lam, prune_every : L1 weight on the gates and steps between prunings (SMoE).
    lr_mu, lr_mu_final, lr_chol, lr_pi, lr_experts : Adam rates (:data:`smoe.spec.ALLOCATION_RATES`).
    aspect : starting ratio of a kernel's extent along t to its extent across.
    min_sigma_t : floor on each kernel's standard deviation along t at a fixed pixel, in frames
        (:class:`~smoe.video.extent.FloorTimeExtent`); None leaves it free.
    tile, tile_t : space-time blocks of tile x tile pixels by tile_t frames.
    seed : seeds the initialization of every window.
    log_every : steps between history records.
    """

    n_kernels: int = 16000
    mode: str = "smoe"
    window: int | None = None
    overlap: int = 2
    iters: int = 2000
    time_budget: float | None = None
    min_gain: float | None = 0.01
    lam: float = 0.0
    prune_every: int = 100
    lr_mu: float = ALLOCATION_RATES["lr_mu"]
    lr_mu_final: float = ALLOCATION_RATES["lr_mu_final"]
    lr_chol: float = ALLOCATION_RATES["lr_chol"]
    lr_pi: float = ALLOCATION_RATES["lr_pi"]
    lr_experts: float = ALLOCATION_RATES["lr_experts"]
    aspect: float = 2.0
    min_sigma_t: float | None = None
    tile: int = TILE
    tile_t: int = TILE_T
    seed: int = 0
    log_every: int = 25

    def replace(self, **fields) -> "VideoFitSpec":
        unknown = set(fields) - set(self.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown fit setting(s): {', '.join(sorted(unknown))}")
        return replace(self, **fields)

    def validate(self, shape: tuple[int, int, int]) -> "VideoFitSpec":
        """Check every field for a clip of ``shape = (frames, height, width)``; returns the spec with ``window`` set."""
        F, H, W = shape
        check_choice("mode", self.mode, MODES)
        if not (is_whole(self.n_kernels) and 1 <= self.n_kernels <= F * H * W):
            raise ValueError(f"n_kernels must be a whole number from 1 to the clip's {F * H * W} voxels, "
                             f"got {self.n_kernels!r}")
        for name, low in (("iters", 1), ("prune_every", 1), ("log_every", 1), ("overlap", 0), ("seed", 0)):
            value = getattr(self, name)
            if not (is_whole(value) and value >= low):
                raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
        check_finite("lam", self.lam, low=0)
        for name in ALLOCATION_RATES:
            check_finite(name, getattr(self, name), low=0)
        check_finite("aspect", self.aspect, low=0, low_open=True)
        if self.min_sigma_t is not None:
            check_finite("min_sigma_t (frames)", self.min_sigma_t, low=0, low_open=True)
        if self.time_budget is not None:
            check_finite("time_budget (seconds)", self.time_budget, low=0, low_open=True)
        if self.min_gain is not None:
            check_finite("min_gain (dB per second)", self.min_gain, low=0, low_open=True)
        check_tile_size(self.tile)
        tile_t = check_tile_t(self.tile_t)
        window = self.window
        if window is None:
            most = max(tile_t, WINDOW_VOXELS // (H * W) // tile_t * tile_t)
            count = math.ceil(F / most)
            window = math.ceil(F / count)
        elif not (is_whole(window) and window >= 1):
            raise ValueError(f"window must be a whole number of frames >= 1, got {window!r}")
        return replace(self, window=int(min(window, F)))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class VideoFitResult:
    """What :func:`fit_video` returns.

    fitted : the model with its clip size, fps, mode and tiles (:class:`FittedVideo`)
    history : one dict per logged step: window, iteration, psnr (of the window's
        loss frames), kernels, kernels_per_block, seconds (since the fit began)
    frame_psnr : (F,) PSNR of each reconstructed frame, from the final model
    reconstruction : (F, H, W, C) float32 render of the fitted frames, clipped to [0, 1]
    spec : the resolved :class:`VideoFitSpec`
    seconds : total fitting time (initialization included, final render not)
    """

    fitted: FittedVideo
    history: list[dict]
    frame_psnr: np.ndarray
    reconstruction: np.ndarray
    spec: VideoFitSpec
    seconds: float
    windows: list[tuple[int, int]] = field(default_factory=list)

    @property
    def mean_psnr(self) -> float:
        return float(np.mean(self.frame_psnr))


def as_clip(frames, name: str = "clip") -> np.ndarray:
    """Check a clip array and return it as float32 (F, H, W, C), C in {1, 3}."""
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[3] not in (1, 3):
        raise ValueError(f"{name} must have shape (F, H, W) or (F, H, W, C) with C = 1 or 3, got {np.shape(frames)}")
    if min(arr.shape[:3]) < 1:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.shape[0] * arr.shape[1] * arr.shape[2] > MAX_VIDEO_PIXELS:
        raise ValueError(f"{name} of {arr.shape[0]} frames of {arr.shape[2]}x{arr.shape[1]} pixels exceeds the limit "
                         f"of {MAX_VIDEO_PIXELS // 1_000_000} megapixels in total; fit fewer frames (--frames A:B)")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def window_ranges(frames: int, window: int) -> list[tuple[int, int]]:
    """Consecutive ``[a, b)`` frame ranges of at most ``window`` frames covering the clip."""
    return [(a, min(a + window, frames)) for a in range(0, frames, window)]


def _budgets(total: int, ranges, frames: int) -> list[int]:
    """Kernels per window in proportion to its frames, summing to ``total`` (at least 1 each)."""
    raw = np.array([(b - a) / frames * total for a, b in ranges])
    out = np.maximum(1, np.floor(raw)).astype(int)
    for i in np.argsort(-(raw - np.floor(raw)))[: max(0, total - int(out.sum()))]:
        out[i] += 1
    return out.tolist()


def _progress(total: int, quiet: bool):
    if quiet:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="it", dynamic_ncols=True, leave=True)


def fit_video(frames, n_kernels: int | None = None, *, fps: float = 25.0, spec: VideoFitSpec | None = None,
              backend: str = "auto", quiet: bool = True, callback=None, **fields) -> VideoFitResult:
    """Fit a space-time SMoE (or RBF) model to a clip.

    Parameters
    ----------
    frames : (F, H, W) or (F, H, W, C) array
        The clip, floats in [0, 1].
    n_kernels : int, optional
        Total kernel budget (default the spec's, 16 000).
    fps : float
        The clip's frame rate, recorded with the model.
    spec : VideoFitSpec, optional
        All settings; ``**fields`` given beside it override its fields.
    backend : {"auto", "cpu", "torch"}
    quiet : bool
        False shows a progress bar over windows and steps.
    callback : callable, optional
        Called with each history record.

    Returns
    -------
    VideoFitResult

    Examples
    --------
    >>> clip = np.random.default_rng(0).random((4, 16, 16, 3)).astype(np.float32)
    >>> result = fit_video(clip, 60, iters=10)
    >>> result.fitted.shape, result.frame_psnr.shape
    ((4, 16, 16), (4,))
    """
    clip = as_clip(frames)
    F, H, W, C = clip.shape
    check_finite("fps", fps, low=0, low_open=True)
    if n_kernels is not None:
        fields["n_kernels"] = n_kernels
    spec = (spec or VideoFitSpec()).replace(**fields).validate((F, H, W))
    ranges = window_ranges(F, spec.window)
    budgets = _budgets(spec.n_kernels, ranges, F)
    steps = spec.iters * len(ranges)
    bar = _progress(steps, quiet)
    history: list[dict] = []
    done: list[VideoModel] = []
    t0 = time.perf_counter()
    try:
        for w, ((a, b), count) in enumerate(zip(ranges, budgets)):
            # Each window may run until its share of the budget is spent, counted from the start of the
            # fit: time one window leaves over goes to the next, and initialization counts.
            seconds = None if spec.time_budget is None else max(1e-3, t0 + spec.time_budget * b / F
                                                                 - time.perf_counter())
            done.append(_fit_window(clip, a, b, count, done, spec, seconds, backend, history, t0, w, bar,
                                    callback))
    finally:
        if bar is not None:
            bar.close()
    fit_seconds = time.perf_counter() - t0
    model = VideoModel.cat(done) if done else VideoModel.empty(C)
    fitted = FittedVideo(model, F, (H, W), fps, spec.mode, spec.tile, spec.tile_t, settings=spec.to_dict())
    recon, frame_psnr = reconstruct(fitted, clip, spec.window, backend)
    return VideoFitResult(fitted, history, frame_psnr, recon, spec, fit_seconds, ranges)


def reconstruct(fitted: FittedVideo, clip: np.ndarray, window: int, backend: str = "auto"):
    """Render the fitted frames window by window: ((F, H, W, C) clipped float32, (F,) PSNR per frame)."""
    from ..metrics import psnr

    F, H, W, _ = clip.shape
    recon = np.empty_like(clip)
    with torch.no_grad():
        for a, b in window_ranges(F, window):
            out = render_video(fitted.model, H, W, np.arange(a, b) + 0.5, mode=fitted.mode, tile=fitted.tile,
                               tile_t=fitted.tile_t, backend=backend)
            recon[a:b] = out.clamp(0, 1).numpy()
    return recon, np.array([psnr(clip[f], recon[f]) for f in range(F)])


def _context(done: list[VideoModel], start: float) -> VideoModel | None:
    """The frozen kernels of earlier windows whose 99 % box reaches clip time ``start`` or later."""
    if not done:
        return None
    prior = VideoModel.cat(done)
    reach = prior.mu[:, 2] + half_extents(prior.chol)[:, 2]
    return prior.select(reach >= start)


def _rbf_experts(model: VideoModel, H: int, W: int, a: int, b: int, spec: VideoFitSpec) -> VideoModel:
    """Divide each expert by the kernel density at its centre, so a sum of kernels starts near the clip.

    The start takes experts from the clip under each centre, right for
    normalised SMoE gates; an RBF adds overlapping kernels up (as in 2D,
    :func:`smoe.fitting._rbf_experts`).
    """
    ones = torch.ones(len(model), 1, dtype=model.dtype)
    with torch.no_grad():
        density = rasterize_video(model.mu, model.chol, model.pi, ones, H, W, np.arange(a, b) + 0.5, mode="rbf",
                                  tile=spec.tile, tile_t=spec.tile_t)[..., 0]
    cols = model.mu[:, 0].long().clamp(0, W - 1)
    rows = model.mu[:, 1].long().clamp(0, H - 1)
    frames = (model.mu[:, 2].long() - a).clamp(0, b - a - 1)
    scale = density[frames, rows, cols].clamp(min=1.0).unsqueeze(1)
    return VideoModel.unchecked(model.mu, model.chol, model.pi, model.experts / scale)


def _fit_window(clip, a, b, count, done, spec: VideoFitSpec, seconds, backend, history, t0, window, bar, callback):
    """Fit the ``count`` kernels of frames [a, b); returns them (pruned, detached)."""
    began = time.perf_counter()
    H, W = clip.shape[1:3]
    lo = max(0, a - spec.overlap) if done else a
    times = np.arange(lo, b) + 0.5
    target = torch.from_numpy(np.ascontiguousarray(clip[lo:b]))
    start = init_video(clip[a:b], count, seed=spec.seed + window, aspect=spec.aspect, t_offset=a)
    if spec.mode == "rbf":
        start = _rbf_experts(start, H, W, a, b, spec)
    ctx = _context(done, lo)
    leaves = KernelLeaves(start)
    opt = leaves.optimizer(learning_rates(spec))
    strategies = [PruneDead(spec.prune_every)] if spec.mode == "smoe" else []
    if spec.min_sigma_t is not None:
        strategies.append(FloorTimeExtent(spec.min_sigma_t))
    lr0, ratio = spec.lr_mu, (spec.lr_mu_final / spec.lr_mu if spec.lr_mu > 0 and spec.lr_mu_final > 0 else 1.0)
    records: list[dict] = []
    for it in range(1, spec.iters + 1):
        parts = [leaves.mu, leaves.cholesky(), leaves.pi, leaves.experts]
        if ctx is not None and len(ctx):
            parts = [torch.cat([c, p]) for c, p in zip((ctx.mu, ctx.chol, ctx.pi, ctx.experts), parts)]
        out = rasterize_video(*parts, H, W, times, mode=spec.mode, tile=spec.tile, tile_t=spec.tile_t,
                              backend=backend)
        mse = torch.nn.functional.mse_loss(out, target)
        loss = mse + spec.lam * torch.clamp(leaves.pi, min=0).sum() if spec.lam > 0 else mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        elapsed = time.perf_counter() - began
        progress = it / spec.iters if seconds is None else max(it / spec.iters, elapsed / seconds)
        opt.param_groups[0]["lr"] = lr0 * ratio ** min(1.0, progress)
        last = progress >= 1.0
        state = FitState(leaves, opt, target, out.detach(), it, last, spec.mode)
        for strategy in strategies:
            strategy.after_step(state)
        if it % spec.log_every == 0 or last:
            live = int((leaves.pi.detach() > 0).sum()) if spec.mode == "smoe" else len(leaves)
            rec = {"window": window, "iteration": it, "psnr": psnr_from_mse(float(mse.detach())), "kernels": live,
                   "kernels_per_block": kernels_per_block(leaves.model(), H, W, b - a, mode=spec.mode, tile=spec.tile,
                                                          tile_t=spec.tile_t, first=a),
                   "seconds": time.perf_counter() - t0, "window_seconds": elapsed}
            records.append({"seconds": elapsed, "psnr": rec["psnr"], "kernels": live})
            history.append(rec)
            if callback is not None:
                callback(rec)
            if bar is not None:
                bar.set_postfix(window=f"{window + 1}", psnr=f"{rec['psnr']:.2f}", kernels=live, refresh=False)
            if spec.min_gain is not None and not last and converged(records, spec.min_gain):
                last = True
        if bar is not None:
            bar.update(1)
        if last:
            if bar is not None:
                bar.update(spec.iters - it)
            break
    model = leaves.model()
    return model.pruned() if spec.mode == "smoe" else model
