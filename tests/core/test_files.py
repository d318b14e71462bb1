"""Atomic writes (`files.atomic_write`), an atomic folder publish (`files.publish_folder`), a free port."""

import socket

import pytest

from audioclip_core.files import publish_folder
from audioclip_core.net import free_port


def test_a_folder_is_published_whole_or_not_at_all(tmp_path):
    final = tmp_path / "sets" / "v1"
    with publish_folder(final, suffix=".packing") as tmp:
        # built beside its final place, under a name the next run can recognise and sweep
        assert tmp.parent == final.parent and tmp.name.startswith(".v1.") and tmp.name.endswith(".packing")
        (tmp / "a.txt").write_text("one")
        assert not final.exists()
    assert (final / "a.txt").read_text() == "one"
    assert final.stat().st_mode & 0o777 == 0o755  # a temporary folder is private; the published one is not
    assert sorted(p.name for p in final.parent.iterdir()) == ["v1"]

    with pytest.raises(RuntimeError, match="killed"):
        with publish_folder(final) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("killed half-way")
    assert (final / "a.txt").read_text() == "one"  # the failed block left the published folder as it was
    assert sorted(p.name for p in final.parent.iterdir()) == ["v1"]


def test_replace_or_keep_what_is_there(tmp_path):
    final = tmp_path / "epoch_001"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="already published"):
        with publish_folder(final, replace=False) as tmp:
            (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_001"]

    with publish_folder(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]


def test_free_port_can_be_bound():
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_an_atomic_write_is_readable_by_all_like_a_plain_write(tmp_path):
    """The temporary an atomic write renames into place is private (mkstemp: 0600); the file
    published is 0644, as tables, checkpoints and records are read by other users and pods."""
    import stat

    from audioclip_core.files import atomic_write

    target = tmp_path / "table.parquet"
    with atomic_write(target) as tmp:
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o600
        tmp.write_bytes(b"rows")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644 and target.read_bytes() == b"rows"


def test_a_file_is_hashed_once_per_version(tmp_path, monkeypatch):
    """`file_digest` hashes a file once per version; a new version (renamed into place, as
    every write here is) is hashed again."""
    import hashlib

    import audioclip_core.files as files

    path = tmp_path / "parent.safetensors"
    path.write_bytes(b"one")
    calls = []
    real = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda p: calls.append(p) or real(p))
    assert files.file_digest(path) == files.file_digest(path) == hashlib.sha256(b"one").hexdigest()
    assert len(calls) == 1
    with files.atomic_write(path) as tmp:
        tmp.write_bytes(b"two, longer")
    assert files.file_digest(path) == hashlib.sha256(b"two, longer").hexdigest() and len(calls) == 2
