"""Sharded row-wise stages: plain loop, Prefect mapped tasks, Dask, and a remote store."""

from __future__ import annotations

import datasets
import pytest
from shard_jobs import (
    ShardJob,
    apply_sharded,
    function_path,
    map_shard_job,
    text_features,
)

from label_pipeline.runners import RunnerConfig
from label_pipeline.shards import shard_ranges
from label_pipeline.store import StageStore


def _source(store: StageStore, n: int = 53):
    def build(ctx):
        ds = datasets.Dataset.from_dict(
            {
                "id": [f"r{i}" for i in range(n)],
                "text": [f"  Row  {i} says {'HELLO ' * (i % 5)}world " for i in range(n)],
            }
        )
        ds.save_to_disk(str(ctx.dir / "rows"))
        return {"rows": n}

    return store.build("ingest", "1", {"n": n}, {}, build)


def _job(src, n_shards, stage_fp="fp-test"):
    return ShardJob(
        stage="features",
        version="1",
        fingerprint=stage_fp,
        source=src,
        fn=function_path(text_features),
        kwargs={"lowercase": True},
        n_shards=n_shards,
    )


def _unsharded(src):
    rows = datasets.load_from_disk(str(src.dir / "rows"))
    return text_features(rows, lowercase=True)


def test_shard_ranges_cover_rows_in_order():
    assert shard_ranges(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert shard_ranges(2, 4) == [(0, 1), (1, 2)]
    assert shard_ranges(0, 3) == [(0, 0)]
    for n, k in [(53, 4), (1000, 7), (5, 5)]:
        r = shard_ranges(n, k)
        assert r[0][0] == 0 and r[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(r, r[1:], strict=False))
        sizes = [b - a for a, b in r]
        assert max(sizes) - min(sizes) <= 1


def test_loop_path_equals_unsharded_and_caches_each_shard(tmp_path):
    store = StageStore(tmp_path / "store")
    src = _source(store)
    job = _job(src, 4)
    out = apply_sharded(store, job)
    assert out.to_dict() == _unsharded(src)
    # each shard is a complete stage directory of its own, found again on the next call
    shard_dirs = sorted(
        d for d in (tmp_path / "store" / "features.shards").iterdir() if not d.name.startswith(".")
    )
    assert len(shard_dirs) == 4
    before = {d.name: (d / "manifest.json").stat().st_mtime_ns for d in shard_dirs}
    assert apply_sharded(store, job).to_dict() == out.to_dict()
    assert {d.name: (d / "manifest.json").stat().st_mtime_ns for d in shard_dirs} == before
    # a different shard count is a different set of shards with the same assembled result
    assert apply_sharded(store, _job(src, 3)).to_dict() == out.to_dict()


def test_unimportable_row_function_is_refused():
    def local_fn(rows):
        return rows

    with pytest.raises(Exception, match="module level"):
        function_path(local_fn)


def test_remote_memory_store_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("LABEL_PIPELINE_STORE_CACHE", str(tmp_path / "cache"))
    import fsspec

    url = f"memory://lp-test-{tmp_path.name}"
    store = StageStore(url)
    src = _source(store, n=21)
    assert src.store == url and src.dir.is_dir()
    out = apply_sharded(store, _job(src, 3))
    assert out.to_dict() == _unsharded(src)
    fs = fsspec.filesystem("memory")
    remote = fs.find(store.remote_root)
    assert sum(p.endswith("/manifest.json") for p in remote) == 4  # source + 3 shards
    assert not [p for p in remote if "/.tmp-" in p]

    # a second machine: empty local cache, same URL; everything comes from the remote store
    monkeypatch.setenv("LABEL_PIPELINE_STORE_CACHE", str(tmp_path / "cache2"))
    other = StageStore(url)
    assert other.root != store.root and other.is_complete("ingest", src.fingerprint)
    again = other.localize(src.model_copy(update={"path": "/nonexistent"}))
    assert again.dir.is_relative_to(other.root)
    assert apply_sharded(other, _job(again, 3)).to_dict() == out.to_dict()


def test_remote_store_failed_build_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("LABEL_PIPELINE_STORE_CACHE", str(tmp_path / "cache"))
    import fsspec

    url = f"memory://lp-fail-{tmp_path.name}"
    store = StageStore(url)

    def boom(ctx):
        (ctx.dir / "part").write_text("x")
        raise ValueError("bad")

    with pytest.raises(ValueError):
        store.build("s", "1", {}, {}, boom)
    fs = fsspec.filesystem("memory")
    assert not fs.exists(store.remote_root) or not fs.find(store.remote_root)
    assert not list((tmp_path / "cache").rglob("part"))


@pytest.mark.slow
@pytest.mark.integration
def test_mapped_shards_on_dask_equal_unsharded(tmp_path, prefect_server):
    pytest.importorskip("prefect_dask")
    from prefect import flow

    store = StageStore(tmp_path / "store")
    src = _source(store, n=40)
    job = _job(src, 4, stage_fp="fp-dask")
    runner = RunnerConfig(kind="dask", n_workers=2, processes=False)

    @flow(name="shards-test")
    def sharded() -> list:
        refs = map_shard_job(store, job, runner)
        return [r.model_dump() for r in refs]

    first = sharded()
    assert len(first) == 4 and not any(r["cached"] for r in first)
    assert apply_sharded(store, job).to_dict() == _unsharded(src)
    # a re-run is answered from Prefect's cache / the store, shard by shard
    second = sharded()
    assert [r["path"] for r in second] == [r["path"] for r in first]
    assert all(r["cached"] for r in second)


def _splits_stage(store: StageStore):
    """A split-stage output: splits/ (train/valid/test/unlabeled) and labels.json."""
    from label_pipeline.data import CANONICAL_FEATURES, write_label_info

    texts = {
        "joy": "I am so happy and delighted today, what a wonderful gift",
        "anger": "This makes me furious, I am so angry at them",
        "sadness": "I feel sad and lonely, I miss her so much",
    }
    names = list(texts)

    def rows(split, n, labelled):
        cols = {"id": [], "text": [], "labels": [], "split": []}
        for i in range(n):
            lab = names[i % 3]
            cols["id"].append(f"{split}-{i}")
            cols["text"].append(f"{texts[lab]} ({i})")
            cols["labels"].append([lab] if labelled else [])
            cols["split"].append(split)
        return datasets.Dataset.from_dict(cols, features=CANONICAL_FEATURES)

    def build(ctx):
        datasets.DatasetDict(
            train=rows("train", 6, True),
            valid=rows("valid", 9, True),
            test=rows("test", 9, True),
            unlabeled=rows("unlabeled", 25, False),
        ).save_to_disk(str(ctx.dir / "splits"))
        write_label_info(ctx.dir, names, multi_label=True)
        return {}

    return store.build("split", "1", {"test": "zero-shot-shards"}, {}, build)


@pytest.mark.slow
@pytest.mark.integration
def test_zero_shot_shards_mapped_on_dask_then_assembled_by_the_stage(tmp_path, prefect_server):
    pytest.importorskip("prefect_dask")
    from prefect import flow

    from tasks import zero_shot
    from tasks.zero_shot import map_zero_shot_shards

    cfg = zero_shot.ZeroShotConfig(backend="embedding", shard_size=10, device={"device": "cpu"})
    mapped_store = StageStore(tmp_path / "mapped")
    splits = _splits_stage(mapped_store)
    runner = RunnerConfig(kind="dask", n_workers=2, processes=False)

    @flow(name="zero-shot-shards-test")
    def premap() -> int:
        return map_zero_shot_shards(str(mapped_store.root), cfg, splits, runner)

    n = premap()
    fp = zero_shot.stage_fingerprint(cfg, splits)
    shards_dir = zero_shot.shards_dir_for(mapped_store, fp)
    assert n == len(zero_shot.plan_shards(splits.dir, 10)) == 5  # valid 1, test 1, unlabeled 3
    assert len(list(shards_dir.glob(f"shard-*/{zero_shot.SHARD_DONE}"))) == n
    mapped = zero_shot.run_zero_shot(mapped_store, cfg, splits)

    plain_store = StageStore(tmp_path / "plain")
    plain = zero_shot.run_zero_shot(plain_store, cfg, _splits_stage(plain_store))
    assert mapped.fingerprint == plain.fingerprint
    a = datasets.load_from_disk(str(mapped.dir / "unlabeled")).to_pandas()
    b = datasets.load_from_disk(str(plain.dir / "unlabeled")).to_pandas()
    assert list(a["id"]) == list(b["id"])
    score_cols = [c for c in a.columns if c.startswith("score_")]
    assert score_cols and (abs(a[score_cols] - b[score_cols]).to_numpy().max() < 1e-5)
    # the stage is complete: mapping again does nothing
    assert premap() == 0


def test_runner_config_and_task_runner_choice():
    from prefect.task_runners import ThreadPoolTaskRunner
    from pydantic import ValidationError

    from flows.config import PipelineConfig
    from label_pipeline.runners import is_dask_runner, make_task_runner

    assert isinstance(make_task_runner(RunnerConfig()), ThreadPoolTaskRunner)
    assert RunnerConfig().shard_count() == 1
    assert RunnerConfig(kind="dask", n_workers=3).shard_count() == 3
    assert RunnerConfig(kind="dask", n_shards=8).shard_count() == 8
    remote = make_task_runner(RunnerConfig(kind="dask", address="tcp://10.1.2.3:8786"))
    assert is_dask_runner(remote) and remote.address == "tcp://10.1.2.3:8786"
    with pytest.raises(ValidationError, match="runner.kind='dask'"):
        PipelineConfig.model_validate({"runner": {"address": "tcp://10.1.2.3:8786"}})
    with pytest.raises(ValidationError, match="runner.kind"):
        PipelineConfig.model_validate({"runner": {"kind": "spark"}})


def test_file_url_store_is_the_local_fast_path(tmp_path):
    store = StageStore(f"file://{tmp_path}/store")
    assert not store.is_remote and store.root == (tmp_path / "store").resolve()
    ref = _source(store, n=3)
    assert ref.store is None and ref.dir.parent.parent == store.root
