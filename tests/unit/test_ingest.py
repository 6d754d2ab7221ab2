"""The ingest stage: every input format, label mapping, slices and bad-input messages."""

from __future__ import annotations

import json

import datasets
import pandas as pd
import pytest

from label_pipeline.data import load_rows, read_label_info
from label_pipeline.errors import ConfigError, InputDataError
from label_pipeline.store import StageStore
from tasks.ingest import (
    IngestConfig,
    ingest_rows,
    parse_labels,
    read_slice_file,
    run_ingest,
    source_inputs,
)

ROWS = [
    ("the app crashes on start", "bug"),
    ("please add dark mode", "feature"),
    ("how do I install it?", "question"),
    ("crash and also a request", "bug;feature"),
    ("nothing to see here", ""),
]


def _csv(path, rows=ROWS, sep=","):
    pd.DataFrame(rows, columns=["text", "labels"]).to_csv(path, index=False, sep=sep)
    return path


def _ingest(cfg: IngestConfig):
    cols, facts = ingest_rows(cfg)
    return cols, facts


def _stage_dirs(store: StageStore) -> list:
    d = store.root / "ingest"
    return [p for p in d.iterdir() if p.is_dir()] if d.is_dir() else []


def test_default_config_reads_embedded_data(tmp_path):
    store = StageStore(tmp_path / "store")
    ref = run_ingest(store, IngestConfig())
    rows = load_rows(ref.dir)
    names, multi = read_label_info(ref.dir)
    assert len(rows) == 5600 and multi
    assert names == sorted(["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"])
    assert sum(1 for x in rows["labels"] if x) == 600
    assert rows[0]["id"] == "row-0" and set(rows["split"]) == {""}
    assert (ref.dir / "summary.md").is_file() and 10 <= len(
        json.loads((ref.dir / "sample.json").read_text())
    ) <= 20
    assert ref.manifest()["rows_out"] == 5600
    again = run_ingest(store, IngestConfig())
    assert again.cached and again.fingerprint == ref.fingerprint


def test_csv_and_tsv(tmp_path):
    for sep, name in ((",", "d.csv"), ("\t", "d.tsv")):
        cols, facts = _ingest(IngestConfig(path=str(_csv(tmp_path / name, sep=sep))))
        assert cols["labels"] == [["bug"], ["feature"], ["question"], ["bug", "feature"], []]
        assert cols["id"] == [f"row-{i}" for i in range(5)]
        assert facts["multi_label"] and facts["labels"] == ["bug", "feature", "question"]


def test_headerless_tsv_with_numbered_columns(tmp_path):
    p = tmp_path / "g.tsv"
    p.write_text("a good day\t1\tx1\na bad day\t0\tx2\nmeh\t0,1\tx3\n")
    cols, facts = _ingest(
        IngestConfig(
            path=str(p),
            header=False,
            text_column="0",
            label_column="1",
            label_separator=",",
            id_column="2",
            label_map={"0": "sad", "1": "happy"},
        )
    )
    assert cols["id"] == ["x1", "x2", "x3"]
    assert cols["labels"] == [["happy"], ["sad"], ["happy", "sad"]]


def test_jsonl_with_list_labels_and_json_array(tmp_path):
    recs = [
        {"body": t, "tags": lab.split(";") if lab else [], "uid": f"u{i}"}
        for i, (t, lab) in enumerate(ROWS)
    ]
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    cfg = IngestConfig(path=str(p), text_column="body", label_column="tags", id_column="uid")
    cols, _ = _ingest(cfg)
    assert cols["id"][0] == "u0" and cols["labels"][3] == ["bug", "feature"]
    arr = tmp_path / "d.json"
    arr.write_text(json.dumps(recs))
    assert _ingest(cfg.model_copy(update={"path": str(arr)}))[0] == cols
    # a JSON-ish list inside a string cell
    assert parse_labels('["a", "b"]', ";") == ["a", "b"] and parse_labels("['x']", ";") == ["x"]


def test_parquet(tmp_path):
    df = pd.DataFrame(
        {"text": [t for t, _ in ROWS], "labels": [lab.split(";") if lab else [] for _, lab in ROWS]}
    )
    df.to_parquet(tmp_path / "d.parquet")
    cols, facts = _ingest(IngestConfig(path=str(tmp_path / "d.parquet")))
    assert (
        cols["labels"][3] == ["bug", "feature"] and cols["labels"][4] == [] and facts["multi_label"]
    )


