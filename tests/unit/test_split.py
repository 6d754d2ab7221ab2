"""The split stage: proportions, stratification, nested slices, determinism, user splits
and slices, rare-label warnings, caching."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from label_pipeline.data import label_matrix, load_slices, load_splits
from label_pipeline.errors import ConfigError
from label_pipeline.store import StageStore
from tasks.split import (
    SplitConfig,
    iterative_stratification,
    nested_slices,
    run_split,
    split_rows,
    stratified_assignment,
)

NAMES = ["a", "b", "c", "d", "e"]


def _multi(n=800, seed=0):
    rng = np.random.default_rng(seed)
    p = np.array([0.5, 0.3, 0.15, 0.08, 0.04])
    labels = []
    for _ in range(n):
        row = [NAMES[j] for j in range(5) if rng.random() < p[j]]
        labels.append(row or [NAMES[int(rng.integers(5))]])
    return [f"id{i}" for i in range(n)], labels


def test_iterative_stratification_proportions_and_every_label_everywhere():
    ids, labels = _multi()
    y = label_matrix(labels, NAMES)
    assign = iterative_stratification(y, [0.5, 0.25, 0.25], np.random.default_rng(0))
    sizes = np.bincount(assign, minlength=3) / len(ids)
    assert np.allclose(sizes, [0.5, 0.25, 0.25], atol=0.02)
    for s, frac in enumerate([0.5, 0.25, 0.25]):
        per_label = y[assign == s].sum(axis=0)
        assert (per_label > 0).all()
        assert np.allclose(per_label, frac * y.sum(axis=0), atol=2.0)


def test_single_label_stratified_sampling_per_class():
    classes = np.repeat([0, 1, 2], [200, 40, 8])
    assign = stratified_assignment(classes, [0.5, 0.25, 0.25], np.random.default_rng(1))
    for c, n in ((0, 200), (1, 40), (2, 8)):
        counts = np.bincount(assign[classes == c], minlength=3)
        assert counts.tolist() == [n // 2, n // 4, n // 4]


@pytest.mark.parametrize("multi_label", [True, False])
def test_nested_slices_are_nested_exact_and_skip_large_sizes(multi_label):
    ids, labels = _multi(300)
    if not multi_label:
        labels = [row[:1] for row in labels]
    y = label_matrix(labels, NAMES)
    slices, skipped = nested_slices(
        y, [8, 16, 64, 128, 300, 500], multi_label, np.random.default_rng(0)
    )
    assert list(slices) == [8, 16, 64, 128] and skipped == [300, 500]
    for small, big in zip([8, 16, 64], [16, 64, 128], strict=True):
        assert len(slices[small]) == small
        assert set(slices[small]) <= set(slices[big])
    # stratified: the frequent labels keep roughly their share in the 128-row slice
    share_all = y.sum(axis=0) / len(y)
    share_128 = y[slices[128]].sum(axis=0) / 128
    assert np.abs(share_128 - share_all)[:3].max() < 0.05


def test_split_rows_deterministic_for_a_seed_and_different_across_seeds():
    ids, labels = _multi(400)
    given = [""] * len(ids)
    a = split_rows(ids, labels, given, NAMES, True, SplitConfig(seed=5))
    b = split_rows(ids, labels, given, NAMES, True, SplitConfig(seed=5))
    c = split_rows(ids, labels, given, NAMES, True, SplitConfig(seed=6))
    assert a[0] == b[0] and a[1] == b[1]
    assert a[0] != c[0] and a[1]["8"] != c[1]["8"]


def test_user_splits_kept_unlabeled_rows_and_rare_label_warning():
    ids, labels = _multi(200)
    labels += [[], [], ["rare"]]
    ids += ["u1", "u2", "r1"]
    given = ["test"] * 10 + [""] * (len(ids) - 10)
    given[-2] = "train"  # an unlabeled row marked train still goes to unlabeled
    split, slices, warnings, _ = split_rows(
        ids, labels, given, [*NAMES, "rare"], True, SplitConfig()
    )
    assert split[:10] == ["test"] * 10
    assert split[-3:-1] == ["unlabeled", "unlabeled"]
    assert any("'rare'" in w and "valid" in w and "test" in w for w in warnings)
    assert any("carry no label" in w for w in warnings)
    assert slices["all"] == [i for i, s in zip(ids, split, strict=True) if s == "train"]


def test_stratified_method_refuses_multi_label():
    ids, labels = _multi(50)
    with pytest.raises(ConfigError, match="single-label"):
        split_rows(ids, labels, [""] * 50, NAMES, True, SplitConfig(method="stratified"))


def test_fractions_validated():
    with pytest.raises(ValueError, match="leaves no rows for train"):
        SplitConfig(valid_fraction=0.5, test_fraction=0.5)


def _pipeline_input(tmp_path, n=120, slice_file=None, n_unlabeled=20):
    from tasks.clean import CleanConfig, run_clean
    from tasks.ingest import IngestConfig, run_ingest

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        lab = ["x", "y", "z"][i % 3]
        words = " ".join(f"{lab}{int(k)}" for k in rng.integers(0, 1000, 8))
        rows.append((f"{words} number {i}", lab if i < n - n_unlabeled else ""))
    path = tmp_path / "d.csv"
    pd.DataFrame(rows, columns=["text", "labels"]).to_csv(path, index=False)
    store = StageStore(tmp_path / "store")
    ing = run_ingest(store, IngestConfig(path=str(path), slice_file=slice_file))
    return store, run_clean(store, CleanConfig(), ing)


def test_stage_outputs_min_slice_and_caching(tmp_path):
    store, clean = _pipeline_input(tmp_path)
    cfg = SplitConfig(slice_sizes=[8, 16, 500])
    ref = run_split(store, cfg, clean)
    dd = load_splits(ref.dir)
    assert set(dd) == {"train", "valid", "test", "unlabeled"}
    assert [len(dd[s]) for s in ("train", "valid", "test", "unlabeled")] == [50, 25, 25, 20]
    slices = load_slices(ref.dir)
    assert list(slices) == ["8", "16", "all"] and len(slices["all"]) == 50
    min_slice = dict(zip(dd["train"]["id"], dd["train"]["min_slice"], strict=True))
    assert all(min_slice[i] == 8 for i in slices["8"])
    assert all(min_slice[i] == 16 for i in set(slices["16"]) - set(slices["8"]))
    assert sorted(set(min_slice.values())) == [8, 16, 50]
    assert set(dd["unlabeled"]["split"]) == {"unlabeled"} and all(
        x == [] for x in dd["unlabeled"]["labels"]
    )
    summary = (ref.dir / "summary.md").read_text()
    assert "[500] skipped" in summary and "| x |" in summary
    assert 10 <= len(json.loads((ref.dir / "sample.json").read_text())) <= 20
    assert run_split(store, cfg, clean).cached
    assert (
        run_split(store, cfg.model_copy(update={"seed": 1}), clean).fingerprint != ref.fingerprint
    )


def test_no_unlabeled_rows_gives_an_empty_pool_that_loads(tmp_path):
    from label_pipeline.errors import EmptyPoolError
    from tasks.adapt import AdaptConfig, run_adapt

    store, clean = _pipeline_input(tmp_path, n=60, n_unlabeled=0)
    ref = run_split(store, SplitConfig(slice_sizes=[8]), clean)
    dd = load_splits(ref.dir)
    assert len(dd["unlabeled"]) == 0 and len(dd["train"]) == 30
    assert dd["unlabeled"].column_names == dd["valid"].column_names
    # a downstream stage that needs a pool says so instead of crashing in the loader
    with pytest.raises(EmptyPoolError):
        run_adapt(store, AdaptConfig(), ref)


def test_user_slice_file_overrides(tmp_path):
    sl = tmp_path / "slices.json"
    sl.write_text(json.dumps({"4": ["row-0", "row-1", "row-2", "row-3"], "6": ["row-4", "row-5"]}))
    store, clean = _pipeline_input(tmp_path, slice_file=str(sl))
    ref = run_split(store, SplitConfig(), clean)
    slices = load_slices(ref.dir)
    assert list(slices) == ["4", "6", "all"]
    assert slices["6"] == [f"row-{i}" for i in range(6)]
    assert set(slices["6"]) <= set(slices["all"])


def test_failed_build_leaves_no_directory(tmp_path):
    store, clean = _pipeline_input(tmp_path)
    (clean.dir / "labels.json").write_text(
        json.dumps({"labels": ["x", "y", "z"], "multi_label": True})
    )
    with pytest.raises(ConfigError):
        run_split(store, SplitConfig(method="stratified"), clean)
    assert not (store.root / "split").exists() or not [
        p for p in (store.root / "split").iterdir() if p.is_dir()
    ]


def test_assign_splits_adds_extra_labels_and_fixes_without_moving_the_other_rows():
    from tasks.split import SplitConfig, assign_splits

    ids = [f"r{i}" for i in range(80)]
    labels = [["a"] if i % 2 else ["b"] for i in range(60)] + [[] for _ in range(20)]
    cols = {"id": ids, "text": [f"text {i}" for i in ids], "labels": labels, "split": []}
    cfg = SplitConfig(slice_sizes=[8])
    plain = assign_splits(cols, ["a", "b"], False, cfg)
    assert plain.method == "stratified" and plain.split[60:] == ["unlabeled"] * 20
    first_train = next(i for i, s in zip(ids, plain.split, strict=True) if s == "train")

    with_extra = [*labels[:60], ["a"], *labels[61:]]
    fixes = ({first_train: [], "r70": []}, {first_train: "fixes.csv", "r70": "fixes.csv"}, [])
    res = assign_splits(
        cols, ["a", "b"], False, cfg, None, (with_extra, {"r60": "extra.csv"}, []), fixes
    )
    kept = dict(zip(res.ids, res.split, strict=True))
    assert first_train not in kept and "r70" not in kept  # dropped by the fixes
    assert kept["r60"] == "train" and all("r60" in v for v in res.slices.values())
    # every other row keeps the split and slice membership a run without them gets
    others = {
        i: s for i, s in zip(ids, plain.split, strict=True) if i not in {first_train, "r60", "r70"}
    }
    assert all(kept[i] == s for i, s in others.items())
    assert [i for i in res.slices["8"] if i != "r60"] == [
        i for i in plain.slices["8"] if i != first_train
    ]
    assert res.fixed["dropped"] == {"train": 1, "unlabeled": 1}
    assert res.source_of["r60"] == "extra.csv" and res.texts[res.ids.index("r60")] == "text r60"
