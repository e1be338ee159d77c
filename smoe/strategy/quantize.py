"""Quantization-aware fitting: render through the codec's rounding (straight-through)."""

from __future__ import annotations

from .base import Strategy


class QuantizeStraightThrough(Strategy):
    """Renders every step with the kernels rounded as the bitstream will code them.

    The forward pass sees :func:`smoe.codec.quantizer.quantize_view` of the
    parameters; rounding passes gradients through unchanged, so Adam keeps
    moving the float parameters towards values whose rounding renders well.

    Parameters
    ----------
    frame : (int, int)
        ``(height, width)`` of the fitted image (the centre grid covers it).
    mode : {"smoe", "rbf"}
    steps : smoe.codec.quantizer.Steps
    """

    def __init__(self, frame, mode, steps):
        self.frame, self.mode, self.steps = tuple(frame), mode, steps

    def view(self, mu, chol, pi, experts):
        from ..codec.quantizer import quantize_view

        return quantize_view(mu, chol, pi, experts, self.frame, self.mode, self.steps)
