"""The fit specification: everything that decides what :func:`smoe.fit` computes.

A :class:`FitSpec` holds the kernel budget, the regression mode and scope,
the initializer (by name) and its options, the seed, the tile offset and the
optimizer settings.  :meth:`FitSpec.validate` holds every rule about them,
once; :func:`smoe.fit`, :func:`smoe.denoise`, :func:`smoe.upscale`,
``fit-batch`` and the command line build a spec and validate it, and none of
them re-checks a rule.  :meth:`FitSpec.to_dict` is what ``metrics.json`` and
the model file record, so a fit can be repeated from either with
:meth:`FitSpec.from_dict`.

Tuned defaults of a task are named presets of this class beside the task
(:data:`smoe.denoising_preset.PRESET`, :data:`smoe.superres_preset.PRESET`).
Light to import: no torch, no numba, no NumPy.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .sizes import TILE, check_tile_offset, check_tile_size
from .validate import check_choice, check_finite, check_kernel_count, is_real, is_whole

__all__ = ["FitSpec", "MODES", "SCOPES", "MODEL_INIT", "TARGET_START_DENSITY", "TARGET_CAP_DENSITY", "TRIM_SHARE",
           "STRATEGIES_OFF", "CLASSIC_RATES", "ALLOCATION_RATES", "kernel_budget"]

#: Regression functions (SPEC §1): gated mixture, or a plain sum of Gaussians.
MODES = ("smoe", "rbf")
#: Which kernels act on a pixel: those listed for its 16 x 16 tile, or all of them.
SCOPES = ("raster", "global")
#: Initializer name recorded for a fit that started from a ready :class:`smoe.Model`.
MODEL_INIT = "model"

#: Kernels per pixel a fit to a target PSNR starts from, and grows to at most, when no count is given
#: (``smoe fit --target-psnr`` without ``-n``): 983 and 49 152 kernels on a 768 x 512 image.
TARGET_START_DENSITY = 1 / 400
TARGET_CAP_DENSITY = 1 / 8
#: Share of the kernels a fit to a target removes each time it meets the target (``trim``).
TRIM_SHARE = 0.1

#: No extent bound, no growth, no convergence stop: what every fit did before the strategies, and what a
#: record written then means.  The presets tuned in that time (denoising, super-resolution) keep it.
STRATEGIES_OFF = {"max_reach": None, "grow_start": None, "min_gain": None}
#: The learning rates of that time (the default ones are about twice as fast, which the bound on kernel
#: extent makes stable).
CLASSIC_RATES = {"lr_mu": 0.01, "lr_mu_final": 1e-3, "lr_chol": 0.03, "lr_experts": 0.003}
#: The default rates from the allocation work (content start, growth, bounded extent) until the Cholesky
#: and final centre rates were raised; the video fit and the codec were measured with these and keep them.
ALLOCATION_RATES = {"lr_mu": 0.02, "lr_mu_final": 2e-3, "lr_chol": 0.03, "lr_pi": 0.001, "lr_experts": 0.01}

_LEARNING_RATES = ("lr_mu", "lr_mu_final", "lr_chol", "lr_pi", "lr_experts")


@dataclass(frozen=True)
class FitSpec:
    """What a fit computes; the defaults are the measured ones documented in the README.

    Parameters
    ----------
    n_kernels : int or None
        Kernel budget handed to the initializer (``L_init``); None lets
        initializers that choose their own count (``"adaptive"``) do so.
    mode : {"smoe", "rbf"}
    scope : {"raster", "global"}
    init : str
        Registered initializer name (:func:`smoe.initializers.available`), or
        ``"model"`` for a fit that started from a ready model.
    init_options : dict
        Extra keyword arguments of the initializer.
    seed : int
        Seeds the initializer and where grown kernels go; on CPU the fit is
        deterministic unless a stop rule in seconds (``min_gain``,
        ``time_budget``) ends it.
    tile_offset : (int, int)
        ``(oy, ox)`` shift of the tile grid, each in ``[0, tile_size)``.
    tile_size : int
        Side of the raster tiles in pixels, a power of two from 4 to 64 (the
        R paper's 16 by default; docs/design.md has the measured ablation).
    iters, lr_mu, lr_mu_final, lr_chol, lr_pi, lr_experts, lam, prune_every
        Most gradient steps; Adam learning rates (``lr_mu`` decays
        geometrically to ``lr_mu_final``); L1 weight on the gates; steps
        between removals of dead kernels.
    max_reach : float or None
        Longest major semi-axis of a kernel's 99 % ellipse, in kernel spacings
        ``sqrt(H W / n_kernels)`` (:class:`smoe.strategy.BoundExtent`; 5
        spacings are 32 px for 10 000 kernels on a Kodak image); None leaves
        kernels free.
    grow_start, grow_every
        Start with the share ``grow_start`` (in (0, 1]) of ``n_kernels`` and add
        kernels where the residual is largest every ``grow_every`` steps (at
        most ``iters / 16``) until there are ``n_kernels``
        (:class:`smoe.strategy.GrowByError`); None or 1 starts with all of them.
    trim : float or None
        With ``target_psnr``: each time the fit meets it, remove this share of
        the kernels that cost least and fit on, keeping the smallest model
        that met the target (:class:`smoe.strategy.TrimToTarget`); None stops
        at the first count that meets it.  :meth:`growing` sets
        :data:`TRIM_SHARE`.
    target_psnr, target_corr, tol, min_gain, time_budget
        Stop rules, None for off: a PSNR in dB; a neighbour
        correlation of the residual (:func:`smoe.fitting.neighbour_correlation`);
        a relative loss decrease between log points; convergence, a PSNR gain
        in dB per second of fitting, measured over the last quarter of the
        time spent, below which the fit stops; seconds of fitting.
    log_every : int
        Steps between history records (and checks of ``target_corr``, ``tol``).

    Examples
    --------
    >>> spec = FitSpec(n_kernels=500, iters=200).validate((64, 64))
    >>> spec.replace(mode="rbf").mode
    'rbf'
    >>> FitSpec.from_dict(spec.to_dict()) == spec
    True
    """

    n_kernels: int | None = 2000
    mode: str = "smoe"
    scope: str = "raster"
    init: str = "content"
    init_options: dict = field(default_factory=dict)
    seed: int = 0
    tile_offset: tuple[int, int] = (0, 0)
    tile_size: int = TILE
    iters: int = 2500
    lr_mu: float = 0.02
    lr_mu_final: float = 7e-3
    lr_chol: float = 0.05
    lr_pi: float = 0.001
    lr_experts: float = 0.01
    lam: float = 0.0
    prune_every: int = 100
    max_reach: float | None = 5.0
    grow_start: float | None = 0.25
    grow_every: int = 50
    trim: float | None = None
    target_psnr: float | None = None
    target_corr: float | None = None
    tol: float | None = None
    min_gain: float | None = 0.01
    time_budget: float | None = None
    log_every: int = 10

    def validate(self, image_shape: tuple[int, ...] | None = None) -> FitSpec:
        """Check every rule; returns the spec itself.

        Parameters
        ----------
        image_shape : tuple, optional
            ``(H, W)`` or ``(H, W, C)`` of the image about to be fitted.  With
            it the spec is checked for that fit too: the kernel budget is at
            most the pixel count and the initializer is registered (a stored
            spec read back without a shape may name one registered later).

        Raises
        ------
        ValueError
            One line naming the setting, its value and what is accepted.
        """
        check_choice("mode", self.mode, MODES)
        check_choice("scope", self.scope, SCOPES)
        if not (isinstance(self.init, str) and self.init):
            raise ValueError(f"init must be an initializer name, got {self.init!r}")
        if not (isinstance(self.init_options, dict) and all(isinstance(k, str) for k in self.init_options)):
            raise ValueError(f"init_options must be a dict with option names as keys, got {self.init_options!r}")
        _check_count("seed", self.seed, 0)
        check_tile_size(self.tile_size)
        check_tile_offset(self.tile_offset, self.tile_size)
        self._validate_optimizer()
        if self.n_kernels is not None and not (is_whole(self.n_kernels) and self.n_kernels >= 1):
            raise ValueError(f"n_kernels must be a positive whole number (or None for initializers that choose "
                             f"their own count), got {self.n_kernels!r}")
        if image_shape is not None:
            self._validate_for(tuple(image_shape))
        return self

    def _validate_optimizer(self) -> None:
        _check_count("iters", self.iters, 1)
        for name in _LEARNING_RATES:
            check_finite(name, getattr(self, name), low=0)
        check_finite("lam", self.lam, low=0)
        if self.mode != "smoe" and self.lam > 0:
            raise ValueError("L1 sparsity (lam > 0) needs the SMoE gates; use mode 'smoe' or lam 0")
        _check_count("prune_every", self.prune_every, 1)
        _check_count("log_every", self.log_every, 1)
        if self.max_reach is not None:
            check_finite("max_reach (kernel spacings)", self.max_reach, low=0, low_open=True)
        _check_count("grow_every", self.grow_every, 1)
        if self.grow_start is not None:
            check_finite("grow_start (a share of n_kernels)", self.grow_start, low=0, high=1, low_open=True)
        if self.target_psnr is not None:
            check_finite("target_psnr (dB)", self.target_psnr)
        if self.trim is not None:
            check_finite("trim (a share of the kernels)", self.trim, low=0, high=0.5, low_open=True)
            if self.target_psnr is None:
                raise ValueError("trim removes kernels while the fit keeps meeting target_psnr; set target_psnr too")
        if self.min_gain is not None:
            check_finite("min_gain (dB per second)", self.min_gain, low=0, low_open=True)
        if self.target_corr is not None:
            check_finite("target_corr (a correlation)", self.target_corr, low=-1, high=1)
        if self.tol is not None:
            check_finite("tol", self.tol, low=0)
        if self.time_budget is not None:
            check_finite("time_budget (seconds)", self.time_budget, low=0, low_open=True)

    def _validate_for(self, shape: tuple[int, ...]) -> None:
        if self.init == MODEL_INIT:
            return  # the ready model sets the kernels; there is no initializer to run
        from .initializers import available  # late: the registry loads NumPy, which a spec does not need

        if self.init not in available():
            raise ValueError(f"unknown initializer {self.init!r}; choose one of {', '.join(available())}")
        if self.n_kernels is not None:
            check_kernel_count(self.n_kernels, int(shape[0]) * int(shape[1]))

    def growing(self, frame: tuple[int, int], cap: int | None = None) -> FitSpec:
        """A copy that starts small and grows to ``cap`` kernels where the error is: a fit to a target PSNR.

        It starts from :data:`TARGET_START_DENSITY` kernels per pixel of the
        ``(height, width)`` frame and may grow to ``cap`` (default
        :data:`TARGET_CAP_DENSITY` per pixel); with ``target_psnr`` set, it
        grows until it meets the target, then trims (``trim`` =
        :data:`TRIM_SHARE`) and returns the smallest model that met it.
        ``smoe fit --target-psnr`` runs this spec.

        Examples
        --------
        >>> spec = FitSpec(target_psnr=35).growing((512, 768))
        >>> spec.n_kernels, round(spec.grow_start * spec.n_kernels)
        (49152, 983)
        """
        height, width = (int(v) for v in frame[:2])
        cap = kernel_budget(height, width, TARGET_CAP_DENSITY) if cap is None else cap
        start = min(cap, kernel_budget(height, width, TARGET_START_DENSITY))
        return self.replace(n_kernels=cap, grow_start=start / cap, trim=TRIM_SHARE)

    def replace(self, **changes) -> FitSpec:
        """A copy with some fields changed (unknown names raise ``ValueError``), not validated."""
        _check_keys(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Every field as JSON-safe values (lists for tuples, plain numbers for NumPy scalars)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if f.name == "tile_offset" else _plain(f.name, value)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> FitSpec:
        """The spec a :meth:`to_dict` record describes; missing fields take their defaults.

        A record from before the strategy fields has none of ``max_reach``,
        ``grow_start`` and ``min_gain``; they read as None (off), which is what
        that fit did.

        Raises
        ------
        ValueError
            A key that is not a field, or a value the rules refuse.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a fit spec must be a JSON object, got {type(data).__name__}")
        _check_keys(data)
        values = {**STRATEGIES_OFF, **data}
        if isinstance(values.get("tile_offset"), list):
            values["tile_offset"] = tuple(values["tile_offset"])
        if values.get("init_options") is None:
            values["init_options"] = {}
        return cls(**values).validate()


def kernel_budget(height: int, width: int, density: float) -> int:
    """``density`` kernels per pixel of a ``height x width`` image, rounded, from 1 to the pixel count.

    Examples
    --------
    >>> kernel_budget(256, 384, 1 / 24)
    4096
    """
    return max(1, min(height * width, round(density * height * width)))


_FIELDS = tuple(f.name for f in dataclasses.fields(FitSpec))


def _check_keys(data) -> None:
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown fit setting(s) {', '.join(map(repr, unknown))}; a fit spec has "
                         f"{', '.join(_FIELDS)}")


def _check_count(name: str, value, low: int) -> None:
    if not (is_whole(value) and value >= low):
        raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")


def _plain(name: str, value):
    """``value`` as JSON-safe Python values; a value JSON cannot hold raises ValueError."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if is_whole(value):
        return int(value)
    if is_real(value):
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{name} is {value}, which JSON cannot hold")
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(name, v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(f"{name}.{k}", v) for k, v in value.items()}
    raise ValueError(f"{name} holds a {type(value).__name__}, which a stored fit spec cannot hold; "
                     "give JSON values (numbers, strings, lists)")
