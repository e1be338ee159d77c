"""Atomic files and output folders: complete or absent, leftovers of killed runs removed."""

import os

import pytest

from smoe.atomic import atomic_path, atomic_write, atomic_write_bytes, remove_temporaries, write_output_folder


def test_atomic_write_replaces(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with atomic_write(target) as handle:
        handle.write(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_atomic_write_text(tmp_path):
    with atomic_write(tmp_path / "t.txt", "w") as handle:
        handle.write("héllo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"


def test_atomic_write_failure_keeps_old_content(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write(b"partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_atomic_write_failure_creates_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "new.bin") as handle:
            handle.write(b"x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_permissions(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    atomic_write_bytes(target, b"new")
    assert (os.stat(target).st_mode & 0o777) == 0o640


FILES = {"metrics.json": b"{}", "model.smoe.npz": b"m", "kernels.png": b"k"}


def test_atomic_path_replaces_on_success_and_removes_on_failure(tmp_path):
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.exists()
            tmp.write_bytes(b"partial")
            raise RuntimeError("encoder died")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_new_folder_appears_whole(tmp_path):
    write_output_folder(tmp_path / "out", FILES)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == FILES
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failed_write_leaves_no_new_folder(tmp_path, monkeypatch):
    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise MemoryError
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(MemoryError):
        write_output_folder(tmp_path / "out", FILES)
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_updated_with_the_marker_last(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_output_folder(out, FILES)
    (out / "mine.txt").write_bytes(b"kept")
    written = []
    import smoe.atomic as atomic

    real = atomic.atomic_write_bytes
    monkeypatch.setattr(atomic, "atomic_write_bytes", lambda path, data: written.append(path.name) or real(path, data))
    write_output_folder(out, {**FILES, "kernels.png": b"k2"})
    assert written[-1] == "metrics.json" and (out / "kernels.png").read_bytes() == b"k2"
    assert (out / "mine.txt").read_bytes() == b"kept"


def test_failed_update_leaves_the_folder_marked_incomplete(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_output_folder(out, FILES)
    import smoe.atomic as atomic

    def fail(path, data):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(atomic, "atomic_write_bytes", fail)
    with pytest.raises(OSError):
        write_output_folder(out, FILES)
    assert not (out / "metrics.json").exists()


def test_leftovers_of_killed_runs_are_removed(tmp_path):
    # Issue #20 item 10: kill -9 during a write leaves hidden temporaries that a later run must remove.
    out = tmp_path / "out"
    write_output_folder(out, FILES)
    (out / ".model.smoe.npz.0123abcd.tmp").write_bytes(b"half")
    (out / ".metrics.json.deadbeef.tmp").write_bytes(b"half")
    (tmp_path / ".out.tmp-0badf00d").mkdir()
    (tmp_path / ".other.tmp-0badf00d").mkdir()  # another folder's: not ours to remove
    (out / ".hidden-but-mine").write_bytes(b"user file")
    write_output_folder(out, FILES)
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES, ".hidden-but-mine"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-0badf00d", "out"]


def test_remove_temporaries_touches_only_our_names(tmp_path):
    remove_temporaries(tmp_path / "nothing-here")  # a missing folder is fine
    for name in (".a.png.0123abcd.tmp", ".a.png.tmp", "b.0123abcd.tmp", ".x.tmp-0123abcd", ".x.tmp-zz"):
        (tmp_path / name).mkdir() if "tmp-" in name else (tmp_path / name).write_bytes(b"")
    remove_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.png.tmp", ".x.tmp-zz", "b.0123abcd.tmp"]


def test_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "out").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not a folder"):
        write_output_folder(tmp_path / "out", FILES)
