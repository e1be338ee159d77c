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

from .fitted import FittedModel
from .initializers import initialize
from .model import Model
from .parameters import KernelLeaves, decay_factor, learning_rates
from .rasterizer import kernels_per_tile, rasterize
from .spec import MODEL_INIT, FitSpec
from .strategy import FitState, strategies_for


@dataclass
class FitResult:
    """What :func:`fit` returns.

    model : the fitted (pruned, detached) Model
    history : one dict per logged iteration with keys
        iteration, loss, psnr, kernels, kernels_per_tile, seconds (and
        residual_corr with a ``target_corr`` stop rule)
    spec : the resolved :class:`smoe.spec.FitSpec`; ``fit(image, spec=result.spec)`` repeats the fit
    frame : ``(height, width)`` of the fitted image
    iterations : optimizer steps taken
    stop_reason : "iterations", "target_psnr", "target_corr", "plateau", "converged" or "time_budget"
    extras : {"returned_steps": optimizer steps behind the returned model}; the
        fit returns the iterate with the lowest loss, which is the last one
        unless Adam ended on a spike
    """

    model: Model
    history: list[dict]
    spec: FitSpec
    frame: tuple[int, int]
    iterations: int
    init_kernels: int
    init_seconds: float
    fit_seconds: float
    stop_reason: str
    extras: dict = field(default_factory=dict)

    @property
    def final_psnr(self) -> float:
        return self.history[-1]["psnr"]

    @property
    def fitted(self) -> FittedModel:
        """The model with the frame, mode, scope, tile offset and spec it was fitted with."""
        spec = self.spec
        return FittedModel(self.model, self.frame, spec.mode, spec.scope, spec.tile_offset, spec, spec.tile_size)

    def run_facts(self) -> dict:
        """How the fit went, as ``metrics.json`` reports it."""
        return {"kernels_initial": self.init_kernels, "iterations": self.iterations, "stop_reason": self.stop_reason,
                "init_seconds": self.init_seconds, "fit_seconds": self.fit_seconds}


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


class _SpecDefault:
    """Marks an argument left to the spec's default."""

    def __repr__(self):
        return "<the spec's default>"


SPEC_DEFAULT = _SpecDefault()


def _progress(total: int, quiet: bool):
    if quiet:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="it", dynamic_ncols=True, leave=True)


