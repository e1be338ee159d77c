"""AS-SMoE: adaptive segmentation-based initialization (SPEC §3; AS paper, Section IV).

The image is segmented with MDBSCAN; every segment gets a square *corona
bounding block* (CBB) that is resampled to ``block x block`` pixels; a small
SMoE model is fitted to every CBB by gradient descent, doubling its kernels
until it reaches a target PSNR (AS Algorithm 1); the kernels whose centres lie
inside their segment are carried back to the image and together form the
initial model.  The kernel count is an outcome of the target PSNR, not an
input (``n_kernels`` only caps it).

The steps live in submodules, each with the decisions taken where the papers
are silent or where measurement overruled them:

* :mod:`.blocks`: the CBBs (box placement, tiling of large segments) and
  their resampling;
* :mod:`.mosaic`: rendering all blocks at once, independently of batching;
* :mod:`.local_fit`: Algorithm 1, batched, and its spread over workers;
* :mod:`.export`: turning the local models into image kernels.

This module runs them in turn (:func:`adaptive_init_with_report`) and
is the initializer the registry names ``"adaptive"``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from ...executor import Executor
from ...model import Model
from ...segment import mdbscan
from ...tiles import TILE
from ...validate import check_choice, check_finite, check_kernel_count
from .blocks import Blocks, corona_blocks, dense_labels, extract_blocks, resample_weights
from .export import EXPORTS, export_kernels, inside_kernels, map_to_image
from .local_fit import LocalFitSettings, check_int, fit_block_chunk, fit_blocks
from .mosaic import Mosaic, render_blocks

__all__ = [
    "EXPORTS", "AdaptiveReport", "Blocks", "LocalFitSettings", "Mosaic", "adaptive_init",
    "adaptive_init_with_report", "corona_blocks", "dense_labels", "export_kernels", "extract_blocks",
    "fit_block_chunk", "fit_blocks", "inside_kernels", "map_to_image", "render_blocks", "resample_weights",
]


@dataclass
class AdaptiveReport:
    """What one AS-SMoE initialization did.

    segments : number of segments
    blocks : number of CBBs (more than segments where large segments are tiled)
    blocks_reached_target : blocks whose local PSNR reached the target
    kernels_local : kernels of all blocks' best local models (pi > 0)
    kernels_inside : of those, the ones whose centre lies on a pixel their block owns
    kernels_exported : kernels after the export (moments mode drops kernels that
        gate almost nothing and adds one for a block left empty)
    kernels_final : kernels in the returned model (after the ``n_kernels`` cap)
    fallback_kernels : blocks that got a single Gaussian of their pixels
    iterations : iterations the batched local fit ran (the slowest block's)
    mean_block_iterations : iterations per block, averaged
    mean_block_psnr : best local PSNR per block (block pixels), averaged
    seconds_segmentation : MDBSCAN plus cutting and resampling the CBBs
    seconds_local_fit, seconds_export, seconds_total
    block_psnr, block_kernels, block_iterations : (blocks,) per-block arrays:
        best local PSNR, kernels of the best local model, iterations run
    settings : the settings used
    """

    segments: int
    blocks: int
    blocks_reached_target: int
    kernels_local: int
    kernels_inside: int
    kernels_exported: int
    kernels_final: int
    fallback_kernels: int
    iterations: int
    mean_block_iterations: float
    mean_block_psnr: float
    seconds_segmentation: float
    seconds_local_fit: float
    seconds_export: float
    seconds_total: float
    block_psnr: np.ndarray = field(repr=False)
    block_kernels: np.ndarray = field(repr=False)
    block_iterations: np.ndarray = field(repr=False)
    settings: dict = field(default_factory=dict, repr=False)

    def summary(self) -> dict:
        """The scalar fields as a plain dict."""
        skip = {"block_psnr", "block_kernels", "block_iterations", "settings"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


def _check_image(image) -> np.ndarray:
    """The image as a float32 (H, W, C) array, C = 1 or 3, or a ValueError."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"image must have shape (H, W), (H, W, 1) or (H, W, 3), got {np.shape(image)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"image must be a float array in [0, 1], got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError("image contains NaN or infinite values")
    return arr.astype(np.float32, copy=False)


def _check_boxes(corona, block, max_side) -> tuple[int, int, int | None]:
    """The CBB options as ints, or a ValueError."""
    corona = check_int("corona", corona, 0)
    block = check_int("block", block, TILE)
    if block % TILE:
        raise ValueError(f"block must be a multiple of {TILE}, got {block}")
    if max_side is not None:
        max_side = check_int("max_side", max_side, 2 * corona + 1)
    return corona, block, max_side


def _local_settings(options: dict) -> LocalFitSettings:
    """Checked :class:`LocalFitSettings` from the initializer's remaining options."""
    unknown = set(options) - {f.name for f in fields(LocalFitSettings)}
    if unknown:
        raise ValueError(f"unknown option(s) for the adaptive initializer: {', '.join(sorted(unknown))}")
    return LocalFitSettings(**options).validate()


def adaptive_init_with_report(image, n_kernels: int | None = None, *, rng: np.random.Generator | None = None,
                              seed: int = 0, threshold: float = 40.0, labels=None, corona: int = 5,
                              block: int = 32, max_side: int | None = 96, workers: int = 1,
                              executor: Executor | None = None, export: str = "moments",
                              bandwidth_factor: float = 1.0, **local_options) -> tuple[Model, AdaptiveReport]:
    """AS-SMoE initialization, with a report of what it did.

    Parameters
    ----------
    image : (H, W) or (H, W, C) float array in [0, 1], C = 1 or 3
    n_kernels : int, optional
        Cap on the kernel count; None keeps every exported kernel (the count then
        follows from ``target_psnr``).  Over the cap, the kernels gating the
        fewest pixels are dropped (see ``budget`` in :func:`export_kernels`).
    rng : numpy.random.Generator, optional
        Source of the base seed; without it ``seed`` is the base seed.  Each
        block's randomness is seeded from (base seed, block index).
    seed : int
    threshold : float
        MDBSCAN join threshold d_Th (RGB distance, 0-255 scale).
    labels : (H, W) int array, optional
        A ready segmentation (values <= 0: no segment); skips MDBSCAN.
    corona : int
        Margin (px) around each segment's square box.
    block : int
        Side of the resampled CBBs (a multiple of 16).
    max_side : int or None
        Largest CBB side in image pixels; larger segments are tiled (see
        :func:`corona_blocks`).  None: one CBB per segment (the AS paper).
    workers : int
        Local fits at the same time (:func:`fit_blocks`): 1 fits in this
        process, multi-threaded; more start that many single-threaded workers
        (:func:`smoe.executor.make_executor`).  The result does not depend on it.
    executor : smoe.executor.Executor, optional
        Run the local fits on this executor (in-process, local processes or a
        Dask cluster) instead of one made for ``workers``; the blocks are
        split into one chunk per executor worker.  It is not closed, so one
        executor can serve many initializations.  The result is the same as
        with ``workers=1``.
    export : {"moments", "exact"}
        How local kernels become image kernels (:func:`export_kernels`).
    bandwidth_factor : float
        Multiplies the extent of every exported kernel.
    **local_options
        Fields of :class:`LocalFitSettings`: ``kernels``, ``target_psnr``,
        ``max_iters``, ``double_every``, ``max_kernels``, ``lam``, learning rates,
        ``jitter``, ``outside_weight``, ``init_in_segment``.

    Returns
    -------
    (Model, AdaptiveReport)
    """
    t_start = time.perf_counter()
    img = _check_image(image)
    h, w, _ = img.shape
    if n_kernels is not None:
        n_kernels = check_kernel_count(n_kernels, h * w)
    corona, block, max_side = _check_boxes(corona, block, max_side)
    workers = check_int("workers", workers, 1)
    if executor is not None and not isinstance(executor, Executor):
        raise ValueError(f"executor must be a smoe.executor.Executor, got {type(executor).__name__}")
    check_choice("export", export, EXPORTS)
    check_finite("bandwidth_factor", bandwidth_factor, low=0, low_open=True)
    cfg = _local_settings(local_options)
    base_seed = int(rng.integers(0, 2 ** 63)) if rng is not None else check_int("seed", seed, 0)

    t0 = time.perf_counter()
    segmented = labels is None
    if segmented:
        labels = mdbscan(img, threshold)
    dense, _ = dense_labels(labels, (h, w))
    boxes = corona_blocks(dense, corona, max_side)
    pixels, masks = extract_blocks(img, boxes, block)
    t1 = time.perf_counter()
    local = fit_blocks(pixels, masks, base_seed, cfg, workers, executor=executor)
    t2 = time.perf_counter()
    kept = export_kernels(local, boxes, img, block, mode=export, bandwidth_factor=bandwidth_factor,
                          budget=n_kernels)
    model = Model(*(kept[k].astype(np.float32) for k in ("mu", "chol", "pi", "experts")))
    t3 = time.perf_counter()

    settings = {"threshold": threshold if segmented else None, "corona": corona, "block": block,
                "max_side": max_side, "workers": workers,
                "executor": None if executor is None else executor.describe(), "export": export,
                "bandwidth_factor": bandwidth_factor, "n_kernels": n_kernels, "base_seed": base_seed,
                **asdict(cfg)}
    return model, _report(dense, local, kept, len(model), (t_start, t0, t1, t2, t3), settings)


def _report(dense: np.ndarray, local: dict, kept: dict, n_final: int, times: tuple, settings: dict) -> AdaptiveReport:
    """The report of one run.

    ``local`` and ``kept`` are the :func:`fit_blocks` and :func:`export_kernels`
    results; ``times`` holds the ``perf_counter`` readings at the start, before
    the segmentation, the local fits and the export, and at the end.
    """
    t_start, t0, t1, t2, t3 = times
    B = len(local["psnr"])
    return AdaptiveReport(
        segments=int(dense.max()),
        blocks=B,
        blocks_reached_target=int(local["reached"].sum()),
        kernels_local=len(local["pi"]),
        kernels_inside=int(kept["inside"].sum()),
        kernels_exported=int(kept["uncapped"]),
        kernels_final=n_final,
        fallback_kernels=int(kept["fallback"]),
        iterations=int(local["loop_iterations"].max()),
        mean_block_iterations=float(local["iterations"].mean()) if B else 0.0,
        mean_block_psnr=float(np.mean(np.minimum(local["psnr"], 100.0))) if B else float("nan"),
        seconds_segmentation=t1 - t0,
        seconds_local_fit=t2 - t1,
        seconds_export=t3 - t2,
        seconds_total=t3 - t_start,
        block_psnr=local["psnr"],
        block_kernels=np.bincount(local["owner"], minlength=B),
        block_iterations=local["iterations"],
        settings=settings,
    )


def adaptive_init(image: np.ndarray, n_kernels: int | None, *, rng: np.random.Generator, **options) -> Model:
    """AS-SMoE initialization (AS paper, Section IV); see :func:`adaptive_init_with_report`.

    ``n_kernels`` is an optional cap: the kernel count follows from ``target_psnr``.
    ``workers`` or ``executor`` set where the local fits run, without changing the result.
    """
    model, _ = adaptive_init_with_report(image, n_kernels, rng=rng, **options)
    return model