def test_save_to_disk_directory_with_class_labels(tmp_path):
    feats = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    ds = datasets.Dataset.from_dict(
        {"sentence": ["bad", "good", "fine"], "label": [0, 1, 1]}, features=feats
    )
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "hf"))
    cols, facts = _ingest(
        IngestConfig(path=str(tmp_path / "hf"), text_column="sentence", label_column="label")
    )
    assert cols["labels"] == [["neg"], ["pos"], ["pos"], ["neg"]]
    assert not facts["multi_label"] and facts["format"] == "hf_disk"


def _issue(n, title, body, labels, pr=False):
    out = {
        "number": n,
        "title": title,
        "body": body,
        "labels": [{"name": x, "color": "fff"} for x in labels],
    }
    out["pull_request"] = {"url": "u"} if pr else None
    return out


def test_github_dump_with_label_mapping(tmp_path):
    issues = [
        _issue(1, "Crash", "it crashes", ["kind/bug", "area/ui"]),
        _issue(2, "Add X", None, ["feature request"]),
        _issue(3, "Fix crash", "patch", ["kind/bug"], pr=True),
        _issue(4, "Docs?", "where", ["question"]),
        _issue(5, "Misc", "", ["wontfix"]),
    ]
    p = tmp_path / "issues.jsonl"
    p.write_text("\n".join(json.dumps(i) for i in issues))
    cfg = IngestConfig(
        path=str(p),
        id_column="number",
        keep_only_mapped=True,
        label_map={"kind/bug": "bug", "feature request": "feature", "question": "question"},
    )
    cols, facts = _ingest(cfg)
    assert facts["format"] == "github" and facts["pull_requests_excluded"] == 1
    assert cols["id"] == ["1", "2", "4", "5"]
    assert cols["text"][0] == "Crash\n\nit crashes" and cols["text"][1] == "Add X"
    assert cols["labels"] == [["bug"], ["feature"], ["question"], []]
    assert any("outside label_map" in w and "area/ui" in w for w in facts["warnings"])
    with_pr, facts_pr = _ingest(cfg.model_copy(update={"include_pull_requests": True}))
    assert len(with_pr["id"]) == 5 and facts_pr["pull_requests_excluded"] == 0
    # without keep_only_mapped unmapped labels are kept, renamed ones renamed
    renamed, _ = _ingest(cfg.model_copy(update={"keep_only_mapped": False}))
    assert renamed["labels"][0] == ["area/ui", "bug"]


def test_split_column_and_aliases(tmp_path):
    df = pd.DataFrame(
        {
            "text": ["a b", "c d", "e f", "g h"],
            "labels": ["x", "y", "x", ""],
            "part": ["train", "Validation", "", "unlabelled"],
        }
    )
    df.to_csv(tmp_path / "s.csv", index=False)
    cols, facts = _ingest(IngestConfig(path=str(tmp_path / "s.csv"), split_column="part"))
    assert cols["split"] == ["train", "valid", "", "unlabeled"]
    df["part"] = ["train", "holdout", "", ""]
    df.to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(InputDataError, match=r"'part'.*holdout"):
        _ingest(IngestConfig(path=str(tmp_path / "s.csv"), split_column="part"))


def test_slice_files_json_and_csv_are_made_nested(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"16": ["c", "d"], "8": ["a", "b"]}))
    assert read_slice_file(tmp_path / "s.json") == {"8": ["a", "b"], "16": ["a", "b", "c", "d"]}
    (tmp_path / "s.csv").write_text("id,slice\na,8\nb,16\n")
    assert read_slice_file(tmp_path / "s.csv") == {"8": ["a"], "16": ["a", "b"]}
    (tmp_path / "bad.json").write_text(json.dumps({"few": ["a"]}))
    with pytest.raises(InputDataError, match="slice names"):
        read_slice_file(tmp_path / "bad.json")


def test_slice_file_in_stage_and_unknown_ids(tmp_path):
    data = _csv(tmp_path / "d.csv")
    (tmp_path / "sl.json").write_text(json.dumps({"2": ["row-0", "row-1"]}))
    store = StageStore(tmp_path / "store")
    ref = run_ingest(store, IngestConfig(path=str(data), slice_file=str(tmp_path / "sl.json")))
    assert json.loads((ref.dir / "user_slices.json").read_text()) == {"2": ["row-0", "row-1"]}
    (tmp_path / "sl.json").write_text(json.dumps({"2": ["row-0", "nope"]}))
    with pytest.raises(InputDataError, match=r"'nope'.*row-<n>"):
        run_ingest(store, IngestConfig(path=str(data), slice_file=str(tmp_path / "sl.json")))


