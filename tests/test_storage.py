"""``microdit.storage``: one set of calls for local paths and object-store URIs (a real S3 server)."""

from __future__ import annotations

import os

import pytest

from microdit import storage


def test_resolve_keeps_uris_and_absolutises_local_paths(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert storage.resolve("s3://bucket/runs/") == "s3://bucket/runs"
    assert storage.resolve("gs://b/x") == "gs://b/x"
    assert storage.resolve("runs") == str(tmp_path / "runs")
    assert storage.resolve("file:///data/x") == "/data/x"
    assert storage.resolve("~/m") == os.path.expanduser("~/m")
    monkeypatch.setenv(storage.ROOT_ENV, "s3://bucket/team")
    assert storage.root() == "s3://bucket/team"
    assert storage.local_root() == os.path.expanduser("~/microdit")
    assert storage.join(storage.root(), "runs", "a/") == "s3://bucket/team/runs/a"
    monkeypatch.delenv(storage.ROOT_ENV)
    assert storage.root() == os.path.expanduser("~/microdit")
    with pytest.raises(ValueError, match="empty storage location"):
        storage.resolve(" ")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_read_write_list_delete_round_trip(where, tmp_path, request):
    base = str(tmp_path) if where == "local" else request.getfixturevalue("s3_bucket")
    target = storage.join(base, "a", "b.json")
    storage.write_json(target, {"x": 1})
    assert storage.read_json(target) == {"x": 1} and storage.is_file(target)
    with storage.atomic_local_output(storage.join(base, "a", "c.bin")) as path:
        with open(path, "wb") as f:
            f.write(b"\x00" * 1000)
    assert storage.list_names(storage.join(base, "a")) == ["b.json", "c.bin"]
    assert storage.file_stamp(storage.join(base, "a", "c.bin"))[0] == 1000
    assert storage.list_names(storage.join(base, "missing")) == []
    with storage.local_copy(storage.join(base, "a")) as local:
        assert sorted(os.listdir(local)) == ["b.json", "c.bin"]
    storage.delete(storage.join(base, "a"))
    assert not storage.exists(target)


def test_a_failed_atomic_write_leaves_the_old_file(tmp_path):
    target = str(tmp_path / "f.txt")
    storage.write_text(target, "old")
    with pytest.raises(RuntimeError), storage.atomic_local_output(target) as path:
        open(path, "w").write("half")
        raise RuntimeError("died mid-write")
    assert storage.read_text(target) == "old" and os.listdir(tmp_path) == ["f.txt"]
