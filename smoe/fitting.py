"""Fitting a kernel model to an image by gradient descent (SPEC §2).

Loss (AS paper, Eq. 6): mean squared error over all pixels and channels plus
``lam * sum(pi)`` over the live kernels.  The L1 term pushes the gates of
useless kernels to zero; in SMoE mode a kernel whose ``pi`` reaches ``<= 0``
stops acting at once (the renderer skips it) and is removed from the
parameter tensors every ``prune_every`` iterations, so the model really
shrinks.  ``lam = 0`` is the plain R-paper protocol.

Parameterisation: centres ``mu``; the precision Cholesky factor with its
diagonal in log space, ``(log b00, b10, log b11)``, which keeps it positive and
makes Adam's steps relative to the kernel's size; raw gates ``pi``; experts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .initializers import initialize
from .model import Model
from .rasterizer import MODES, SCOPES, kernels_per_tile, rasterize
from .validate import check_choice


@dataclass(frozen=True)
class FitSettings:
    """Optimizer settings; the defaults are the measured ones documented in the README."""

    iters: int = 1000
    lr_mu: float = 0.01
    lr_mu_final: float = 1e-3
    lr_chol: float = 0.03
    lr_pi: float = 0.001
    lr_experts: float = 0.003
    lam: float = 0.0
    prune_every: int = 100
    target_psnr: float | None = None
    target_corr: float | None = None
    tol: float | None = None
    time_budget: float | None = None
    log_every: int = 10

    def validate(self):
        if self.iters < 1:
            raise ValueError(f"iters must be at least 1, got {self.iters}")
        for name in ("lr_mu", "lr_mu_final", "lr_chol", "lr_pi", "lr_experts"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite non-negative number, got {v}")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ValueError(f"lam must be a finite non-negative number, got {self.lam}")
        if self.target_psnr is not None and not math.isfinite(self.target_psnr):
            raise ValueError(f"target_psnr must be finite, got {self.target_psnr}")
        if self.target_corr is not None and not (math.isfinite(self.target_corr) and -1 <= self.target_corr <= 1):
            raise ValueError(f"target_corr must be a correlation between -1 and 1, got {self.target_corr}")
        if self.tol is not None and not (math.isfinite(self.tol) and self.tol >= 0):
            raise ValueError(f"tol must be a finite non-negative number, got {self.tol}")
        if self.time_budget is not None and not (self.time_budget > 0):
            raise ValueError(f"time_budget must be positive seconds, got {self.time_budget}")
        if self.log_every < 1 or self.prune_every < 1:
            raise ValueError("log_every and prune_every must be at least 1")
        return self


@dataclass
class FitResult:
    """What :func:`fit` returns.

    model : the fitted (pruned, detached) Model
    history : one dict per logged iteration with keys
        iteration, loss, psnr, kernels, kernels_per_tile, seconds (and
        residual_corr with a ``target_corr`` stop rule)
    stop_reason : "iterations", "target_psnr", "target_corr", "plateau" or "time_budget"
    extras : {"returned_steps": optimizer steps behind the returned model}; the
        fit returns the iterate with the lowest loss, which is the last one
        unless Adam ended on a spike
    """

    model: Model
    history: list[dict]
    settings: dict
    init_kernels: int
    init_seconds: float
    fit_seconds: float
    stop_reason: str
    extras: dict = field(default_factory=dict)

    @property
    def final_psnr(self) -> float:
        return self.history[-1]["psnr"]


def as_image(image, name: str = "image") -> np.ndarray:
    """Check an image array and return it as float32 (H, W, C) with C in {1, 3}."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ValueError(f"{name} must have shape (H, W), (H, W, 1) or (H, W, 3), got {np.shape(image)}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} is empty ({arr.shape[0]}x{arr.shape[1]} pixels)")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def psnr_from_mse(mse: float) -> float:
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


class _Parameters:
    """The leaf tensors Adam updates, and the Model they describe."""

    def __init__(self, model: Model):
        c = model.chol.detach()
        self.mu = model.mu.detach().clone().requires_grad_()
        self.chol = torch.stack([c[:, 0].log(), c[:, 1], c[:, 2].log()], 1).requires_grad_()
        self.pi = model.pi.detach().clone().requires_grad_()
        self.experts = model.experts.detach().clone().requires_grad_()

    def leaves(self):
        return [self.mu, self.chol, self.pi, self.experts]

    def cholesky(self):
        c = self.chol
        return torch.stack([c[:, 0].exp(), c[:, 1], c[:, 2].exp()], 1)

    def model(self) -> Model:
        return Model.unchecked(self.mu.detach(), self.cholesky().detach(), self.pi.detach(),
                               self.experts.detach())

    def compact(self, keep: torch.Tensor, optimizer: torch.optim.Optimizer):
        """Drop the kernels not in ``keep`` from the leaves and from Adam's state."""
        for group in optimizer.param_groups:
            old = group["params"][0]
            new = old.detach()[keep].clone().requires_grad_()
            state = optimizer.state.pop(old, None)
            if state is not None:
                optimizer.state[new] = {k: (v[keep] if torch.is_tensor(v) and v.dim() > 0 else v)
                                        for k, v in state.items()}
            group["params"][0] = new
        self.mu, self.chol, self.pi, self.experts = (g["params"][0] for g in optimizer.param_groups)


