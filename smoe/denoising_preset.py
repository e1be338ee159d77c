"""Tuned defaults of multi-model denoising (:mod:`smoe.denoising`), with the measurements that chose them.

They live beside the task and apart from its code so that ``smoe denoise
--help`` can show them without loading torch; :mod:`smoe.denoising` imports
and re-exports every name.  Measurements are PSNR on Kodak images with
Gaussian noise of variance sigma^2 on [0, 1] unless said otherwise.
"""

from __future__ import annotations

from .sizes import TILE
from .spec import STRATEGIES_OFF, FitSpec

__all__ = ["PRESET", "DEFAULT_MODELS", "DEFAULT_DENSITY", "DEFAULT_THRESHOLD", "DEFAULT_AREA_POWER",
           "DEFAULT_CHROMA_MODELS", "CHROMA_DENSITY", "CHROMA_ITERS", "MAX_MODELS", "STOP_CORR", "STOP_FACTOR"]

#: Models averaged by default (the paper's "8 models" rows of Table IV).
DEFAULT_MODELS = 8
#: MDBSCAN threshold d_Th of the default segmentation-based initialization.
#: See :data:`DEFAULT_AREA_POWER` for the pilot that chose 20 over 10.
DEFAULT_THRESHOLD = 20.0
#: Kernels per MDBSCAN segment grow like ``area ** DEFAULT_AREA_POWER``
#: (:func:`smoe.initializers.segment.segment_init`).  Pilot, 8 models at sigma^2 = 0.01, whole
#: images, PSNR gain over the area-proportional share (power 1) with d_Th 10: power 0.5 with
#: d_Th 20 kodim01 +0.04 dB, 03 +0.41, 05 +0.11, 13 +0.19, 23 +1.04; power 0 (the R paper's equal
#: share) with d_Th 20 01 -0.12, 03 +0.41, 05 -0.05, 13 +0.13, 23 +1.18; d_Th 10 gained at most
#: 0.14 dB with either power, and d_Th 30 and 40 lost on kodim03 and 05.  Checked on six Kodak
#: images outside the benchmark (02, 07, 11, 15, 21, 24): 29.51 dB against 28.99, every image
#: gaining 0.24 to 0.86 dB.
DEFAULT_AREA_POWER = 0.5
#: Initial kernels per pixel when no noise level is given.  Pilot at sigma^2 = 0.01, one model,
#: 300 iterations, 256 x 256 crops: kodim23 (smooth) peaked at 1/32 (28.5 dB; 1/16: 27.3, 1/64:
#: 27.6), kodim05 (texture) at 1/16 (25.2 dB; 1/32: 23.6, 1/8: 24.7); 1/24 sits between.
DEFAULT_DENSITY = 1 / 24
#: Models of the separate colour fit (:mod:`smoe.denoising`, "Colour"); 0 fits colour jointly as the paper does.
#: Pilot, sigma^2 = 0.01, whole images, the default 8-model fit's chroma replaced by that of 4 half-resolution
#: models of at most 100 steps (PSNR gain): 1/32 kernels per half-resolution pixel kodim01 +0.55 dB, 03 +0.98,
#: 05 +0.29, 13 +0.26, 23 +0.78 for 7-10 s; 1/48 +0.58, +1.12, +0.16, +0.24, +0.89; 1/16 +0.42, +0.42, +0.31,
#: +0.22, +0.13.  2 models gained 0.1-0.2 dB less on kodim03 and 23, 8 models at most 0.07 dB more for
#: 5 s more; 50 steps instead of 100 lost up to 0.08 dB on kodim05, 200 steps (stopped by the rule) did not
#: gain.  Blending the two chroma estimates by the local residual gained 0.02-0.04 dB more; not worth a rule.
#: The same fit at quarter resolution gained 0.7 and 1.5 dB less on kodim03 and 23.
DEFAULT_CHROMA_MODELS = 4
#: Initial kernels per pixel of the half-resolution image in each colour model (scaled with the
#: noise level like :func:`smoe.denoising.kernel_density`).
CHROMA_DENSITY = 1 / 32
#: Most gradient steps per colour model.
CHROMA_ITERS = 100
#: A model of the first set stops once its residual's neighbour correlation
#: (:func:`smoe.fitting.neighbour_correlation`) is at most this.  Pilot at sigma^2 = 0.01, 8 models,
#: whole images, 300 steps (PSNR against the residual-energy rule, STOP_FACTOR 0.97): kodim03 31.94 dB
#: (31.88), kodim05 28.87 (28.18), kodim13 26.64 (26.04), kodim23 33.07 (32.96); -0.045 gave 31.92,
#: 28.99, 26.64, 33.07 but took 82 s on kodim05 against 47 s.  Tighter energy rules could not serve
#: every image: 0.93 gave 31.93, 28.58, 26.40, 33.04 and 0.90 gave 31.83, 28.81, 26.64, 32.82.
STOP_CORR = -0.04
#: The colour models stop once their mean squared residual to their (half-resolution) image is at most
#: this fraction of its noise variance.  Pilot of this rule for the joint fit at sigma^2 = 0.01,
#: 8 models, 256 x 256 crops, known clipped-noise variance, at most 300 steps (PSNR, seconds):
#: kodim23 0.97: 30.38 dB, 11.5 s; 1.00: 30.13; 1.06: 29.21; kodim05 0.97: 27.18 dB; 1.00: 27.46
#: (400 steps); 1.06: 27.09.
STOP_FACTOR = 0.97
#: The fit of every model of the first set (the colour models change its budget, steps and stop rule).
#: ``iters``, the most gradient steps per model: smooth images stop earlier (:data:`STOP_CORR`).  The cap keeps
#: the slowest Kodak images within twice BM3D's time (about 34 s here): kodim13 at sigma^2 = 0.01
#: reaches 26.20 dB in 59 s with 150 steps, 26.44 dB in 72 s with 200 and 26.64 dB in 103 s with
#: 300; kodim06, the slowest of the 24, 28.92 dB in 73 s with 150, 28.90 dB in 66 s with 140 and
#: 28.88 dB in 63 s with 130.
#: Learning rates of the short denoising fits, pinned (not the regression defaults).  Raised in
#: two rounds, each time because models hit the step cap before the stop rule: first to three times
#: the rates first tuned here (0.01, 0.01, 0.001), then 3x again for mu and chol, 6x for the experts
#: and 20x for the gates (a pilot on one kodim13 model found the experts and gates the slow part).
#: The second round (with d_Th 10 and area-proportional segment shares, the defaults then),
#: 8 models on whole images at sigma^2 = 0.01 against (0.03, 0.03, 0.003, 0.001)
#: for (mu, chol, experts, pi): on six Kodak images not in the benchmark (02, 07, 11, 15, 21, 24)
#: 28.99 dB in 17.6 s against 28.95 dB in 31.6 s, and on the benchmark's six 28.50 dB in 23.9 s
#: against 28.44 dB in 42.8 s.  Twice the old mu and chol rates with 30x the gate rate did a little
#: worse (28.45 dB on the benchmark's six); a tighter stop (0.95) gained 0.05 dB for 17 % more time.
PRESET = FitSpec(n_kernels=None, init="segment", iters=140, lr_mu=0.09, lr_mu_final=1e-3, lr_chol=0.09,
                 lr_experts=0.018, lr_pi=0.02, **STRATEGIES_OFF)
#: Every distinct 2D shift of a 16 x 16 tile grid.
MAX_MODELS = TILE * TILE
