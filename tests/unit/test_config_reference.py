"""docs/config.md is what scripts/config_reference.py writes from the live config models."""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "config_reference", ROOT / "scripts" / "config_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


config_reference = _load_script()


def test_docs_config_md_is_current():
    expected = config_reference.render()
    path = ROOT / "docs" / "config.md"
    current = path.read_text() if path.exists() else ""
    if current != expected:
        diff = "".join(
            list(
                difflib.unified_diff(
                    current.splitlines(keepends=True),
                    expected.splitlines(keepends=True),
                    "docs/config.md",
                    "generated",
                )
            )[:40]
        )
        pytest.fail(
            "docs/config.md is not what the config models give now: run `make config-doc` "
            f"and commit docs/config.md.\n{diff}"
        )


class _Base(BaseModel):
    """Base settings.

    Attributes:
        seed: random seed.
    """

    seed: int = 0


class _Example(_Base):
    """Example settings.

    Attributes (besides :class:`_Base`'s):
        mode: ``a`` or ``b``; long
            enough to wrap.
        low / high: the bounds.
        named: overridden below.

    Not an attribute: this paragraph ends the section.
    """

    mode: str = "a"
    low: int = 1
    high: int = 2
    named: str = Field("x", description="From the field.")
    missing: list[str] = Field(default_factory=list)


def test_descriptions_come_from_field_then_docstring_then_base_class():
    describe = config_reference.field_description
    assert describe(_Example, "mode") == "``a`` or ``b``; long enough to wrap."
    assert describe(_Example, "low") == describe(_Example, "high") == "the bounds."
    assert describe(_Example, "named") == "From the field."
    assert describe(_Example, "seed") == "random seed."
    assert describe(_Example, "missing") == ""


def test_rendered_table_has_type_default_and_markdown_description():
    text = config_reference.render(_Example)
    assert '| `mode` | `str` | `"a"` | `a` or `b`; long enough to wrap. |' in text
    assert "| `missing` | `list[str]` | `[]` | — |" in text
