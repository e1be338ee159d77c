"""Corona bounding blocks (CBB) of a segmentation and their resampling to ``block x block`` pixels.

Boxes.  Side ``S = max(bbox height, bbox width) + 2 * corona`` in whole
pixels, centred on the segment's bounding box (rounded down to a whole
pixel).  Where the box fits inside the image it is shifted inside, so it
holds real pixels only (it still contains the segment, whose box is not
larger); on an axis shorter than ``S`` it stays centred and the missing
pixels replicate the nearest edge pixel.  Either way the box is an exact
square of integer origin ``o`` and the local -> image map is
``x = o + s * u`` with ``s = S / block``.

Large segments are tiled (``max_side``, default 96 px).  The paper uses one
CBB per segment, so a background segment of 500 px is shrunk 16x and a
32 x 32 fit of it says little about the full-size image; such segments also
received almost no kernels (on kodim23 the largest segment, a quarter of the
image, kept 14).  A segment whose box would exceed ``max_side`` is covered by
a grid of equal square cells of at most ``max_side - 2 * corona`` px, and
each cell holding segment pixels becomes a CBB (cell plus corona) that owns
exactly those pixels.  ``max_side=None`` restores one CBB per segment.

Resampling.  Block pixel (i, j) stands for the image square
``o + s * [j, j + 1) x [i, i + 1)``.  Shrinking (``s > 1``) averages the image
over that square with fractional pixel overlaps (area averaging, an
anti-aliasing box filter); enlarging (``s < 1``) samples bilinearly at the
square's centre.  Both are separable ``(block, n)`` weight matrices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def dense_labels(labels, shape) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the positive labels of a label map to 1..N.

    Parameters
    ----------
    labels : (H, W) integer array
        Segment labels; values <= 0 mark pixels of no segment.
    shape : (int, int)
        Expected (H, W).

    Returns
    -------
    dense : (H, W) int32 array, 0 where ``labels <= 0``
    ids : (N,) the original label of each dense label 1..N
    """
    lab = np.asarray(labels)
    if lab.shape != tuple(shape) or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be an integer array of shape {tuple(shape)}, "
                         f"got dtype {lab.dtype} and shape {lab.shape}")
    ids, inverse = np.unique(lab, return_inverse=True)
    inverse = inverse.reshape(lab.shape)
    pos = ids > 0
    if not pos.any():
        raise ValueError("labels contain no segment (no value > 0)")
    first = int(np.argmax(pos))
    dense = np.where(inverse >= first, inverse - first + 1, 0).astype(np.int32)
    return dense, ids[first:]


def _place(lo: int, hi: int, side: int, n: int) -> int:
    """Start of a box of ``side`` pixels centred on ``[lo, hi)``, moved inside ``[0, n)`` if it fits."""
    start = (lo + hi - side) // 2
    if side <= n:
        start = min(max(start, 0), n - side)
    return start


@dataclass
class Blocks:
    """The corona bounding blocks of a segmentation.

    origins : (B, 2) int64
        ``(x0, y0)`` of each box's top-left corner in pixel-edge coordinates;
        negative where the image is smaller than the box.
    sides : (B,) int64
        Box side in pixels.
    segment : (B,) int64
        The dense label (1..N) of the segment each block belongs to.
    owner : (H, W) int32
        The block each segment pixel is fitted and exported by (-1: no segment).
        One block per segment, or, for segments tiled by ``max_side``, the block
        whose core cell holds the pixel.
    """

    origins: np.ndarray
    sides: np.ndarray
    segment: np.ndarray
    owner: np.ndarray

    def __len__(self) -> int:
        return len(self.sides)


