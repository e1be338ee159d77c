"""Fit outputs built once in memory; smoe fit writes them all or none (issue #20 items 8-11)."""

import json

import numpy as np
import pytest

import smoe
from smoe.cli import main
from smoe.imageio import write_image
from smoe.outputs import FIT_OUTPUTS, fit_outputs

H, W = 40, 48
FAST = ["-n", "30", "--iters", "10", "--quiet"]


@pytest.fixture
def image(tmp_path):
    y, x = np.mgrid[0:H, 0:W] / np.array([H, W])[:, None, None]
    write_image(tmp_path / "tiny.png", np.stack([x, y, 0.5 * x * y], axis=2))
    return tmp_path / "tiny.png"


def _one_line_error(capsys):
    err = capsys.readouterr().err
    assert err.startswith("smoe: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_outputs_render_the_reconstruction_once(monkeypatch, tmp_path):
    import smoe.fitted as fitted_module

    img = np.random.default_rng(0).random((H, W, 3)).astype(np.float32)
    result = smoe.fit(img, 40, iters=5)
    calls = []
    real = fitted_module.FittedModel.render
    monkeypatch.setattr(fitted_module.FittedModel, "render", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    files, report = fit_outputs(result.fitted, img, result.history, image_path=tmp_path / "x.png",
                                run=result.run_facts())
    assert len(calls) == 1
    assert sorted(files) == sorted(FIT_OUTPUTS) and all(isinstance(v, bytes) and v for v in files.values())
    assert json.loads(files["metrics.json"]) == report
    assert report["spec"] == result.spec.to_dict() and report["kernels_final"] == len(result.model)


def test_empty_output_path_is_refused(image, tmp_path, capsys, monkeypatch):
    # Issue #20 item 11: -o '' used to write to smoe-out/<name> silently.
    monkeypatch.chdir(tmp_path)
    assert main(["fit", str(image), *FAST, "-o", ""]) == 2
    assert "-o" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.png"]


@pytest.mark.parametrize("error", [
    MemoryError(),
    RuntimeError("[enforce fail at alloc_cpu.cpp:114] data. DefaultCPUAllocator: not enough memory: you tried to "
                 "allocate 1234567890 bytes."),
    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
])
def test_out_of_memory_while_fitting_is_one_line_and_writes_nothing(image, tmp_path, capsys, monkeypatch, error):
    # Issue #20 item 8: an allocator failure inside torch used to print a traceback.
    import smoe.fitting

    def exhausted(*args, **kwargs):
        raise error
    monkeypatch.setattr(smoe.fitting, "rasterize", exhausted)
    assert main(["fit", str(image), *FAST, "-o", str(tmp_path / "out")]) == 2
    assert "out of memory" in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_other_runtime_errors_keep_their_traceback(image, tmp_path, monkeypatch):
    import smoe.fitting

    def bug(*args, **kwargs):
        raise RuntimeError("shape mismatch in a kernel")
    monkeypatch.setattr(smoe.fitting, "rasterize", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["fit", str(image), *FAST, "-o", str(tmp_path / "out")])


def test_failure_while_building_outputs_writes_nothing(image, tmp_path, capsys, monkeypatch):
    # Issue #20 item 9: running out of memory after the first outputs left a half-written folder.
    import smoe.plots

    def exhausted(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr(smoe.plots, "draw_kernels", exhausted)
    out = tmp_path / "deeper" / "out"
    assert main(["fit", str(image), *FAST, "-o", str(out)]) == 2
    assert "out of memory" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.png"]


def test_failure_updating_an_existing_folder_leaves_it_marked_incomplete(image, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert main(["fit", str(image), *FAST, "-o", str(out)]) == 0
    import smoe.atomic

    real = smoe.atomic.atomic_write_bytes

    def full_disk(path, data):
        if path.name == "kernels.png":
            raise OSError(28, "No space left on device", str(path))
        real(path, data)
    monkeypatch.setattr(smoe.atomic, "atomic_write_bytes", full_disk)
    assert main(["fit", str(image), *FAST, "-o", str(out)]) == 2
    _one_line_error(capsys)
    assert not (out / "metrics.json").exists()


def test_leftovers_of_a_killed_run_are_removed(image, tmp_path):
    # Issue #20 item 10: kill -9 during a write left hidden temporaries that later runs kept.
    out = tmp_path / "out"
    assert main(["fit", str(image), *FAST, "-o", str(out)]) == 0
    (out / ".model.smoe.npz.0123abcd.tmp").write_bytes(b"half")
    (out / ".metrics.json.deadbeef.tmp").write_bytes(b"half")
    (tmp_path / ".out.tmp-0badf00d").mkdir()
    assert main(["fit", str(image), *FAST, "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FIT_OUTPUTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.png"]