@pytest.mark.parametrize(
    ("setup", "overrides", "error", "pattern"),
    [
        (None, {"path": "missing.csv"}, InputDataError, r"ingest.path: 'missing.csv' not found"),
        ("x.xlsx", {}, ConfigError, r"x.xlsx.*'.xlsx'.*set ingest.format"),
        (
            "d.csv",
            {"text_column": "body"},
            InputDataError,
            r"d.csv: no column 'body'.*ingest.text_column",
        ),
        (
            "d.csv",
            {"label_column": "tags"},
            InputDataError,
            r"no column 'tags'.*ingest.label_column",
        ),
        ("nolabels.csv", {}, InputDataError, r"no labelled rows in column 'labels'"),
        (
            "d.csv",
            {"label_map": {"zzz": "z"}, "keep_only_mapped": True},
            InputDataError,
            r"no labelled rows.*label_map",
        ),
        ("single.csv", {}, InputDataError, r"only one label \('bug'\)"),
        ("d.csv", {"multi_label": False}, InputDataError, r"multi_label is false.*rows \[3\]"),
        ("dupids.csv", {"id_column": "id"}, InputDataError, r"duplicated id.*'a'"),
        ("bad.jsonl", {}, InputDataError, r"bad.jsonl: line 2 is not valid JSON"),
        ("empty.csv", {}, InputDataError, r"every text in column 'text' is empty"),
    ],
)
def test_bad_input_messages(tmp_path, setup, overrides, error, pattern):
    if setup == "x.xlsx":
        (tmp_path / setup).write_text("x")
    elif setup == "d.csv":
        _csv(tmp_path / setup)
    elif setup == "nolabels.csv":
        _csv(tmp_path / setup, [("a b", ""), ("c d", "")])
    elif setup == "single.csv":
        _csv(tmp_path / setup, [("a b", "bug"), ("c d", "bug"), ("e", "")])
    elif setup == "dupids.csv":
        (tmp_path / setup).write_text("id,text,labels\na,x y,p\na,z w,q\n")
    elif setup == "bad.jsonl":
        (tmp_path / setup).write_text('{"text": "a", "labels": ["x"]}\n{"text": oops}\n')
    elif setup == "empty.csv":
        _csv(tmp_path / setup, [("", "a"), (" ", "b")])
    cfg = IngestConfig(**{"path": str(tmp_path / (setup or "unused")), **overrides})
    store = StageStore(tmp_path / "store")
    with pytest.raises(error, match=pattern):
        run_ingest(store, cfg)
    assert _stage_dirs(store) == []  # nothing half-written


def test_undecodable_bytes_replaced_with_warning_or_strict_error(tmp_path):
    p = tmp_path / "latin.csv"
    p.write_bytes("text,labels\ncaf\xe9 ok,a\nfine,b\n".encode("latin-1"))
    cols, facts = _ingest(IngestConfig(path=str(p)))
    assert cols["text"][0] == "caf\ufffd ok"
    assert any("lines 2" in w and "ingest.encoding" in w for w in facts["warnings"])
    with pytest.raises(InputDataError, match=r"line 2 is not valid utf-8.*ingest.encoding"):
        _ingest(IngestConfig(path=str(p), encoding_errors="strict"))
    cols, _ = _ingest(IngestConfig(path=str(p), encoding="latin-1"))
    assert cols["text"][0] == "café ok"


def test_empty_texts_are_kept_with_a_warning(tmp_path):
    cols, facts = _ingest(IngestConfig(path=str(_csv(tmp_path / "d.csv", [*ROWS, ("", "bug")]))))
    assert cols["text"][-1] == "" and any(
        "empty text" in w and "[5]" in w for w in facts["warnings"]
    )


def test_fingerprint_follows_file_content_and_config(tmp_path):
    data = _csv(tmp_path / "d.csv")
    store = StageStore(tmp_path / "store")
    cfg = IngestConfig(path=str(data))
    first = run_ingest(store, cfg)
    assert run_ingest(store, cfg).cached
    assert (
        run_ingest(store, cfg.model_copy(update={"label_separator": "|"})).fingerprint
        != first.fingerprint
    )
    before = source_inputs(cfg)
    _csv(data, [*ROWS, ("one more row", "bug")])
    assert source_inputs(cfg) != before
    changed = run_ingest(store, cfg)
    assert not changed.cached and changed.fingerprint != first.fingerprint


