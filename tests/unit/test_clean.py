"""The clean stage: text rules, empty/short rows, exact and near duplicates, conflicts,
and the accounting of every dropped row."""

from __future__ import annotations

import json
import random

import datasets
import numpy as np
import pandas as pd
import pytest

from label_pipeline.data import load_rows
from label_pipeline.store import StageStore
from tasks.clean import (
    CleanConfig,
    TextCleaner,
    candidate_pairs,
    clean_rows,
    minhash_signatures,
    shingles,
)
from tasks.ingest import IngestConfig, run_ingest


def _clean(text: str, **cfg) -> str:
    return TextCleaner(CleanConfig(**cfg))(text)


def _rows(items):
    ids = [f"r{i}" for i in range(len(items))]
    return ids, [t for t, _ in items], [list(lab) for _, lab in items]


def test_entities_unicode_and_whitespace():
    assert _clean("Tom &amp; Jerry &gt; all  &#39;ok&#39;") == "Tom & Jerry > all 'ok'"
    assert _clean("ｆｕｌｌ\u00a0width   ﬁne\t\tline") == "full width fine line"
    assert _clean("a\n\n\n\n b ") == "a\n\nb"
    assert _clean("Tom &amp; Jerry", unescape_html=False) == "Tom &amp; Jerry"


def test_urls_mentions_images_comments():
    text = "see [the docs](https://x.org/a) or https://y.com/b?c=1 ping @octo-cat mail me@x.org ![shot](http://i/p.png)"
    out = _clean(text, urls="drop")
    assert out == "see the docs or ping mail me@x.org"
    assert _clean(text) == "see the docs or [url] ping mail me@x.org"  # the default marker
    kept = _clean(text, remove_urls=False, remove_mentions=False, remove_markdown_images=False)
    assert "https://y.com/b?c=1" in kept and "@octo-cat" in kept and "![shot]" in kept
    assert _clean("before <!-- please describe --> after") == "before after"


def test_issue_template_boilerplate_and_one_line_headings():
    issue = "### Describe the bug\nIt crashes\n<!-- A clear description -->\n- [ ] I searched issues\n- [x] I read docs\n**To Reproduce**\nrun it"
    assert _clean(issue) == "It crashes\n\nrun it"
    assert _clean("# AVE!") == "# AVE!"  # one line: content, not a template
    assert _clean(issue, remove_boilerplate=False).startswith("### Describe the bug")
    custom = _clean("Version: 1.2\nreal text", boilerplate_patterns=[r"^Version:.*$"])
    assert custom == "real text"


def test_code_blocks_keep_shorten_drop_and_are_left_alone():
    code = "\n".join(
        ["```python", "@decorator", "# comment &amp;", *[f"x{i} = {i}" for i in range(8)], "```"]
    )
    text = f"Error here:\n{code}\nthanks @bob"
    kept = _clean(text, code_blocks="keep")
    assert "@decorator" in kept and "# comment &amp;" in kept and "@bob" not in kept
    short = _clean(text, code_blocks="shorten", code_max_lines=3)
    assert short.split("\n") == [
        "Error here:",
        "```python",
        "@decorator",
        "# comment &amp;",
        "x0 = 0",
        "...",
        "```",
        "thanks",
    ]
    assert _clean(text, code_blocks="drop") == "Error here:\nthanks"


def test_empty_and_short_rows_dropped_with_reason():
    ids, texts, labels = _rows(
        [("ok fine", ["a"]), ("", []), ("  <!-- x --> ", ["a"]), ("hi", []), ("a longer text", [])]
    )
    res = clean_rows(ids, texts, labels, CleanConfig(min_chars=3))
    assert [ids[i] for i in res.kept] == ["r0", "r4"]
    assert {d["id"]: d["reason"] for d in res.dropped} == {
        "r1": "empty",
        "r2": "empty",
        "r3": "too_short",
    }
    assert res.dropped[1]["text"] == "  <!-- x --> "  # the text as ingested


def test_exact_duplicates_prefer_the_labelled_copy():
    ids, texts, labels = _rows(
        [
            ("The app  crashes", []),
            ("the app crashes", ["bug"]),
            ("THE APP CRASHES", []),
            ("other", []),
        ]
    )
    res = clean_rows(ids, texts, labels, CleanConfig(near_duplicates=False))
    assert [ids[i] for i in res.kept] == ["r1", "r3"]
    assert {(d["id"], d["reason"], d["duplicate_of"]) for d in res.dropped} == {
        ("r0", "duplicate", "r1"),
        ("r2", "duplicate", "r1"),
    }


def test_near_duplicates_prefer_labelled_copy_and_spare_different_texts():
    base = "the application crashes every time I open the settings page on my phone"
    ids, texts, labels = _rows(
        [
            (base + " today", []),
            (base + " again", ["bug"]),
            (
                "please add a dark theme for the settings page of the application on phones",
                ["feature"],
            ),
            (base + "!", []),
        ]
    )
    res = clean_rows(ids, texts, labels, CleanConfig(near_dup_threshold=0.8))
    assert [ids[i] for i in res.kept] == ["r1", "r2"]
    assert {d["id"]: (d["reason"], d["duplicate_of"]) for d in res.dropped} == {
        "r0": ("near_duplicate", "r1"),
        "r3": ("near_duplicate", "r1"),
    }
    assert len(clean_rows(ids, texts, labels, CleanConfig(near_duplicates=False)).kept) == 4


