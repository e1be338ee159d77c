"""Label maps from a segmentation (such as :func:`smoe.segment.mdbscan`): their
statistics, boundaries and drawing over the image."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["segment_stats", "boundaries", "draw_segmentation"]


def _check_labels(labels) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 2 or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be a 2-D integer array (as returned by mdbscan), "
                         f"got dtype {lab.dtype} and shape {lab.shape}")
    return lab


def segment_stats(labels) -> dict:
    """Summary statistics of a label map.

    Parameters
    ----------
    labels : (H, W) int array
        Labels 1..N (0 and negative values are ignored).

    Returns
    -------
    dict
        ``count`` (number of segments), ``median_width``, ``mean_width``,
        ``median_height``, ``mean_height``, ``median_side``, ``mean_side``
        (bounding-box side in pixels; ``side = max(width, height)``, the
        square box AS-SMoE crops), ``median_area`` and ``mean_area`` (pixels).
    """
    lab = _check_labels(labels)
    boxes = [b for b in ndimage.find_objects(np.where(lab > 0, lab, 0)) if b is not None]
    if not boxes:
        nan = float("nan")
        return dict(count=0, median_width=nan, mean_width=nan, median_height=nan, mean_height=nan,
                    median_side=nan, mean_side=nan, median_area=nan, mean_area=nan)
    height = np.array([b[0].stop - b[0].start for b in boxes], float)
    width = np.array([b[1].stop - b[1].start for b in boxes], float)
    side = np.maximum(height, width)
    area = np.bincount(lab[lab > 0].ravel())
    area = area[area > 0].astype(float)
    return dict(count=len(boxes),
                median_width=float(np.median(width)), mean_width=float(width.mean()),
                median_height=float(np.median(height)), mean_height=float(height.mean()),
                median_side=float(np.median(side)), mean_side=float(side.mean()),
                median_area=float(np.median(area)), mean_area=float(area.mean()))


def boundaries(labels, *, thick: bool = False) -> np.ndarray:
    """Boolean mask of segment boundaries.

    Parameters
    ----------
    labels : (H, W) int array
    thick : bool
        False marks one pixel per boundary edge (the upper or left pixel of each
        pair of 4-neighbours with different labels), giving 1-px lines; True
        marks both pixels of every such pair (2-px lines).

    Returns
    -------
    (H, W) bool array
    """
    lab = _check_labels(labels)
    mask = np.zeros(lab.shape, bool)
    dx = lab[:, 1:] != lab[:, :-1]
    dy = lab[1:, :] != lab[:-1, :]
    mask[:, :-1] |= dx
    mask[:-1, :] |= dy
    if thick:
        mask[:, 1:] |= dx
        mask[1:, :] |= dy
    return mask


def draw_segmentation(image, labels, *, colour=(1.0, 0.0, 0.0), thick: bool = False) -> np.ndarray:
    """Image with the segment boundaries painted over it.

    Parameters
    ----------
    image : (H, W) or (H, W, 3) float array in [0, 1]
    labels : (H, W) int array
    colour : 3 floats in [0, 1]
        Boundary colour (default red).
    thick : bool
        Passed to :func:`boundaries`.

    Returns
    -------
    (H, W, 3) float64 array in [0, 1]
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W) or (H, W, 3), got {np.shape(image)}")
    lab = _check_labels(labels)
    if lab.shape != img.shape[:2]:
        raise ValueError(f"labels shape {lab.shape} does not match image shape {img.shape[:2]}; "
                         f"segment this image to get matching labels")
    rgb = np.asarray(colour, dtype=np.float64)
    if rgb.shape != (3,):
        raise ValueError(f"colour must be 3 values in [0, 1], got {colour!r}")
    out = np.clip(img, 0.0, 1.0)
    out[boundaries(lab, thick=thick)] = rgb
    return out
