"""Atomic writes: the file appears whole or not at all, and with the permissions open() gives."""

import os

import pytest

from oneseg.io import read_json, write_atomic, write_json_atomic


def test_atomic_write_gives_the_umask_permissions_not_mkstemp_private_ones(tmp_path):
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": float("nan")})
        plain = tmp_path / "plain"
        plain.write_text("")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644
    assert read_json(tmp_path / "a.json") == {"x": None}


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
