import json
import multiprocessing as mp
import os
import signal
import time

import pytest

from label_pipeline.store import MANIFEST, StageStore, file_fingerprint, fingerprint_of


def _write(ctx, text="hello"):
    (ctx.dir / "out.txt").write_text(text)
    return {"rows": 1}


def test_build_then_cache_hit(tmp_path):
    store = StageStore(tmp_path)
    calls = []

    def builder(ctx):
        calls.append(1)
        return _write(ctx)

    a = store.build("s", "1", {"x": 1}, {}, builder)
    b = store.build("s", "1", {"x": 1}, {}, builder)
    assert not a.cached and b.cached
    assert a.fingerprint == b.fingerprint and len(calls) == 1
    manifest = json.loads((a.dir / MANIFEST).read_text())
    assert manifest["rows"] == 1 and manifest["config"] == {"x": 1}
    assert "python" in manifest["libraries"]


def test_fingerprint_covers_name_version_config_inputs():
    base = fingerprint_of("s", "1", {"a": 1}, {"in": "f1"})
    assert base == fingerprint_of("s", "1", {"a": 1}, {"in": "f1"})
    assert base != fingerprint_of("t", "1", {"a": 1}, {"in": "f1"})
    assert base != fingerprint_of("s", "2", {"a": 1}, {"in": "f1"})
    assert base != fingerprint_of("s", "1", {"a": 2}, {"in": "f1"})
    assert base != fingerprint_of("s", "1", {"a": 1}, {"in": "f2"})


def test_refresh_rebuilds_in_place(tmp_path):
    store = StageStore(tmp_path)
    a = store.build("s", "1", {}, {}, lambda ctx: _write(ctx, "one"))
    b = store.build("s", "1", {}, {}, lambda ctx: _write(ctx, "two"), refresh=True)
    assert a.path == b.path and not b.cached
    assert (b.dir / "out.txt").read_text() == "two"
    assert not list((tmp_path / "s").glob(".old-*")) and not list((tmp_path / "s").glob(".tmp-*"))


def test_failing_builder_leaves_nothing(tmp_path):
    store = StageStore(tmp_path)

    def boom(ctx):
        (ctx.dir / "partial").write_text("x")
        raise ValueError("bad")

    with pytest.raises(ValueError):
        store.build("s", "1", {}, {}, boom)
    fp = fingerprint_of("s", "1", {}, {})
    assert not store.path("s", fp).exists()
    assert not list((tmp_path / "s").glob(".tmp-*"))


def _slow_build(root, marker):
    store = StageStore(root)

    def builder(ctx):
        (ctx.dir / "part").write_text("x")
        time.sleep(30)
        return {}

    store.build("s", "1", {}, {}, builder)


def test_killed_build_is_not_taken_for_complete(tmp_path):
    p = mp.get_context("fork").Process(target=_slow_build, args=(tmp_path, None))
    p.start()
    fp = fingerprint_of("s", "1", {}, {})
    deadline = time.time() + 20
    while time.time() < deadline and not list((tmp_path / "s").glob(".tmp-*/part")):
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    store = StageStore(tmp_path)
    assert not store.is_complete("s", fp)
    assert len(list((tmp_path / "s").glob(".tmp-*.owner"))) == 1  # it names its writer
    ref = store.build("s", "1", {}, {}, lambda ctx: _write(ctx))
    assert not ref.cached and (ref.dir / "out.txt").is_file()
    # the killed run's temp dir (and its owner file) went when the stage started again
    assert not list((tmp_path / "s").glob(".tmp-*"))
    assert store.clean_stale_tmp() == 0


def test_only_stale_temp_dirs_are_removed(tmp_path):
    """A concurrent run's live temp dir stays; once its process is gone (SIGKILL, no
    cleanup) the next sweep removes it, however recent. An old temp dir without an owner
    file (an older version's) goes by age."""
    p = mp.get_context("fork").Process(target=_slow_build, args=(tmp_path, None))
    p.start()
    deadline = time.time() + 20
    while time.time() < deadline and not list((tmp_path / "s").glob(".tmp-*/part")):
        time.sleep(0.05)
    store = StageStore(tmp_path)
    legacy = tmp_path / "t" / ".tmp-0123-abcd"
    legacy.mkdir(parents=True)
    recent_legacy = tmp_path / "t" / ".tmp-4567-abcd"
    recent_legacy.mkdir()
    old = time.time() - 7200
    os.utime(legacy, (old, old))
    try:
        assert store.clean_stale_tmp() == 1  # only the old one without an owner
        assert not legacy.exists() and recent_legacy.exists()
        live = [d for d in (tmp_path / "s").glob(".tmp-*") if d.is_dir()]
        assert len(live) == 1 and (live[0] / "part").is_file()
        owner = json.loads(live[0].with_name(live[0].name + ".owner").read_text())
        assert owner["pid"] == p.pid
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.join()
    assert store.clean_stale_tmp("s") == 1
    assert not list((tmp_path / "s").glob(".tmp-*"))


def _concurrent_build(root, q):
    store = StageStore(root)

    def builder(ctx):
        time.sleep(0.5)
        (ctx.dir / "pid").write_text(str(os.getpid()))
        return {}

    ref = store.build("s", "1", {}, {}, builder)
    q.put((ref.cached, ref.path))


def test_two_runs_at_once_build_once(tmp_path):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_concurrent_build, args=(tmp_path, q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    results = [q.get() for _ in procs]
    assert sorted(c for c, _ in results) == [False, True]  # one built, one found it
    assert len({path for _, path in results}) == 1
    assert len([d for d in (tmp_path / "s").iterdir() if not d.name.startswith(".")]) == 1


def test_file_fingerprint_changes_with_content(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("text\nx\n")
    one = file_fingerprint(f)
    f.write_text("text\ny\n")
    assert one != file_fingerprint(f)
    d = tmp_path / "d"
    d.mkdir()
    (d / "x").write_text("1")
    before = file_fingerprint(d)
    (d / "y").write_text("2")
    assert before != file_fingerprint(d)