def fit(image, n_kernels: int | None = SPEC_DEFAULT, *, spec: FitSpec | None = None, init: str | Model | None = None,
        backend: str = "auto", quiet: bool = True, callback=None, strategies: tuple = (), **fields) -> FitResult:
    """Fit a kernel model to an image.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array
        Float image in [0, 1], C = 1 or 3.
    n_kernels : int or None
        Kernel budget handed to the initializer (``L_init``, default 2000).
        None lets initializers that choose their own count (``"adaptive"``) do
        so; the others then raise.
    spec : FitSpec, optional
        Everything the fit computes (:class:`smoe.spec.FitSpec`, whose fields
        and defaults are documented there); ``n_kernels``, ``init`` and
        ``**fields`` given beside it override its fields.
    init : str or Model, optional
        Initializer name (see :func:`smoe.initializers.available`) or a ready
        model to start from, recorded as init ``"model"``.
    backend : {"auto", "cpu", "torch"}
    quiet : bool
        False shows a progress bar (iteration, PSNR, kernels, it/s).
    callback : callable, optional
        Called with each history record as it is logged.
    strategies : sequence of Strategy
        Run after the spec's own (:func:`smoe.strategy.strategies_for`); the
        codec's quantizer is one.  The spec does not record them.
    **fields
        Other :class:`~smoe.spec.FitSpec` fields: ``mode``, ``scope``,
        ``init_options``, ``seed``, ``tile_offset``, ``iters``, learning rates,
        ``lam``, ``prune_every``, the strategies' ``max_reach``,
        ``grow_start`` and ``grow_every`` (:mod:`smoe.strategy`), the stop
        rules ``target_psnr``, ``target_corr`` (stop once
        :func:`neighbour_correlation` of the residual is at most this, checked
        at log points and recorded there as ``residual_corr``), ``tol``,
        ``min_gain`` (:func:`converged`), ``time_budget``, and ``log_every``.

    Returns
    -------
    FitResult

    Examples
    --------
    >>> import numpy as np
    >>> image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    >>> result = fit(image, 100, iters=20, seed=1)
    >>> again = fit(image, spec=result.spec)
    >>> bool((again.model.mu == result.model.mu).all())
    True
    """
    img = as_image(image)
    h, w, c = img.shape
    start = init if isinstance(init, Model) else None
    if n_kernels is not SPEC_DEFAULT:
        fields["n_kernels"] = n_kernels
    if init is not None:
        fields["init"] = MODEL_INIT if start is not None else init
    spec = (spec or FitSpec()).replace(**fields).validate(img.shape)
    if spec.init == MODEL_INIT and start is None:
        raise ValueError("this spec starts from a ready model (init 'model'); pass that model too: "
                         "fit(image, spec=spec, init=model)")
    mode, scope, tile_offset, tile = spec.mode, spec.scope, spec.tile_offset, spec.tile_size
    t0 = time.perf_counter()
    if start is None:
        count = spec.n_kernels
        if count is not None and spec.grow_start is not None:
            count = max(1, round(spec.grow_start * count))
        start = initialize(spec.init, img, None if count is None else int(count), seed=spec.seed,
                           **spec.init_options)
        if mode == "rbf":
            start = _rbf_experts(start, img)
    if start.channels != c:
        raise ValueError(f"initial model has {start.channels} channels but the image has {c}")
    init_seconds = time.perf_counter() - t0

    target = torch.from_numpy(img).to(start.dtype)
    leaves = KernelLeaves(start.to(device=target.device))
    opt = leaves.optimizer(learning_rates(spec))
    decay = decay_factor(spec.lr_mu, spec.lr_mu_final, spec.iters)
    strategies = strategies_for(spec, len(start), (h, w)) + list(strategies)

    def render(mu, chol, pi, experts):
        return rasterize(*_view(strategies, mu, chol, pi, experts), h, w, mode=mode, scope=scope,
                         tile_offset=tile_offset, backend=backend, tile=tile)

    history: list[dict] = []
    bar = _progress(spec.iters, quiet)
    stop, prev_best, best, met = "iterations", math.inf, math.inf, None
    t_fit = time.perf_counter()
    it = 0
    try:
        for it in range(1, spec.iters + 1):
            out = render(leaves.mu, leaves.cholesky(), leaves.pi, leaves.experts)
            mse = torch.nn.functional.mse_loss(out, target)  # one fused op each way, half the time
            loss = mse + spec.lam * torch.clamp(leaves.pi, min=0).sum() if spec.lam > 0 else mse
            psnr = psnr_from_mse(float(mse.detach()))
            if float(loss.detach()) < best:
                best, best_model, best_steps = float(loss.detach()), _snapshot(leaves.model()), it - 1
            if spec.target_psnr is not None and psnr >= spec.target_psnr:
                met, met_steps = _snapshot(leaves.model()), it - 1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            opt.param_groups[0]["lr"] *= decay

            last = it == spec.iters
            elapsed = time.perf_counter() - t_fit
            if spec.time_budget is not None and elapsed >= spec.time_budget:
                stop, last = "time_budget", True
            state = FitState(leaves, opt, target, out.detach(), it, last, mode, psnr, render)
            for strategy in strategies:
                strategy.after_step(state)
            settled = all(s.settled() for s in strategies)
            if spec.target_psnr is not None and psnr >= spec.target_psnr and settled:
                stop, last = "target_psnr", True
            if it % spec.log_every == 0 or last:
                live = int((leaves.pi.detach() > 0).sum()) if mode == "smoe" else len(leaves)
                rec = {"iteration": it, "loss": float(loss.detach()), "psnr": psnr, "kernels": live,
                       "kernels_per_tile": kernels_per_tile(leaves.model(), h, w, mode=mode, tile_offset=tile_offset,
                                                            tile=tile)
                       if scope == "raster" else float(live), "seconds": elapsed}
                if spec.target_corr is not None:
                    rec["residual_corr"] = neighbour_correlation(target - out.detach())
                    if rec["residual_corr"] <= spec.target_corr:
                        stop, last = "target_corr", True
                history.append(rec)
                if callback is not None:
                    callback(rec)
                if bar is not None:
                    bar.set_postfix(psnr=f"{psnr:.2f}", kernels=live, refresh=False)
                if spec.tol is not None and not last:
                    if prev_best < math.inf and (prev_best - best) <= spec.tol * abs(prev_best):
                        stop, last = "plateau", True
                    prev_best = best
                if (spec.min_gain is not None and not last and settled
                        and converged(history, spec.min_gain)):
                    stop, last = "converged", True
            if bar is not None:
                bar.update(1)
            if last:
                break
    finally:
        if bar is not None:
            bar.close()
    fit_seconds = time.perf_counter() - t_fit

    # A fit to a target returns the last iterate that met it: after trimming, the smallest.  Otherwise
    # Adam can end on a spike: return the last parameters unless an earlier iterate had a lower loss.
    model = leaves.model()
    mse = _mse(_viewed(strategies, model), target, mode, scope, tile_offset, tile, backend)
    if met is not None and (psnr_from_mse(mse) < spec.target_psnr or len(met) < len(model)):
        model, best_steps, stop = met, met_steps, "target_psnr"
        mse = _mse(_viewed(strategies, met), target, mode, scope, tile_offset, tile, backend)
    elif met is None and _loss(model, mse, spec.lam) >= best:
        model = best_model
        mse = _mse(_viewed(strategies, best_model), target, mode, scope, tile_offset, tile, backend)
    else:
        best_steps = it
    if mode == "smoe":
        model = model.pruned()
    history[-1]["psnr"] = psnr_from_mse(mse)
    history[-1]["kernels"] = len(model)
    return FitResult(model, history, spec, (h, w), it, len(start), init_seconds, fit_seconds, stop,
                     extras={"returned_steps": best_steps})


