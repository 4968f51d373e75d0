"""rvosflow.atomic: a file appears whole or not at all, with the permissions of any file written."""

import os
import stat

import pytest

from rvosflow import atomic


def test_a_written_file_has_the_umasks_permissions_not_mkstemps(tmp_path):
    # Found on Table 2's smoke run: results/*.md came out 0600 (mkstemp's mode), unreadable by the
    # rest of a group sharing the results folder.
    out = atomic.write_text(tmp_path / "t.md", "| a |\n")
    plain = tmp_path / "plain.md"
    plain.write_text("x")
    assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~atomic.UMASK


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = atomic.write_text(tmp_path / "r.json", "old")

    def broken(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic.write_with(target, broken)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["r.json"]