def test_minhash_lsh_finds_similar_pairs_only():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(2000)]
    docs = [" ".join(rng.choices(vocab, k=30)) for _ in range(300)]
    twin = docs[10].split()
    twin[-1] = "changed"
    docs.append(" ".join(twin))
    sig = minhash_signatures([shingles(d, 3) for d in docs], 128)
    assert sig.shape == (301, 128)
    pairs = candidate_pairs(sig, 9, 13)
    assert (10, 300) in pairs and len(pairs) < 10


@pytest.mark.parametrize("policy", ["report", "drop"])
def test_conflicting_labels_are_reported_not_resolved(policy):
    ids, texts, labels = _rows(
        [
            ("it is broken", ["bug"]),
            ("It is broken", ["question"]),
            ("it is broken", []),
            ("fine", ["a"]),
        ]
    )
    res = clean_rows(ids, texts, labels, CleanConfig(conflicts=policy, near_duplicates=False))
    assert len(res.conflicts) == 1 and res.conflicts[0]["ids"] == ["r0", "r1"]
    assert res.conflicts[0]["labels"] == [["bug"], ["question"]]
    kept = [ids[i] for i in res.kept]
    if policy == "report":
        assert kept == ["r0", "r1", "r3"]
        assert [(d["id"], d["reason"]) for d in res.dropped] == [("r2", "duplicate")]
    else:
        assert kept == ["r3"]
        assert sorted((d["id"], d["reason"]) for d in res.dropped) == [
            ("r0", "conflict"),
            ("r1", "conflict"),
            ("r2", "conflict"),
        ]


def test_accounting_invariant_on_messy_random_rows():
    rng = random.Random(3)
    vocab = [
        "crash",
        "error",
        "add",
        "please",
        "how",
        "why",
        "docs",
        "ui",
        "&amp;",
        "@bob",
        "http://x.y",
        "ok",
    ]
    items = []
    for i in range(600):
        if i % 7 == 0 and items:
            t, lab = rng.choice(items)
            items.append(
                (t.upper() if rng.random() < 0.5 else t + " !", rng.choice([lab, [], ["z"]]))
            )
            continue
        text = " ".join(rng.choices(vocab, k=rng.randint(0, 12)))
        items.append((text, rng.choice([[], ["a"], ["b"], ["a", "b"]])))
    ids, texts, labels = _rows(items)
    for policy in ("report", "drop"):
        res = clean_rows(ids, texts, labels, CleanConfig(conflicts=policy))
        assert len(res.kept) + len(res.dropped) == len(ids)
        dropped_ids = [d["id"] for d in res.dropped]
        assert len(set(dropped_ids)) == len(dropped_ids)
        assert set(dropped_ids).isdisjoint(ids[i] for i in res.kept)
        assert {d["reason"] for d in res.dropped} <= {
            "empty",
            "too_short",
            "duplicate",
            "near_duplicate",
            "conflict",
        }


def _ingested(tmp_path, rows):
    path = tmp_path / "in.csv"
    pd.DataFrame(rows, columns=["text", "labels"]).to_csv(path, index=False)
    store = StageStore(tmp_path / "store")
    return store, run_ingest(store, IngestConfig(path=str(path)))


def test_stage_outputs_caching_and_accounting(tmp_path):
    from tasks.clean import run_clean

    rows = [
        ("the app crashes &amp; burns", "bug"),
        ("The app crashes & burns", ""),
        ("add a dark mode please", "feature"),
        ("add a dark mode please", "question"),
        ("", ""),
        ("how do I install this thing", "question"),
    ]
    store, ing = _ingested(tmp_path, rows)
    ref = run_clean(store, CleanConfig(), ing)
    kept, dropped = load_rows(ref.dir), datasets.load_from_disk(str(ref.dir / "dropped"))
    assert len(kept) + len(dropped) == len(rows)
    assert kept["text"][0] == "the app crashes & burns" and kept["labels"][0] == ["bug"]
    assert set(dropped.column_names) == {"id", "text", "labels", "reason", "duplicate_of"}
    assert sorted(dropped["reason"]) == ["duplicate", "empty"]
    conflicts = json.loads((ref.dir / "conflicts.json").read_text())
    assert len(conflicts) == 1 and conflicts[0]["ids"] == ["row-2", "row-3"]
    summary = (ref.dir / "summary.md").read_text()
    assert "Conflicts: 1" in summary and "| duplicate | 1 |" in summary
    assert ref.manifest()["rows_in"] == 6 and ref.manifest()["rows_out"] == 4
    assert run_clean(store, CleanConfig(), ing).cached
    other = run_clean(store, CleanConfig(conflicts="drop"), ing)
    assert other.fingerprint != ref.fingerprint and len(load_rows(other.dir)) == 2


def test_failed_build_leaves_no_directory(tmp_path, monkeypatch):
    import tasks.clean as clean

    store, ing = _ingested(tmp_path, [("a b c", "x"), ("d e f", "y")])

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(clean, "clean_rows", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        clean.run_clean(store, CleanConfig(), ing)
    assert not [p for p in (store.root / "clean").iterdir() if p.is_dir()]


def test_near_dup_pass_scales_linearly():
    import time

    rng = np.random.default_rng(0)
    vocab = np.array([f"w{i}" for i in range(5000)])
    texts = [" ".join(rng.choice(vocab, 20)) for _ in range(10_000)]
    ids = [str(i) for i in range(len(texts))]
    t0 = time.perf_counter()
    res = clean_rows(ids, texts, [[] for _ in texts], CleanConfig())
    assert len(res.kept) == len(texts)
    assert (
        time.perf_counter() - t0 < 20
    )  # seconds on a slow shared CI core; all-pairs would be far slower
