"""Parameter export: the local block models become kernels of the image.

With ``export="moments"`` (the default) a kernel is kept if the image pixel
under its mapped centre (``o + s mu_local``) is one its block owns; the
others ("supporting" kernels, AS Section IV-B) are dropped.  The exact
geometric map (``B = B_local / s``, ``export="exact"``) reproduces each local
model perfectly, but without its supporting kernels a kernel's gate is no
longer bounded at the segment edge, and in the assembled model kernels reach
far into other segments: on kodim23 45 % of the pixels were ruled (gate
share > 90 %) by kernels of other segments, and the initial PSNR was
15.9 dB against 19.8 dB for a grid of as many kernels.  So the kept kernels
of a block instead share the block's own pixels at full resolution through
their local SMoE gates, and each kernel becomes the Gaussian of the pixels it
gates: gate-weighted centroid and covariance (plus 1/12 px^2, a pixel's own
extent), the gate-weighted mean colour as expert, and
``pi = mass / sqrt(det Sigma)``, which makes the model behave like a Gaussian
mixture classifier of the regions, so large and small regions from different
blocks compete fairly.  Kernels gating less than a pixel are dropped; a block
left without kernels gets one Gaussian of all its pixels.  The positions,
shapes and number of regions still come from the local fits.
``bandwidth_factor`` multiplies every exported kernel's extent.  With a
kernel budget (``n_kernels``) every block keeps its largest kernel, the
budget is filled with the next largest (by pixels gated), and the export is
repeated with only those, so the survivors take over the dropped kernels'
pixels (on kodim05 in RGB, with a cap of 40 kernels per block, a budget of
1 000, a quarter of the natural 3 958, cost 0.5 dB); a budget below the
number of blocks just cuts the smallest.
"""

from __future__ import annotations

import numpy as np

from ...validate import check_choice
from .blocks import Blocks

#: Export modes of :func:`export_kernels`.
EXPORTS = ("moments", "exact")