def corona_blocks(labels: np.ndarray, corona: int = 5, max_side: int | None = None) -> Blocks:
    """Square corona bounding blocks of the segments 1..N of a dense label map.

    Parameters
    ----------
    labels : (H, W) int array
        Labels 1..N (0 = no segment), e.g. from :func:`dense_labels`.
    corona : int
        Margin added on every side of the segment's square box (px).
    max_side : int, optional
        Largest box side (px, corona included).  A segment whose box would be
        larger is covered by a grid of equal square core cells of side at most
        ``max_side - 2 * corona``, centred on its bounding box; every cell that
        holds pixels of the segment becomes a block of its own.  None: one box
        per segment, however large (the AS paper).

    Returns
    -------
    Blocks
    """
    h, w = labels.shape
    if max_side is not None and max_side - 2 * corona < 1:
        raise ValueError(f"max_side ({max_side}) must exceed twice the corona ({corona})")
    origins, sides, segment = [], [], []
    owner = np.full((h, w), -1, np.int32)
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            raise ValueError(f"label {k} is empty; renumber the labels with dense_labels first")
        rows, cols = box
        bh, bw = rows.stop - rows.start, cols.stop - cols.start
        extent = max(bh, bw)
        core = extent if max_side is None else max_side - 2 * corona
        mine = labels[rows, cols] == k
        if extent <= core:
            owner[rows, cols][mine] = len(sides)
            side = extent + 2 * corona
            origins.append((_place(cols.start, cols.stop, side, w), _place(rows.start, rows.stop, side, h)))
            sides.append(side)
            segment.append(k)
            continue
        m = -(-extent // core)
        cell = -(-extent // m)
        x0 = cols.start + (bw - m * cell) // 2
        y0 = rows.start + (bh - m * cell) // 2
        ys, xs = np.nonzero(mine)
        cy = (ys + rows.start - y0) // cell
        cx = (xs + cols.start - x0) // cell
        cells, cell_of = np.unique(cy * m + cx, return_inverse=True)
        owner[ys + rows.start, xs + cols.start] = len(sides) + cell_of
        side = cell + 2 * corona
        for c in cells.tolist():
            # The core clipped to the image, and the box centred on it.
            cx0, cy0 = x0 + (c % m) * cell, y0 + (c // m) * cell
            lx, hx = max(cx0, 0), min(cx0 + cell, w)
            ly, hy = max(cy0, 0), min(cy0 + cell, h)
            origins.append((_place(lx, hx, side, w), _place(ly, hy, side, h)))
            sides.append(side)
            segment.append(k)
    return Blocks(np.array(origins, np.int64).reshape(-1, 2), np.array(sides, np.int64),
                  np.array(segment, np.int64), owner)


def resample_weights(start: int, side: int, n: int, size: int) -> tuple[np.ndarray, int, int]:
    """Separable resampling weights of the box ``[start, start + side)`` on an axis of ``n`` pixels.

    Output sample i stands for the image interval ``start + s * [i, i + 1)``
    with ``s = side / size``.  For ``s >= 1`` it is the exact area average of
    the image over that interval; for ``s < 1`` the linear interpolation at
    its centre.  Pixels beyond the image edge repeat the edge pixel.

    Parameters
    ----------
    start : int
        First pixel of the box (negative where it starts before the image).
    side : int
        Box side in pixels.
    n : int
        Image pixels on this axis.
    size : int
        Output samples.

    Returns
    -------
    weights : (size, c1 - c0) float64, rows summing to 1
    c0, c1 : int
        The image pixel range ``[c0, c1)`` the weights apply to.
    """
    s = side / size
    full = np.zeros((size, n))
    rows = np.arange(size)
    if s >= 1:
        edges = start + s * np.arange(size + 1)
        pix = np.arange(start, start + side)
        lo = np.maximum(edges[:-1, None], pix[None, :])
        hi = np.minimum(edges[1:, None], pix[None, :] + 1)
        wgt = np.clip(hi - lo, 0.0, None) / s
        idx = np.broadcast_to(np.clip(pix, 0, n - 1), wgt.shape)
        np.add.at(full, (np.broadcast_to(rows[:, None], wgt.shape), idx), wgt)
    else:
        x = start + s * (rows + 0.5) - 0.5  # continuous pixel index of each sample centre
        k0 = np.floor(x)
        f = x - k0
        k0 = k0.astype(np.int64)
        np.add.at(full, (rows, np.clip(k0, 0, n - 1)), 1.0 - f)
        np.add.at(full, (rows, np.clip(k0 + 1, 0, n - 1)), f)
    used = np.nonzero(full.any(axis=0))[0]
    c0, c1 = int(used[0]), int(used[-1]) + 1
    return full[:, c0:c1], c0, c1


def extract_blocks(image: np.ndarray, blocks: Blocks, block: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Resample every box of an image to ``block x block`` pixels.

    Parameters
    ----------
    image : (H, W, C) float array
    blocks : Blocks
    block : int

    Returns
    -------
    pixels : (B, block, block, C) float32
    masks : (B, block, block) float32
        The fraction of each block pixel covered by the pixels the block owns.
    """
    h, w, c = image.shape
    out = np.empty((len(blocks), block, block, c), np.float32)
    masks = np.empty((len(blocks), block, block), np.float32)
    for b, ((x0, y0), side) in enumerate(zip(blocks.origins.tolist(), blocks.sides.tolist())):
        wy, r0, r1 = resample_weights(y0, side, h, block)
        wx, c0, c1 = resample_weights(x0, side, w, block)
        tmp = np.tensordot(wy, image[r0:r1, c0:c1].astype(np.float64), axes=(1, 0))  # (block, cw, C)
        out[b] = np.einsum("jk,ikc->ijc", wx, tmp)
        masks[b] = wy @ (blocks.owner[r0:r1, c0:c1] == b).astype(np.float64) @ wx.T
    return out, masks