def _rbf_experts(model: Model, image: np.ndarray) -> Model:
    """Divide each expert by the kernel density at its centre.

    Initializers set experts to the image value under the centre, which is right
    for normalised SMoE gates; an RBF sums overlapping kernels instead and would
    start far too bright.  Dividing by the summed kernel weight at the centre
    makes the initial RBF render approximate the image as well.
    """
    h, w, _ = image.shape
    ones = torch.ones(len(model), 1, dtype=model.dtype)
    density = rasterize(model.mu, model.chol, model.pi, ones, h, w, mode="rbf")[..., 0]
    cols = model.mu[:, 0].long().clamp(0, w - 1)
    rows = model.mu[:, 1].long().clamp(0, h - 1)
    scale = density[rows, cols].clamp(min=1.0).unsqueeze(1)
    return Model.unchecked(model.mu, model.chol, model.pi, model.experts / scale)


def _progress(total: int, quiet: bool):
    if quiet:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="it", dynamic_ncols=True, leave=True)


def fit(image, n_kernels: int | None = 2000, *, mode: str = "smoe", scope: str = "raster", init: str | Model = "random",
        seed: int = 0, tile_offset: tuple[int, int] = (0, 0), backend: str = "auto", quiet: bool = True,
        init_options: dict | None = None, callback=None, **settings) -> FitResult:
    """Fit a kernel model to an image.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array
        Float image in [0, 1], C = 1 or 3.
    n_kernels : int or None
        Kernel budget handed to the initializer (``L_init``).  None lets
        initializers that choose their own count (``"adaptive"``) do so; the
        others then raise.
    mode : {"smoe", "rbf"}
        Regression function.  L1 sparsity and pruning act on the SMoE gates;
        RBF has no gates, so ``lam`` must be 0 there.
    scope : {"raster", "global"}
    init : str or Model
        Initializer name (see :func:`smoe.initializers.available`) or a ready
        model to start from.
    seed : int
        Seeds the initializer; the fit itself is deterministic on CPU.
    tile_offset : (int, int)
        Shift of the tile grid (multi-model denoising fits several shifts).
    backend : {"auto", "cpu", "torch"}
    quiet : bool
        False shows a progress bar (iteration, PSNR, kernels, it/s).
    init_options : dict, optional
        Extra keyword arguments for the initializer.
    callback : callable, optional
        Called with each history record as it is logged.
    **settings
        Fields of :class:`FitSettings`: ``iters``, learning rates, ``lam``,
        ``prune_every``, stopping rules ``target_psnr``, ``target_corr`` (stop
        once :func:`neighbour_correlation` of the residual is at most this,
        checked at log points and recorded there as ``residual_corr``), ``tol`` (relative loss
        decrease between two log points below which the fit stops),
        ``time_budget`` (seconds), and ``log_every``.

    Returns
    -------
    FitResult
    """
    check_choice("mode", mode, MODES)
    check_choice("scope", scope, SCOPES)
    cfg = FitSettings(**settings).validate()
    if mode == "rbf" and cfg.lam > 0:
        raise ValueError("L1 sparsity (lam > 0) needs the SMoE gates; use mode='smoe' or lam=0")
    img = as_image(image)
    h, w, c = img.shape
    t0 = time.perf_counter()
    if isinstance(init, Model):
        start = init
    else:
        if n_kernels is not None and not (isinstance(n_kernels, (int, np.integer)) and 1 <= n_kernels <= h * w):
            raise ValueError(f"n_kernels must be an integer between 1 and the pixel count {h * w}, got {n_kernels}")
        start = initialize(init, img, None if n_kernels is None else int(n_kernels), seed=seed,
                           **(init_options or {}))
        if mode == "rbf":
            start = _rbf_experts(start, img)
    if start.channels != c:
        raise ValueError(f"initial model has {start.channels} channels but the image has {c}")
    init_seconds = time.perf_counter() - t0

    target = torch.from_numpy(img).to(start.dtype)
    p = _Parameters(start.to(device=target.device))
    opt = torch.optim.Adam([
        {"params": [p.mu], "lr": cfg.lr_mu},
        {"params": [p.chol], "lr": cfg.lr_chol},
        {"params": [p.pi], "lr": cfg.lr_pi},
        {"params": [p.experts], "lr": cfg.lr_experts},
    ])
    decay = (cfg.lr_mu_final / cfg.lr_mu) ** (1.0 / cfg.iters) if cfg.lr_mu > 0 and cfg.lr_mu_final > 0 else 1.0

    history: list[dict] = []
    bar = _progress(cfg.iters, quiet)
    stop, prev_best, best = "iterations", math.inf, math.inf
    t_fit = time.perf_counter()
    it = 0
    try:
        for it in range(1, cfg.iters + 1):
            out = rasterize(p.mu, p.cholesky(), p.pi, p.experts, h, w, mode=mode, scope=scope,
                            tile_offset=tile_offset, backend=backend)
            mse = torch.nn.functional.mse_loss(out, target)  # one fused op each way, half the time
            loss = mse + cfg.lam * torch.clamp(p.pi, min=0).sum() if cfg.lam > 0 else mse
            if float(loss.detach()) < best:
                best, best_model, best_steps = float(loss.detach()), _snapshot(p.model()), it - 1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            opt.param_groups[0]["lr"] *= decay

            if mode == "smoe" and (it % cfg.prune_every == 0 or it == cfg.iters):
                keep = p.pi.detach() > 0
                if not keep.all():
                    p.compact(keep, opt)

            last = it == cfg.iters
            elapsed = time.perf_counter() - t_fit
            if cfg.time_budget is not None and elapsed >= cfg.time_budget:
                stop, last = "time_budget", True
            psnr = psnr_from_mse(float(mse.detach()))
            if cfg.target_psnr is not None and psnr >= cfg.target_psnr:
                stop, last = "target_psnr", True
            if it % cfg.log_every == 0 or last:
                live = int((p.pi.detach() > 0).sum()) if mode == "smoe" else p.pi.shape[0]
                rec = {"iteration": it, "loss": float(loss.detach()), "psnr": psnr, "kernels": live,
                       "kernels_per_tile": kernels_per_tile(p.model(), h, w, mode=mode, tile_offset=tile_offset)
                       if scope == "raster" else float(live), "seconds": elapsed}
                if cfg.target_corr is not None:
                    rec["residual_corr"] = neighbour_correlation(target - out.detach())
                    if rec["residual_corr"] <= cfg.target_corr:
                        stop, last = "target_corr", True
                history.append(rec)
                if callback is not None:
                    callback(rec)
                if bar is not None:
                    bar.set_postfix(psnr=f"{psnr:.2f}", kernels=live, refresh=False)
                if cfg.tol is not None and not last:
                    if prev_best < math.inf and (prev_best - best) <= cfg.tol * abs(prev_best):
                        stop, last = "plateau", True
                    prev_best = best
            if bar is not None:
                bar.update(1)
            if last:
                break
    finally:
        if bar is not None:
            bar.close()
    fit_seconds = time.perf_counter() - t_fit

    # Adam can end on a spike: return the last parameters unless an earlier
    # iterate had a lower loss.
    model = p.model()
    mse = _mse(model, target, mode, scope, tile_offset, backend)
    if _loss(model, mse, cfg.lam) >= best:
        model, mse = best_model, _mse(best_model, target, mode, scope, tile_offset, backend)
    else:
        best_steps = it
    if mode == "smoe":
        model = model.pruned()
    history[-1]["psnr"] = psnr_from_mse(mse)
    history[-1]["kernels"] = len(model)
    used = {"mode": mode, "scope": scope, "init": init if isinstance(init, str) else "model",
            "n_kernels": None if n_kernels is None else int(n_kernels), "seed": seed, "tile_offset": list(tile_offset),
            "iterations": it, **cfg.__dict__}
    return FitResult(model, history, used, len(start), init_seconds, fit_seconds, stop,
                     extras={"returned_steps": best_steps})