def map_to_image(local: dict, blocks: Blocks, block: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact local -> image map of the kernels: ``mu = o + s mu_local``, ``B = B_local / s``.

    Parameters
    ----------
    local : dict
        ``mu`` (N, 2) local centres, ``chol`` (N, 3) and ``owner`` (N,) block
        of each kernel, as from :func:`~smoe.initializers.adaptive.local_fit.fit_blocks`.
    blocks : Blocks
    block : int
        Side of the resampled blocks.

    Returns
    -------
    mu : (N, 2) float64, chol : (N, 3) float64
    """
    owner = local["owner"]
    s = blocks.sides[owner] / block
    mu = blocks.origins[owner] + local["mu"].astype(np.float64) * s[:, None]
    return mu, local["chol"].astype(np.float64) / s[:, None]


def inside_kernels(mu: np.ndarray, owner: np.ndarray, blocks: Blocks) -> np.ndarray:
    """(N,) bool: the pixel under each mapped centre is one its block owns (in its segment and core cell)."""
    h, w = blocks.owner.shape
    px = np.floor(mu).astype(np.int64)
    ok = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
    ok[ok] = blocks.owner[px[ok, 1], px[ok, 0]] == owner[ok]
    return ok


def _gate_stats(xy, col, mu, chol, logpi, chunk=16384):
    """Gate-weighted moments of pixels under an SMoE of some kernels.

    xy : (P, 2) pixel centres (any origin), col : (P, C) colours,
    mu : (K, 2), chol : (K, 3), logpi : (K,).

    Returns mass (K,), first moments (K, 2), second moments (K, 2, 2), colour sums (K, C).
    """
    K, C = len(mu), col.shape[1]
    mass, m1 = np.zeros(K), np.zeros((K, 2))
    m2, mc = np.zeros((K, 2, 2)), np.zeros((K, C))
    for lo in range(0, len(xy), chunk):
        p, c = xy[lo:lo + chunk], col[lo:lo + chunk]
        d = p[:, None, :] - mu[None]
        u = chol[None, :, 0] * d[..., 0]
        v = chol[None, :, 1] * d[..., 0] + chol[None, :, 2] * d[..., 1]
        z = logpi[None] - 0.5 * (u * u + v * v)
        z -= z.max(axis=1, keepdims=True)
        r = np.exp(z)
        r /= r.sum(axis=1, keepdims=True)
        mass += r.sum(0)
        m1 += r.T @ p
        m2 += np.einsum("pk,pa,pb->kab", r, p, p)
        mc += r.T @ c
    return mass, m1, m2, mc


def export_kernels(local: dict, blocks: Blocks, image: np.ndarray, block: int, *, mode: str = "moments",
                   bandwidth_factor: float = 1.0, min_mass: float = 1.0, budget: int | None = None) -> dict:
    """Turn the local models into image-domain kernels.

    Only kernels whose mapped centre lies on a pixel their block owns are used
    (the "supporting" kernels outside the segment are dropped).

    ``mode="exact"`` maps them geometrically (``mu = o + s mu_local``,
    ``B = B_local / s``) and keeps their experts; gates are rescaled to a
    mean of 1 per block.

    ``mode="moments"`` first maps them the same way, then lets the kept
    kernels of a block share its pixels at full resolution by their SMoE gates
    (supporting kernels no longer take part), and replaces each kernel by the
    Gaussian of the pixels it gates: gate-weighted centroid and covariance
    (plus 1/12 px^2 per axis for the pixel's own extent), the gate-weighted mean
    colour as expert, and ``pi = mass / sqrt(det Sigma)``, a density weight,
    so that regions of every size and block compete fairly in the global
    model; gates have mean 1 over the image.  Kernels gating less than
    ``min_mass`` pixels are dropped; a block left without kernels gets one
    Gaussian of all its pixels.

    Parameters
    ----------
    local : dict
        ``mu``, ``chol``, ``pi``, ``experts``, ``owner`` from
        :func:`~smoe.initializers.adaptive.local_fit.fit_blocks`.
    blocks : Blocks
    image : (H, W, C) float array
    block : int
    mode : {"moments", "exact"}
    bandwidth_factor : float
        Every exported kernel's extent is multiplied by this (``B /= factor``).
    min_mass : float
        Pixels (moments mode).
    budget : int, optional
        Most kernels to export.  Moments mode keeps the largest (by gated
        pixels) kernel of every block, fills the budget with the next largest
        ones and exports again with only those, so the survivors grow over the
        pixels of the dropped ones; if the budget is below the number of
        blocks, and in exact mode, the kernels gating the fewest pixels are cut.

    Returns
    -------
    dict with ``mu`` (M, 2), ``chol`` (M, 3), ``pi`` (M,), ``experts`` (M, C) (float64),
    ``owner`` (M,) block, ``mass`` (M,) pixels each kernel gates (estimated in
    exact mode), ``source`` (M,) the local kernel each came from (-1: a block's
    fallback), ``fallback`` (number of blocks that got the fallback kernel),
    ``uncapped`` (M before the budget) and ``inside`` (N,) bool over the local
    kernels.
    """
    check_choice("export", mode, EXPORTS)
    mu, chol = map_to_image(local, blocks, block)
    owner = local["owner"]
    inside = inside_kernels(mu, owner, blocks)
    if mode == "exact":
        out = _export_exact(local, blocks, mu, chol, inside)
    else:
        out = _export_moments(local, blocks, image, mu, chol, inside, min_mass)
    uncapped = len(out["pi"])
    if budget is not None and uncapped > budget:
        blocks_used = np.unique(out["owner"])
        if mode == "moments" and budget >= len(blocks_used):
            use = np.zeros(len(inside), bool)
            chosen = _choose(out["owner"], out["mass"], budget)
            use[out["source"][chosen][out["source"][chosen] >= 0]] = True
            out = _export_moments(local, blocks, image, mu, chol, inside & use, min_mass)
        if len(out["pi"]) > budget:
            keep = np.sort(np.argsort(-out["mass"], kind="stable")[:budget])
            out = {k: (v[keep] if isinstance(v, np.ndarray) else v) for k, v in out.items()}
    out["chol"] = out["chol"] / bandwidth_factor
    out["inside"] = inside
    out["uncapped"] = uncapped
    return out


def _choose(owner: np.ndarray, mass: np.ndarray, budget: int) -> np.ndarray:
    """Indices of ``budget`` kernels: the largest of every block, then the largest of the rest."""
    order = np.lexsort((-mass, owner))  # by block, largest first within a block
    first = np.ones(len(order), bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    must = order[first]
    rest = order[~first]
    rest = rest[np.argsort(-mass[rest], kind="stable")][: max(0, budget - len(must))]
    return np.sort(np.concatenate([must, rest]))


def _export_exact(local, blocks, mu, chol, inside):
    owner, pi, nb = local["owner"], local["pi"].astype(np.float64), len(blocks)
    # Pixels each kernel governs, estimated from gate weight x kernel area within its block.
    weight = pi / (local["chol"][:, 0].astype(np.float64) * local["chol"][:, 2])
    pixels = np.bincount(blocks.owner[blocks.owner >= 0], minlength=nb).astype(np.float64)
    sel = owner[inside]
    share = weight[inside] / np.maximum(np.bincount(sel, weight[inside], minlength=nb)[sel], 1e-300)
    cnt = np.bincount(sel, minlength=nb)
    tot = np.bincount(sel, pi[inside], minlength=nb)
    scale = np.where(cnt > 0, cnt / np.where(tot > 0, tot, 1.0), 1.0)
    return {"mu": mu[inside], "chol": chol[inside], "pi": pi[inside] * scale[sel],
            "experts": local["experts"][inside].astype(np.float64), "owner": sel,
            "mass": share * pixels[sel], "fallback": 0, "source": np.nonzero(inside)[0]}


def _export_moments(local, blocks, image, mu, chol, inside, min_mass):
    h, w, C = image.shape
    nb = len(blocks)
    flat_owner = blocks.owner.ravel()
    order = np.argsort(flat_owner, kind="stable")
    counts = np.bincount(flat_owner + 1, minlength=nb + 1)
    starts = np.cumsum(counts) - counts
    colours = image.reshape(-1, C).astype(np.float64)
    own = local["owner"][inside]
    k_src = np.nonzero(inside)[0]
    k_mu, k_chol = mu[inside], chol[inside]
    k_logpi = np.log(local["pi"][inside].astype(np.float64))
    kst = np.searchsorted(own, np.arange(nb), "left")
    ken = np.searchsorted(own, np.arange(nb), "right")
    parts, fallback = [], 0
    for b in range(nb):
        pix = order[starts[b + 1]:starts[b + 1] + counts[b + 1]]
        if len(pix) == 0:
            continue
        # Coordinates relative to the block's first pixel keep the moments well conditioned.
        ref = np.array([pix[0] % w, pix[0] // w], np.float64)
        xy = np.stack([pix % w + 0.5, pix // w + 0.5], 1) - ref
        col = colours[pix]
        j = slice(kst[b], ken[b])
        m, c, lp, src = k_mu[j] - ref, k_chol[j], k_logpi[j], k_src[j]
        stats = _gate_stats(xy, col, m, c, lp) if len(lp) else None
        if stats is not None and (stats[0] < min_mass).any():
            keep = stats[0] >= min_mass
            m, c, lp, src = m[keep], c[keep], lp[keep], src[keep]
            stats = _gate_stats(xy, col, m, c, lp) if keep.any() else None
        if stats is None:
            fallback += 1
            src = np.array([-1])
            stats = (np.array([float(len(xy))]), xy.sum(0)[None], np.einsum("pa,pb->ab", xy, xy)[None],
                     col.sum(0)[None])
        mass, m1, m2, mc = stats
        centre = m1 / mass[:, None]
        cov = m2 / mass[:, None, None] - centre[:, :, None] * centre[:, None, :] + np.eye(2) / 12.0
        parts.append((centre + ref, cov, mass, mc / mass[:, None], np.full(len(mass), b), src))
    centre, cov, mass, experts, owner, source = (np.concatenate([p[i] for p in parts]) for i in range(6))
    det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] ** 2
    pi = mass / np.sqrt(det)
    pi /= pi.mean()
    # Cholesky factor of the precision (as smoe.model.chol_from_covariance, in float64).
    b11 = np.sqrt(cov[:, 0, 0] / det)
    b10 = -cov[:, 0, 1] / det / b11
    b00 = 1.0 / np.sqrt(det) / b11
    return {"mu": centre, "chol": np.stack([b00, b10, b11], 1), "pi": pi, "experts": experts, "owner": owner,
            "mass": mass, "fallback": fallback, "source": source}
