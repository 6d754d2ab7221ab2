"""Reading and writing the canonical datasets that flow between stages.

Canonical rows: ``id`` (str), ``text`` (str), ``labels`` (list of str, empty =
unlabeled) and, where known, ``split`` (train/valid/test/unlabeled or "").
Every stage that holds rows also writes ``labels.json``:
``{"labels": [...], "multi_label": bool}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets

SPLITS = ("train", "valid", "test", "unlabeled")

CANONICAL_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "text": datasets.Value("string"),
        "labels": datasets.Sequence(datasets.Value("string")),
        "split": datasets.Value("string"),
    }
)


def write_label_info(directory: Path, labels: list[str], multi_label: bool) -> None:
    (Path(directory) / "labels.json").write_text(
        json.dumps({"labels": list(labels), "multi_label": bool(multi_label)}, indent=2)
    )


def read_label_info(directory: str | Path) -> tuple[list[str], bool]:
    info = json.loads((Path(directory) / "labels.json").read_text())
    return list(info["labels"]), bool(info["multi_label"])


def load_rows(directory: str | Path, name: str = "rows") -> datasets.Dataset:
    return datasets.load_from_disk(str(Path(directory) / name))


def load_splits(directory: str | Path) -> datasets.DatasetDict:
    return datasets.load_from_disk(str(Path(directory) / "splits"))


def load_slices(directory: str | Path) -> dict[str, list[str]]:
    """Nested training slices written by the split stage: ``{"8": [ids], ..., "all": [ids]}``."""
    return json.loads((Path(directory) / "slices.json").read_text())


def label_matrix(labels: list[list[str]], label_names: list[str]) -> Any:
    """Multi-hot numpy matrix (rows x labels) for lists of label names."""
    import numpy as np

    index = {name: i for i, name in enumerate(label_names)}
    y = np.zeros((len(labels), len(label_names)), dtype=np.int64)
    for r, row in enumerate(labels):
        for name in row:
            if name in index:
                y[r, index[name]] = 1
    return y


def to_jsonable(value: Any) -> Any:
    """Plain JSON values (for Prefect table artifacts): no numpy scalars or arrays."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def rows_to_dataset(rows: list[dict[str, Any]], features: datasets.Features) -> datasets.Dataset:
    """A Dataset from a list of dicts, empty lists included (``from_list([])`` loses columns)."""
    columns = {name: [row.get(name) for row in rows] for name in features}
    return datasets.Dataset.from_dict(columns, features=features)


def save_dataset(ds: datasets.Dataset | datasets.DatasetDict, path: str | Path) -> None:
    """``save_to_disk`` that also round-trips zero-row datasets (they need a single shard)."""
    if isinstance(ds, datasets.DatasetDict):
        num_shards = {name: 1 for name, part in ds.items() if len(part) == 0} or None
        if num_shards:
            num_shards = {
                name: 1 if len(part) == 0 else max(1, part.data.nbytes >> 29)
                for name, part in ds.items()
            }
        ds.save_to_disk(str(path), num_shards=num_shards)
    else:
        ds.save_to_disk(str(path), num_shards=1 if len(ds) == 0 else None)
