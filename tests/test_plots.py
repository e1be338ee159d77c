"""Figures: valid PNGs, correct ellipse geometry, subsampling, no global matplotlib side effects."""

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import random_model
from smoe import plots
from smoe.model import precision_from_chol


def _history(n=12):
    return [{"iteration": 10 * (i + 1), "loss": 0.1 / (i + 1), "psnr": 15.0 + i, "kernels": 100 - i,
             "kernels_per_tile": 20.0, "seconds": 0.5 * (i + 1)} for i in range(n)]


def _open_png(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.size


def _read_rgb(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).astype(float)


PANELS = {("iteration", "PSNR (dB)"): ("iteration", "psnr", "tab:blue"),
          ("fit time (s)", "PSNR (dB)"): ("seconds", "psnr", "tab:blue"),
          ("iteration", "live kernels"): ("iteration", "kernels", "tab:orange"),
          ("fit time (s)", "live kernels"): ("seconds", "kernels", "tab:orange")}


def _saved_figures(monkeypatch):
    """The matplotlib figures saved from now on (plot functions return nothing, so catch them being saved)."""
    from matplotlib.figure import Figure

    saved, real = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: saved.append(fig) or real(fig, *a, **k))
    return saved


def _check_convergence_figure(fig, rgb, history):
    """Each panel plots its history column against the other, covers their ranges and draws the curve there."""
    from matplotlib.colors import to_rgb

    assert rgb.shape[:2] == (round(fig.get_figheight() * fig.dpi), round(fig.get_figwidth() * fig.dpi))
    seen = set()
    for ax in fig.axes:
        x_key, y_key, colour = PANELS[ax.get_xlabel(), ax.get_ylabel()]
        seen.add((ax.get_xlabel(), ax.get_ylabel()))
        xs, ys = (np.array([float(rec[k]) for rec in history]) for k in (x_key, y_key))
        (line,) = ax.get_lines()
        np.testing.assert_array_equal(line.get_xdata(), xs)
        np.testing.assert_array_equal(line.get_ydata(), ys)
        (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
        assert x0 <= xs.min() and xs.max() <= x1 and y0 <= ys.min() and ys.max() <= y1, (ax.get_xlabel(), y_key)
        # In the PNG, the pixels of the curve's colour inside this panel lie on the curve, from end to end.
        box = ax.get_window_extent()
        rows, cols = np.mgrid[0:rgb.shape[0], 0:rgb.shape[1]]
        px, py = cols + 0.5, rgb.shape[0] - (rows + 0.5)  # display coordinates: y up
        inside = (px > box.x0) & (px < box.x1) & (py > box.y0) & (py < box.y1)
        curve = inside & (np.abs(rgb - 255 * np.array(to_rgb(colour))).max(-1) < 40)
        assert curve.sum() >= 5, (x_key, y_key)
        points = ax.transData.transform(np.stack([xs, ys], 1))  # the data points, in display pixels
        drawn = np.stack([px[curve], py[curve]], 1)
        if len(points) == 1:
            distance = np.linalg.norm(drawn - points[0], axis=1)
        else:
            a, b = points[:-1], points[1:]
            t = np.clip(np.einsum("psi,si->ps", drawn[:, None] - a, b - a) / ((b - a) ** 2).sum(1), 0, 1)
            distance = np.linalg.norm(drawn[:, None] - (a + t[..., None] * (b - a)), axis=2).min(1)
        assert distance.max() < 5, (x_key, y_key, distance.max())
        assert drawn[:, 0].min() < points[:, 0].min() + 3 and drawn[:, 0].max() > points[:, 0].max() - 3
    assert seen == set(PANELS)


def test_plot_convergence_writes_png(tmp_path, monkeypatch):
    figures = _saved_figures(monkeypatch)
    path = tmp_path / "conv.png"
    history = _history()
    plots.plot_convergence(history, path, title="test")
    rgb = _read_rgb(path)
    assert 400 <= rgb.shape[0] <= 1500 and 600 <= rgb.shape[1] <= 2000
    assert [p.name for p in tmp_path.iterdir()] == ["conv.png"]  # no temporary file left behind
    (fig,) = figures
    assert [t.get_text() for t in fig.texts] == ["test"]
    _check_convergence_figure(fig, rgb, history)
    # On the page, the PSNR curve rises and the kernel count falls, as in the history.
    for ax in fig.axes:
        line = ax.get_lines()[0]
        heights = ax.transData.transform(np.stack([line.get_xdata(), line.get_ydata()], 1))[:, 1]
        step = np.diff(heights)
        assert (step > 0).all() if ax.get_ylabel() == "PSNR (dB)" else (step < 0).all(), ax.get_ylabel()


def test_plot_convergence_single_record(tmp_path, monkeypatch):
    figures = _saved_figures(monkeypatch)
    history = _history(1)
    plots.plot_convergence(history, tmp_path / "one.png")
    (fig,) = figures
    _check_convergence_figure(fig, _read_rgb(tmp_path / "one.png"), history)
    # The default title states the final record.
    assert [t.get_text() for t in fig.texts] == ["final PSNR 15.00 dB, 100 kernels, 10 iterations in 0.5 s"]


def test_plot_convergence_rejects_empty_history(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plots.plot_convergence([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="psnr"):
        plots.plot_convergence([{"iteration": 1, "kernels": 1, "seconds": 0.1}], tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


# Two axis-aligned kernels (chol b10 = 0, so sigma_x = 1 / b00 and sigma_y = 1 / b11) on a 30 x 40 image.
KNOWN_MU = np.array([[10.0, 15.0], [29.0, 14.0]])
KNOWN_SIGMA = np.array([[2.5, 2.5], [3.0, 5.0]])
# The expert colours and the colours the figure should draw them in (grey models: viridis of the value).
KNOWN_EXPERTS = {3: ([[0.9, 0.1, 0.2], [0.1, 0.3, 1.0]], [[0.9, 0.1, 0.2], [0.1, 0.3, 1.0]]),
                 1: ([[1.0], [0.5]], [[0.993, 0.906, 0.144], [0.128, 0.567, 0.551]])}


@pytest.mark.parametrize("channels, enlarge", [(1, 1), (3, 1), (3, 80)], ids=["grey", "rgb", "rgb-large"])
def test_draw_kernels_writes_png(tmp_path, monkeypatch, channels, enlarge):
    """Each kernel's scaled sigma ellipse and centre are drawn in its expert's colour over the dimmed image.

    Enlarged 80 times (3200 x 2400 pixels), the same picture is drawn at half size and the title says so.
    """
    from smoe import Model

    figures = _saved_figures(monkeypatch)
    h, w, grey, scale = 30 * enlarge, 40 * enlarge, 0.6, 1.5
    mu, sigma = enlarge * KNOWN_MU, enlarge * KNOWN_SIGMA
    experts, drawn_colours = KNOWN_EXPERTS[channels]
    model = Model(mu, np.stack([1 / sigma[:, 0], 0 * sigma[:, 0], 1 / sigma[:, 1]], 1), [1.0, 1.0], experts)
    image = np.full((h, w) if channels == 1 else (h, w, 3), grey, np.float32)
    path = tmp_path / "k.png"
    data = plots.draw_kernels(image, model, path, scale=scale)
    assert data == path.read_bytes()
    rgb = _read_rgb(path)
    height, width = rgb.shape[:2]
    zoom = width / w  # output pixels per image pixel
    band = height - round(h * zoom)  # the title band above the image
    assert 0 < band <= 60  # image aspect kept
    (title,) = (t.get_text() for t in figures[0].texts)
    assert title.startswith("2 kernels, 1.5-sigma ellipses")
    if enlarge == 1:
        assert zoom >= 1 and "shown at" not in title
    else:
        assert zoom == 0.5 and width == plots.KERNEL_FIGURE_SIDE and title.endswith("3200x2400 image shown at 0.5x")
    colours = 255 * np.array(drawn_colours)
    background = 255 * plots.DIM * grey

    def figure_px(x, y):  # image coordinates -> (row, column) of the output pixel
        return int(band + y * zoom), int(x * zoom)

    # Far (> 5 output px) from both outlines and centres: the dimmed image and nothing else.
    rows, cols = np.mgrid[band:height, 0:width]
    x, y = (cols + 0.5) / zoom, (rows + 0.5 - band) / zoom
    far = np.ones(rows.shape, bool)
    for (mx, my), (sx, sy) in zip(mu, sigma):
        a, b = scale * sx, scale * sy
        r = np.hypot((x - mx) / a, (y - my) / b)  # 1 on the ellipse; the gap to it is >= |r - 1| * min(a, b)
        far &= (np.abs(r - 1) * min(a, b) * zoom > 5) & (np.hypot(x - mx, y - my) * zoom > 5)
    assert far.mean() > 0.8
    np.testing.assert_allclose(rgb[band:][far], background, atol=2.0)

    for (mx, my), (sx, sy), colour in zip(mu, sigma, colours):
        # The centre dot is the expert's colour.
        r0, c0 = figure_px(mx, my)
        centre = rgb[r0 - 2:r0 + 3, c0 - 2:c0 + 3].reshape(-1, 3)
        assert np.abs(centre - colour).max(-1).min() < 6, (centre, colour)
        # Along the ellipse, the most contrasted nearby pixel is a (thin, antialiased) stroke of that colour.
        for t in np.linspace(0, 2 * np.pi, 60, endpoint=False):
            r0, c0 = figure_px(mx + scale * sx * np.cos(t), my + scale * sy * np.sin(t))
            patch = rgb[r0 - 3:r0 + 4, c0 - 3:c0 + 4].reshape(-1, 3) - background
            stroke = patch[np.argmax(np.linalg.norm(patch, axis=1))]
            cosine = stroke @ (colour - background) / (np.linalg.norm(stroke) * np.linalg.norm(colour - background))
            assert np.linalg.norm(stroke) > 60 and cosine > 0.9, (t, stroke + background, colour)


def test_draw_kernels_subsamples_deterministically(tmp_path, monkeypatch):
    figures = _saved_figures(monkeypatch)
    drawn = []
    real = plots.ellipse_outlines
    monkeypatch.setattr(plots, "ellipse_outlines", lambda m, *a, **k: drawn.append(m.mu.clone()) or real(m, *a, **k))
    image = np.zeros((32, 32, 3), np.float32)
    model = random_model(200, 32, 32)
    for name in ("a.png", "b.png"):
        plots.draw_kernels(image, model, tmp_path / name, max_kernels=25)
    assert drawn[0].shape == (25, 2)
    assert torch.equal(drawn[0], drawn[1])
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert figures[0].texts[0].get_text().startswith("25 of 200 kernels (random subset), 1-sigma ellipses")
    plots.draw_kernels(image, model, tmp_path / "all.png", max_kernels=500)
    assert drawn[2].shape == (200, 2)


def test_draw_kernels_ten_thousand_is_fast(tmp_path, monkeypatch):
    """Fast because vectorised: 10^4 kernels are one outline computation and a few artists, not 10^4 of each."""
    from matplotlib.collections import LineCollection, PathCollection

    figures = _saved_figures(monkeypatch)
    calls = []
    real = plots.ellipse_outlines
    monkeypatch.setattr(plots, "ellipse_outlines", lambda m, *a, **k: calls.append(len(m)) or real(m, *a, **k))
    model = random_model(10_000, 256, 384, scale=(0.1, 0.6))
    plots.draw_kernels(np.full((256, 384, 3), 0.5, np.float32), model, tmp_path / "k.png", max_kernels=10_000)
    _open_png(tmp_path / "k.png")
    assert calls == [10_000]  # every outline in one call
    (fig,) = figures
    (ax,) = fig.axes
    assert not ax.patches and not ax.lines and not ax.images and not fig.images  # no artist per kernel or pixel
    outlines = [c for c in ax.collections if isinstance(c, LineCollection)]
    centres = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(ax.collections) <= 3 and len(centres) == 1 and outlines
    assert all(len(c.get_segments()) == 10_000 for c in outlines)
    assert len(centres[0].get_offsets()) == 10_000


def test_figures_without_a_path_return_the_png_and_write_nothing(tmp_path, monkeypatch):
    history = _history()
    data = plots.plot_convergence(history, title="t")
    assert data == plots.plot_convergence(history, tmp_path / "c.png", title="t") == (tmp_path / "c.png").read_bytes()
    (tmp_path / "c.png").unlink()
    # A large image of one-pixel stripes is area-averaged to the figure's pixels (not sampled, which would alias).
    figures = _saved_figures(monkeypatch)
    stripes = np.zeros((1000, 3200), np.float32)
    stripes[:, ::2] = 1.0
    from smoe import Model

    data = plots.draw_kernels(stripes, Model.empty(channels=1))
    assert not list(tmp_path.iterdir())
    import io

    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        rgb = np.asarray(im.convert("RGB")).astype(float)
    assert rgb.shape[1] == plots.KERNEL_FIGURE_SIDE
    band = rgb.shape[0] - 500  # drawn at half size
    np.testing.assert_allclose(rgb[band:], 255 * plots.DIM * 0.5, atol=1.5)
    assert figures[0].texts[0].get_text() == "0 kernels, 1-sigma ellipses, coloured by expert value " \
        "(viridis: 0 dark, 1 bright); 3200x1000 image shown at 0.5x"


def test_draw_kernels_empty_model(tmp_path):
    from smoe import Model

    plots.draw_kernels(np.full((20, 30), 0.5), Model.empty(channels=1), tmp_path / "e.png")
    rgb = _read_rgb(tmp_path / "e.png")
    band = rgb.shape[0] - round(20 * rgb.shape[1] / 30)  # the title band above the image
    assert 0 < band <= 60
    np.testing.assert_allclose(rgb[band:], 255 * plots.DIM * 0.5, atol=1.0)  # the dimmed image, nothing on it
    assert (rgb[:band] < 128).any(axis=-1).sum() > 50  # a (dark) title in the band


def test_draw_kernels_shows_out_of_range_pixels_clipped():
    """NaN and values below 0 show black, infinity and values above 1 show as 1, dimmed."""
    from smoe import Model

    image = np.repeat(np.array([np.nan, -1.0, 0.5, 2.0, np.inf], np.float32), 8)[None].repeat(8, 0)  # 8 x 40
    with Image.open(__import__("io").BytesIO(plots.draw_kernels(image, Model.empty(channels=1)))) as im:
        rgb = np.asarray(im.convert("RGB")).astype(float)
    band = rgb.shape[0] - 8 * rgb.shape[1] // 40
    columns = rgb[band:].mean(axis=(0, 2)).reshape(5, -1)[:, 2:-2]  # each band's columns, away from its edges
    want = 255 * plots.DIM * np.array([0, 0, 0.5, 1, 1])[:, None]
    np.testing.assert_allclose(columns, np.broadcast_to(want, columns.shape), atol=1.0)


def test_draw_kernels_rejects_bad_arguments(tmp_path):
    model = random_model(5, 10, 10)
    with pytest.raises(ValueError):
        plots.draw_kernels(np.zeros((10, 10, 2)), model, tmp_path / "x.png")
    with pytest.raises(ValueError):
        plots.draw_kernels(np.zeros((10, 10, 3)), model, tmp_path / "x.png", max_kernels=0)
    with pytest.raises(ValueError):
        plots.draw_kernels(np.zeros((10, 10, 3)), model, tmp_path / "x.png", scale=0)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_ellipse_outlines_lie_on_the_sigma_ellipse(scale):
    model = random_model(30, 40, 50, dtype=torch.float64, scale=(0.1, 0.9))
    outlines = plots.ellipse_outlines(model, scale)
    assert outlines.shape == (30, plots.OUTLINE_POINTS + 1, 2)
    np.testing.assert_allclose(outlines[:, 0], outlines[:, -1])  # closed
    d = outlines - model.mu.numpy()[:, None, :]
    precision = precision_from_chol(model.chol).numpy()
    mahalanobis2 = np.einsum("lpi,lij,lpj->lp", d, precision, d)
    np.testing.assert_allclose(mahalanobis2, scale**2, rtol=1e-9)
    # The outline's half-extent along x is sqrt(Sigma_xx) * scale.
    cov = model.covariance.numpy()
    half_width = (outlines[:, :, 0].max(1) - outlines[:, :, 0].min(1)) / 2
    np.testing.assert_allclose(half_width, scale * np.sqrt(cov[:, 0, 0]), rtol=0.02)


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    before = matplotlib.get_backend()
    plots.plot_convergence(_history(), tmp_path / "c.png")
    assert matplotlib.get_backend() == before