#: Seconds of fitting before :func:`converged` may stop a fit: early PSNR estimates are noisy.
CONVERGENCE_MIN_SECONDS = 2.0


def converged(history: list[dict], min_gain: float) -> bool:
    """True once the best PSNR gained less than ``min_gain`` dB per second over the last quarter of the fit.

    ``history`` is the fit's log so far (``seconds``, ``psnr``, ``kernels`` per record).
    Measuring over a share of the time spent, not a fixed window, makes the
    rule ask the same question at every scale: would a third more time buy
    at least ``min_gain`` dB per second?
    """
    now = history[-1]["seconds"]
    if now < CONVERGENCE_MIN_SECONDS or len(history) < 4:
        return False
    then = 0.75 * now
    before = [r["psnr"] for r in history if r["seconds"] <= then]
    recent = [r["kernels"] for r in history if r["seconds"] > then]
    if not before or any(b > a for a, b in zip(recent, recent[1:])):
        return False  # a model that grew dips after each addition: the last quarter must have none
    gain = max(r["psnr"] for r in history) - max(before)
    return gain < min_gain * (now - then)


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


def _view(strategies, *params):
    for strategy in strategies:
        params = strategy.view(*params)
    return params


def _viewed(strategies, model: Model) -> Model:
    with torch.no_grad():
        return Model.unchecked(*_view(strategies, model.mu, model.chol, model.pi, model.experts))


def _snapshot(model: Model) -> Model:
    return Model.unchecked(*(t.clone() for t in (model.mu, model.chol, model.pi, model.experts)))


def _mse(model: Model, target, mode, scope, tile_offset, tile, backend) -> float:
    with torch.no_grad():
        out = rasterize(model.mu, model.chol, model.pi, model.experts, *target.shape[:2], mode=mode, scope=scope,
                        tile_offset=tile_offset, backend=backend, tile=tile)
    return float(torch.nn.functional.mse_loss(out, target))


def _loss(model: Model, mse: float, lam: float) -> float:
    return mse + lam * float(torch.clamp(model.pi, min=0).sum()) if lam > 0 else mse