def neighbour_correlation(residual: torch.Tensor) -> float:
    """Correlation of a residual ``(H, W, C)`` with itself shifted by one pixel, across and down.

    White noise gives 0; a fit that still misses structure leaves a positive value,
    and one that has begun to follow the noise (taking out its smooth part) a negative one.
    """
    energy = float(residual.square().mean())
    if energy == 0:
        return 0.0
    across = float((residual[:, 1:] * residual[:, :-1]).mean()) if residual.shape[1] > 1 else 0.0
    down = float((residual[1:] * residual[:-1]).mean()) if residual.shape[0] > 1 else 0.0
    return (across + down) / (2 * energy)


def _snapshot(model: Model) -> Model:
    return Model.unchecked(*(t.clone() for t in (model.mu, model.chol, model.pi, model.experts)))


def _mse(model: Model, target, mode, scope, tile_offset, backend) -> float:
    with torch.no_grad():
        out = rasterize(model.mu, model.chol, model.pi, model.experts, *target.shape[:2], mode=mode, scope=scope,
                        tile_offset=tile_offset, backend=backend)
    return float(torch.nn.functional.mse_loss(out, target))


def _loss(model: Model, mse: float, lam: float) -> float:
    return mse + lam * float(torch.clamp(model.pi, min=0).sum()) if lam > 0 else mse
