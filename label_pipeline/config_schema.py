"""Per-field descriptions of the pydantic config classes, and the run form built from them.

The config classes document their fields in the ``Attributes:`` section of their class
docstring (Google style). This module is the one parser of those sections: the config
reference (``scripts/config_reference.py`` → ``docs/config.md``) and the Prefect run form
(:func:`form_schema`, the JSON schema of the flow's ``config`` parameter) both read it, so
no config class needs ``Field(description=...)`` on every field (a field that has one keeps
it: it wins over the docstring).

:func:`form_schema` turns a config class into a self-contained JSON schema for the Prefect
UI: every field carries its own description and its default (lists and dicts included),
nested sections are inlined (no ``$ref``), the fields a user changes most can be put first
(``position``, which the UI sorts by), and fields can be hidden from the form while the
server still accepts them (``propertyNames`` keeps typos refused).
"""

from __future__ import annotations

import enum
import fnmatch
import inspect
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

_ATTR_HEADING = re.compile(r"^Attributes\b[^\n]*:\s*$")
_ENTRY = re.compile(r"^(?P<names>[A-Za-z_][\w ,/]*?):(?:\s+(?P<text>.*))?$")


# --- docstrings ----------------------------------------------------------------------------


def attribute_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` entries of ``cls``'s docstring, by field name (one line each).

    An entry may name several fields (``batch_size_cpu / batch_size_gpu: ...``); its
    continuation lines are indented deeper than the entry. Lines at the section's own
    indentation or shallower end it.
    """
    doc = cls.__dict__.get("__doc__")
    if not doc:
        return {}
    lines = inspect.cleandoc(doc).splitlines()
    out: dict[str, str] = {}
    i = 0
    while i < len(lines) and not _ATTR_HEADING.match(lines[i].strip()):
        i += 1
    if i == len(lines):
        return out
    head_indent = len(lines[i]) - len(lines[i].lstrip())
    entry_indent: int | None = None
    names: list[str] = []
    text: list[str] = []

    def flush() -> None:
        if names:
            joined = " ".join(t for t in text if t)
            for name in names:
                out.setdefault(name, joined)

    for line in lines[i + 1 :]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= head_indent:
            break
        if entry_indent is None:
            entry_indent = indent
        if indent == entry_indent:
            match = _ENTRY.match(line.strip())
            if match is None:
                break
            flush()
            names = [n.strip() for n in re.split(r"[,/]", match["names"]) if n.strip()]
            text = [(match["text"] or "").strip()]
        elif indent > entry_indent:
            text.append(line.strip())
        else:
            break
    flush()
    return out


def field_description(model: type[BaseModel], name: str) -> str:
    """The field's ``Field(description=...)``, else its docstring entry along the MRO."""
    info = model.model_fields[name]
    if info.description:
        return " ".join(info.description.split())
    for cls in model.__mro__:
        if cls is BaseModel or not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            continue
        docs = attribute_docs(cls)
        if name in docs:
            return docs[name]
    return ""


def summary_line(model: type) -> str:
    """The first paragraph of a class's docstring, on one line."""
    return " ".join((inspect.getdoc(model) or "").split("\n\n")[0].split())


def rst_to_markdown(text: str) -> str:
    """Docstring markup to markdown: ````x```` → `x`, ``:class:`X``` → `X`."""
    text = re.sub(r":(?:class|func|meth|mod|attr|data|obj):`~?([^`]+)`", r"`\1`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def rst_to_text(text: str) -> str:
    """Docstring markup to plain text for the Prefect UI: no backticks, and ``<name>``
    placeholders as ``{name}`` (one of the UI's two versions reads ``<n>`` as an HTML tag
    and drops it)."""
    text = rst_to_markdown(text).replace("`", "")
    return re.sub(r"<([A-Za-z_][\w.-]*)>", r"{\1}", text)


# --- types and defaults ---------------------------------------------------------------------


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (``X``, ``X | None``), if any."""
    candidates = [annotation, *typing.get_args(annotation)]
    for t in candidates:
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _is_model(annotation: Any) -> bool:
    """Exactly a pydantic model (not ``X | None``, not a list of them)."""
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def plain(value: Any) -> Any:
    """A default as plain JSON data (models dumped, enums by value, sets sorted)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value


_NO_DEFAULT = object()


def field_default(model: type[BaseModel], name: str) -> Any:
    """The field's default value (``default_factory`` called), or ``_NO_DEFAULT``."""
    info = model.model_fields[name]
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    if info.default is PydanticUndefined:
        return _NO_DEFAULT
    return info.default


def type_name(annotation: Any) -> str:
    """A short, stable spelling of a field's type (``"a" | "b"`` for a ``Literal``)."""
    import json

    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is not None:
        base = getattr(origin, "__name__", str(origin))
        return f"{base}[{', '.join(type_name(a) for a in args)}]" if args else base
    if annotation is Any:
        return "Any"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


# --- the run form ---------------------------------------------------------------------------


def _inline(node: Any, defs: Mapping[str, Any]) -> Any:
    """``node`` with every ``$ref`` into ``defs`` replaced by the definition itself."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return {**_inline(target, defs), **_inline(rest, defs)}
        return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _ordered(names: Iterable[str], first: Sequence[str]) -> list[str]:
    names = list(names)
    head = [n for n in first if n in names]
    return head + [n for n in names if n not in head]


def form_schema(
    model: type[BaseModel],
    *,
    first: Mapping[str, Sequence[str]] | None = None,
    hidden: Iterable[str] = (),
    path: str = "",
) -> dict[str, Any]:
    """A self-contained JSON schema of ``model`` for the Prefect run form.

    Args:
        model: the config class.
        first: by dotted section path (``""`` for the top level, ``"ingest"``,
            ``"augment.synonym"``), the fields to show first, in that order; the others
            follow in class order.
        hidden: dotted field paths (``fnmatch`` patterns, e.g. ``"*.device"``) left out of
            the form; the schema still accepts them (``propertyNames``), so a run given
            through the API or the CLI may set them.
        path: the section path of ``model`` (used when recursing).

    Every field gets a ``title``, a ``description`` (its ``Field(description=...)`` or its
    docstring entry, else the nested class's summary), a ``position`` and, for every leaf,
    its ``default``. Sections carry no ``default`` of their own: the form builds them from
    their leaves, so a hidden field never reaches a run through a section's default.
    """
    first = first or {}
    hidden = tuple(hidden)
    base = model.model_json_schema(by_alias=True)
    defs = base.get("$defs", {})
    props = base.get("properties", {})
    out: dict[str, Any] = {}
    names = _ordered(model.model_fields, first.get(path, ()))
    accepted: list[str] = []
    for name in names:
        info = model.model_fields[name]
        key = info.alias or name
        accepted.append(key)
        dotted = f"{path}.{name}" if path else name
        if any(fnmatch.fnmatchcase(dotted, pattern) for pattern in hidden):
            continue
        desc = field_description(model, name)
        if _is_model(info.annotation):
            sub = info.annotation
            node = form_schema(sub, first=first, hidden=hidden, path=dotted)
            node["title"] = props.get(key, {}).get("title") or name.replace("_", " ").title()
            node["description"] = rst_to_text(desc or summary_line(sub))
        else:
            node = _inline(dict(props.get(key, {})), defs)
            node.pop("default", None)
            node["title"] = node.get("title") or name.replace("_", " ").title()
            inner = model_in(info.annotation)
            node["description"] = rst_to_text(desc or (summary_line(inner) if inner else ""))
            default = field_default(model, name)
            if default is not _NO_DEFAULT:
                node["default"] = plain(default)
        node["position"] = len(out)
        out[key] = node
    schema: dict[str, Any] = {"type": "object", "properties": out}
    if path == "":
        schema["title"] = base.get("title", model.__name__)
        schema["description"] = rst_to_text(summary_line(model))
    if model.model_config.get("extra") == "forbid":
        if len(accepted) == len(out):
            schema["additionalProperties"] = False
        else:  # hidden fields stay valid; anything else is still refused
            schema["propertyNames"] = {"enum": accepted}
    return schema


def form_leaves(schema: Mapping[str, Any], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """The leaf fields of a :func:`form_schema` (dotted path, schema node), in form order."""
    out: list[tuple[str, dict[str, Any]]] = []
    props = schema.get("properties") or {}
    for key, node in sorted(props.items(), key=lambda kv: kv[1].get("position", 0)):
        dotted = f"{prefix}.{key}" if prefix else key
        if node.get("type") == "object" and node.get("properties"):
            out.extend(form_leaves(node, dotted))
        else:
            out.append((dotted, node))
    return out
