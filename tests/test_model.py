import math

import numpy as np
import pytest
import torch

from smoe import Model
from smoe.model import CHI2_99, bounding_radius, chol_from_covariance, covariance_from_chol, precision_from_chol

from conftest import random_model


def test_precision_and_covariance_are_inverse():
    model = random_model(20, 30, 30, dtype=torch.float64)
    eye = precision_from_chol(model.chol) @ model.covariance
    assert torch.allclose(eye, torch.eye(2, dtype=torch.float64).expand(20, 2, 2), atol=1e-12)


def test_covariance_round_trip():
    model = random_model(20, 30, 30, dtype=torch.float64)
    again = Model.from_covariance(model.mu, model.covariance, model.pi, model.experts)
    assert torch.allclose(again.chol, model.chol, atol=1e-12)
    # A hand-made rotated covariance: axes 4 and 1 px, rotated 30 degrees.
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    R = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    cov = R @ torch.diag(torch.tensor([16.0, 1.0], dtype=torch.float64)) @ R.T
    chol = chol_from_covariance(cov[None])
    assert chol[0, 0] > 0 and chol[0, 2] > 0
    assert torch.allclose(covariance_from_chol(chol)[0], cov, atol=1e-12)


def test_bounding_radius_is_major_semi_axis():
    model = random_model(50, 30, 30, dtype=torch.float64, scale=(0.01, 3.0))
    lam_max = torch.linalg.eigvalsh(model.covariance)[:, -1]
    assert torch.allclose(bounding_radius(model.chol), torch.sqrt(CHI2_99 * lam_max), rtol=1e-9)
    needle = torch.tensor([[1e3, 0.0, 1e-3]], dtype=torch.float64)
    assert torch.allclose(bounding_radius(needle), torch.tensor([math.sqrt(CHI2_99) * 1e3], dtype=torch.float64))


@pytest.mark.parametrize("field,index,value,message", [
    ("mu", 3, float("nan"), "kernel 3: mu is not finite"),
    ("chol", 1, float("inf"), "kernel 1: chol is not finite"),
    ("pi", 4, float("nan"), "kernel 4: pi is not finite"),
    ("experts", 2, float("nan"), "kernel 2: experts is not finite"),
])
def test_invalid_values_name_the_first_bad_kernel(field, index, value, message):
    arrays = random_model(6, 10, 10).numpy()
    arrays[field][index] = value
    arrays[field][5] = value
    with pytest.raises(ValueError, match=message):
        Model(**arrays)


@pytest.mark.parametrize("column", [0, 2])
def test_non_positive_cholesky_diagonal(column):
    arrays = random_model(6, 10, 10).numpy()
    arrays["chol"][2, column] = 0.0
    with pytest.raises(ValueError, match="kernel 2: Cholesky diagonal must be positive"):
        Model(**arrays)


def test_shape_errors():
    with pytest.raises(ValueError, match="mu must have shape"):
        Model(np.zeros((3, 3)), np.ones((3, 3)), np.ones(3), np.ones((3, 1)))
    with pytest.raises(ValueError, match="experts must have shape"):
        Model(np.zeros((3, 2)), np.ones((3, 3)), np.ones(3), np.ones((3, 2)))
    with pytest.raises(ValueError, match="pi must have shape"):
        Model(np.zeros((3, 2)), np.ones((3, 3)), np.ones(4), np.ones((3, 1)))
    with pytest.raises(ValueError, match="not symmetric positive definite"):
        Model.from_covariance(np.zeros((1, 2)), [[[1.0, 2.0], [2.0, 1.0]]], [1.0], [[1.0]])


def test_editing():
    model = random_model(10, 20, 20)
    kept = model.select(model.pi > 0.7)
    assert len(kept) == int((model.pi > 0.7).sum())
    assert len(model.select(torch.tensor([0, 2]))) == 2
    wider = model.scale_bandwidth(2.0)
    assert torch.allclose(wider.covariance, 4 * model.covariance, rtol=1e-5)
    with pytest.raises(ValueError, match="bandwidth factor"):
        model.scale_bandwidth(0.0)
    pi = model.pi.clone()
    pi[:4] = 0
    assert len(Model(model.mu, model.chol, pi, model.experts).pruned()) == 6
    assert Model.empty(1).channels == 1 and len(Model.empty()) == 0
    assert model.to(torch.float64).dtype == torch.float64
