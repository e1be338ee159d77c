import pathlib

import pytest
import torch

from smoe import Model

KODAK = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak"


def random_model(n, height, width, *, channels=3, dtype=torch.float32, seed=0, scale=(0.1, 0.5), margin=0.0):
    """Random valid kernels over a height x width image (margin > 0 lets centres leave it)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g, dtype=dtype)  # noqa: E731
    lo = torch.tensor([-margin * width, -margin * height], dtype=dtype)
    span = torch.tensor([width, height], dtype=dtype) * (1 + 2 * margin)
    mu = lo + r(n, 2) * span
    a, b = scale
    chol = torch.stack([a + (b - a) * r(n), 0.3 * (r(n) - 0.5), a + (b - a) * r(n)], 1)
    return Model(mu, chol, 0.2 + r(n), r(n, channels))


@pytest.fixture
def kodak_dir():
    if not KODAK.is_dir():
        pytest.skip(f"Kodak images not found at {KODAK}")
    return KODAK