def test_csv_title_body_and_repo_fields_render_into_the_text(tmp_path):
    # the NLBSE'24 layout: repo, created_at, label, title, body
    frame = pd.DataFrame(
        {
            "repo": ["facebook/react", "microsoft/vscode", "opencv/opencv"],
            "created_at": ["2023-08-26 06:33:37"] * 3,
            "label": ["bug", "feature", "question"],
            "title": ["[DevTools Bug] Cannot add node\nagain", "Add a minimap", "How to build?"],
            "body": ["### Repro steps\r\n\r\n1. Run it\r\n", "Please add it.", ""],
        }
    )
    frame.to_csv(tmp_path / "issues.csv", index=False)
    cfg = IngestConfig(
        path=str(tmp_path / "issues.csv"),
        label_column="label",
        text_columns=["title", "body"],
        field_columns=["repo"],
    )
    cols, facts = _ingest(cfg)
    assert facts["labels"] == ["bug", "feature", "question"] and not facts["multi_label"]
    assert cols["text"] == [
        "[DevTools Bug] Cannot add node again\nrepo: facebook/react\n\n### Repro steps\r\n\r\n1. Run it",
        "Add a minimap\nrepo: microsoft/vscode\n\nPlease add it.",
        "How to build?\nrepo: opencv/opencv",
    ]
    assert _ingest(cfg)[0]["text"] == cols["text"]  # deterministic
    # one text column: the field lines come first; no fields: the column as it is
    one, _ = _ingest(cfg.model_copy(update={"text_columns": ["body"]}))
    assert one["text"][1] == "repo: microsoft/vscode\n\nPlease add it."
    plain, _ = _ingest(
        cfg.model_copy(update={"text_columns": None, "text_column": "title", "field_columns": []})
    )
    assert plain["text"][0] == "[DevTools Bug] Cannot add node\nagain"
    with pytest.raises(InputDataError, match=r"no column 'summary'.*ingest\.text_columns"):
        _ingest(cfg.model_copy(update={"text_columns": ["title", "summary"]}))
    with pytest.raises(InputDataError, match=r"no column 'repository'.*ingest\.field_columns"):
        _ingest(cfg.model_copy(update={"field_columns": ["repository"]}))


def test_a_tabular_issue_export_offers_the_template_sections_as_a_field(tmp_path):
    frame = pd.DataFrame(
        {
            "title": ["App crashes", "Add dark mode", "How to build?"],
            "body": [
                "## Describe the bug\nIt crashes.\n```\n# a comment, not a heading\n```\n"
                "## Steps to reproduce\n1. open",
                "Please add it.",
                None,
            ],
            "label": ["bug", "feature", "question"],
        }
    )
    p = tmp_path / "issues.csv"
    frame.to_csv(p, index=False)
    cfg = IngestConfig(
        path=str(p),
        text_columns=["title", "body"],
        field_columns=["sections"],
        label_column="label",
    )
    cols, _ = _ingest(cfg)
    assert cols["text"][0].split("\n")[:2] == [
        "App crashes",
        "sections: Describe the bug, Steps to reproduce",
    ]
    # no heading, no body: no field line
    assert cols["text"][1] == "Add dark mode\n\nPlease add it."
    assert cols["text"][2] == "How to build?"
    # a file's own sections column wins over the derived one
    frame.assign(sections=["mine", "", ""]).to_csv(p, index=False)
    own, _ = _ingest(cfg)
    assert own["text"][0].split("\n")[1] == "sections: mine"
    # with one text column there is no body to read headings from: the column must exist
    frame.to_csv(p, index=False)
    with pytest.raises(InputDataError, match=r"no column 'sections'.*ingest\.field_columns"):
        _ingest(cfg.model_copy(update={"text_columns": ["title"]}))


def test_github_dump_fields_repo_and_template_sections(tmp_path):
    body = (
        "### Describe the bug\n\nIt crashes.\n\n```\n# not a heading\n```\n\n"
        "### Steps to reproduce\n\n1. open\n\n### Describe the bug\n"
    )
    issues = [_issue(1, "Crash", body, ["bug"]), _issue(2, "Add X", "", ["feature"])]
    issues[0]["repository_url"] = "https://api.github.com/repos/octo/app"
    issues[1]["repository"] = {"full_name": "octo/lib"}
    issues[1]["state"] = "open"
    p = tmp_path / "issues.jsonl"
    p.write_text("\n".join(json.dumps(i) for i in issues))
    cols, facts = _ingest(IngestConfig(path=str(p), field_columns=["repo", "sections", "state"]))
    assert facts["format"] == "github"
    assert cols["text"][0] == (
        "Crash\nrepo: octo/app\nsections: Describe the bug, Steps to reproduce\n\n" + body.strip()
    )
    assert cols["text"][1] == "Add X\nrepo: octo/lib\nstate: open"
    # the default for a dump: title, blank line, body
    default, _ = _ingest(IngestConfig(path=str(p)))
    assert default["text"] == ["Crash\n\n" + body.strip(), "Add X"]
