"""The `clean` stage: normalised text, no empty rows, no duplicates, conflicts reported.

Rules, in order (each switchable in :class:`CleanConfig`):

1. fenced code blocks (```` ``` ```` / ``~~~``) kept, shortened to their first lines,
   replaced by a marker or dropped; the other rules never touch code. A fenced block whose
   lines are a stack trace or a log is handled by the ``stack_traces`` / ``logs`` rule;
2. HTML comments (issue-template hints ``<!-- ... -->``), markdown images and ``<img>`` tags
   removed;
3. technical blocks outside fences, each ``keep`` / ``shorten`` (first lines, then
   ``...``) / ``marker`` (one token on its own line): stack traces (Python ``Traceback``
   with its ``File ...`` lines and the exception line; runs of Java/JavaScript ``at ...``
   frames with ``Caused by:`` / ``... N more``), logs (runs of ``log_min_lines`` or more
   lines opening with a timestamp or a log level) and indented code (lines indented by 4+
   spaces or a tab after a blank line);
4. issue-template boilerplate lines removed (markdown headings such as ``### Describe the
   bug`` unless ``headings="keep"``, which keeps the heading's words; checkbox lines
   ``- [ ] ...``, bold template prompts, ``_No response_``; ``boilerplate_patterns``);
5. URLs dropped, shortened to their host or replaced by a marker (a markdown link keeps its
   text), ``@mentions`` removed;
6. HTML entities unescaped, Unicode normalised (NFKC), whitespace collapsed.

Markers: ``[code]``, ``[stack trace]``, ``[log]``, ``[url]`` (``MARKERS``). The defaults
(every block and URL replaced by its marker, headings dropped) were chosen on NLBSE'24
issue reports by ``bench/bench_long_text.py`` (best mean validation accuracy of
``tfidf_nb`` and ``embed_lr`` over the rule variants it compares).

Then rows are dropped, each with its reason in ``dropped/``:

- ``empty`` / ``too_short``: nothing left, or fewer than ``min_chars`` characters;
- ``duplicate``: the same text (case and spacing ignored) as a kept row;
- ``near_duplicate``: word-shingle Jaccard similarity >= ``near_dup_threshold`` with a kept
  row, found by MinHash signatures and LSH banding (linear in rows: only rows sharing a band
  are compared);
- ``conflict``: with ``conflicts="drop"``, every copy of a text labelled differently.

The labelled copy of a duplicate is the one kept (then the earliest). Copies that carry
different labels are a *conflict*: with ``conflicts="report"`` (default) one copy per
distinct label set is kept, with ``"drop"`` all are dropped; either way every conflict is
listed in ``conflicts.json`` and the summary, never resolved silently.

Output: ``rows/`` (canonical rows), ``dropped/`` (``id``, ``text`` as ingested, ``labels``,
``reason``, ``duplicate_of``), ``conflicts.json``, ``labels.json``, ``user_slices.json``
(passed on from ingest), ``summary.md``, ``sample.json``. Rows in = rows out + dropped.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import datasets
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from label_pipeline.artifacts import md_table
from label_pipeline.data import (
    CANONICAL_FEATURES,
    load_rows,
    read_label_info,
    save_dataset,
    write_label_info,
)
from label_pipeline.errors import ConfigError, InputDataError
from label_pipeline.orchestration import write_summary
from label_pipeline.progress import stage_logger
from label_pipeline.store import BuildContext, StageRef, StageSpec, StageStore

SPEC = StageSpec("clean", "2")
STAGE, VERSION = SPEC.name, SPEC.version

DROPPED_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "text": datasets.Value("string"),
        "labels": datasets.Sequence(datasets.Value("string")),
        "reason": datasets.Value("string"),
        "duplicate_of": datasets.Value("string"),
    }
)
REASONS = ("empty", "too_short", "duplicate", "near_duplicate", "conflict")

#: lines of GitHub issue templates: headings, checkbox lists, bold prompts
DEFAULT_BOILERPLATE = [
    r"^\s{0,3}#{1,6}\s.*$",
    r"^\s*[-*+]\s+\[[ xX]?\]\s.*$",
    r"^\s*\*\*[^*\n]{1,60}\*\*:?\s*$",
    r"^\s*_No response_\s*$",
]
#: what ``marker`` puts in place of each kind of block
MARKERS = {"code": "[code]", "stack_trace": "[stack trace]", "log": "[log]", "url": "[url]"}
BlockRule = Literal["keep", "shorten", "marker"]

_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_PY_TRACE = re.compile(r"^\s*Traceback \(most recent call last\):?\s*$")
_PY_FRAME = re.compile(r'^\s*File "[^"]*", line \d+')
_AT_FRAME = re.compile(
    r"^\s*(?:at\s+(?:async\s+|new\s+)?[\w$.<>\[\]/:@~-]+(?:\s*\(.*\))?|Caused by:?\s.*|"
    r"\.\.\.\s*\d+\s+(?:more|common frames omitted))\s*$"
)
_LOG_LINE = re.compile(
    r"^\s*[\[(]?(?:\d{4}[-/.]\d{2}[-/.]\d{2}[T ]?\d{0,2}:?\d{0,2}|\d{2}:\d{2}:\d{2}|"
    r"[IWEF]\d{4}\s+\d{2}:\d{2}:\d{2}|"
    r"(?:TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|CRITICAL|FATAL)\b[\]:)\s])",
)
_INDENTED = re.compile(r"^(?: {4,}|\t)\S")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s")

_CODE = re.compile(r"(^|\n)[ \t]*(```|~~~)[^\n]*\n.*?(\n[ \t]*\2[ \t]*(?=\n|$)|$)", re.S)
_HTML_COMMENT = re.compile(r"<!--.*?(-->|$)", re.S)
_MD_IMAGE = re.compile(r"!\[[^\]\n]*\]\([^)\n]*\)|<img\b[^>]*>", re.I)
_MD_LINK = re.compile(r"\[([^\]\n]*)\]\((?:https?://|www\.)[^)\n]*\)", re.I)
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>()\[\]]+", re.I)
_MENTION = re.compile(r"(?<![\w.@/])@[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})\b")
_SPACES = re.compile(r"[ \t\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_WORD = re.compile(r"\w+")


class CleanConfig(BaseModel):
    """Settings of the ``clean`` stage.

    Attributes:
        unicode_form: Unicode normalisation (``NFKC`` folds compatibility characters such
            as full-width letters and ligatures); ``None`` leaves text as is.
        unescape_html: turn ``&amp;``, ``&gt;``, ``&#39;`` ... into characters.
        remove_html_comments: drop ``<!-- ... -->`` (issue-template hints).
        remove_markdown_images: drop ``![alt](url)`` and ``<img>`` tags.
        remove_urls: ``False`` keeps URLs whatever ``urls`` says (kept for older configs).
        urls: URLs are dropped (``drop``), kept, shortened to their host (``shorten``:
            ``github.com``) or replaced by ``[url]`` (``marker``); a markdown link
            ``[text](url)`` keeps its text either way.
        remove_mentions: drop ``@user`` mentions (e-mail addresses are kept).
        remove_boilerplate: drop lines matching ``boilerplate_patterns`` from texts of
            several lines (a text of one line is never taken for a template).
        boilerplate_patterns: regular expressions, each matched against a whole line
            (default: markdown headings, checkbox lines ``- [ ]``, bold prompts ``**Bug**``,
            ``_No response_``).
        headings: markdown headings (``### Steps to reproduce``, the sections of an issue
            template) are dropped with the boilerplate (``drop``) or kept as plain words
            (``keep``: ``Steps to reproduce``).
        code_blocks: fenced code blocks are kept (``keep``), cut to ``code_max_lines``
            lines (``shorten``), replaced by ``[code]`` (``marker``) or removed (``drop``).
        code_max_lines: lines kept of each code block with ``code_blocks="shorten"``.
        indented_code: runs of lines indented by 4+ spaces (or a tab) after a blank line,
            outside lists: ``keep``, ``shorten`` (``code_max_lines``) or ``marker``.
        stack_traces: Python tracebacks and runs of Java/JavaScript ``at ...`` frames, in
            the text or in a fenced block: ``keep``, ``shorten`` (the first
            ``trace_max_lines`` lines, plus a Python traceback's exception line) or
            ``marker`` (``[stack trace]``).
        trace_max_lines: lines kept of each stack trace with ``stack_traces="shorten"``.
        logs: runs of ``log_min_lines`` or more lines that open with a timestamp or a log
            level (``INFO``, ``ERROR`` ...), in the text or a fenced block: ``keep``,
            ``shorten`` (``log_max_lines``) or ``marker`` (``[log]``).
        log_min_lines: fewest consecutive log lines that make a log.
        log_max_lines: lines kept of each log with ``logs="shorten"``.
        min_chars: rows whose cleaned text is shorter are dropped (``too_short``).
        dedup_exact: drop rows whose text equals a kept row's (case and spacing ignored).
        near_duplicates: drop rows nearly equal to a kept row (MinHash/LSH).
        near_dup_threshold: Jaccard similarity of word shingles from which two texts are
            near duplicates.
        shingle_words: words per shingle (texts with fewer words form a single shingle).
        num_perm: MinHash permutations (more: more accurate similarity, slower).
        conflicts: same text with different labels: ``report`` keeps one copy per label
            set, ``drop`` drops every copy; both list them in ``conflicts.json``.
        sample_rows: rows in ``sample.json`` (changed texts first, then dropped rows).
    """

    model_config = ConfigDict(extra="forbid")

    unicode_form: Literal["NFKC", "NFC", "NFKD", "NFD"] | None = "NFKC"
    unescape_html: bool = True
    remove_html_comments: bool = True
    remove_markdown_images: bool = True
    remove_urls: bool = True
    urls: Literal["drop", "keep", "shorten", "marker"] = "marker"
    remove_mentions: bool = True
    remove_boilerplate: bool = True
    boilerplate_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_BOILERPLATE))
    headings: Literal["drop", "keep"] = "drop"
    code_blocks: Literal["keep", "shorten", "marker", "drop"] = "marker"
    code_max_lines: int = Field(10, ge=1)
    indented_code: BlockRule = "marker"
    stack_traces: BlockRule = "marker"
    trace_max_lines: int = Field(3, ge=1)
    logs: BlockRule = "marker"
    log_min_lines: int = Field(3, ge=2)
    log_max_lines: int = Field(3, ge=1)
    min_chars: int = Field(3, ge=1)
    dedup_exact: bool = True
    near_duplicates: bool = True
    near_dup_threshold: float = Field(0.85, gt=0.0, le=1.0)
    shingle_words: int = Field(3, ge=1)
    num_perm: int = Field(128, ge=16, le=1024)
    conflicts: Literal["report", "drop"] = "report"
    sample_rows: int = Field(15, ge=0, le=100)

    @field_validator("boilerplate_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(
                    f"clean.boilerplate_patterns: {p!r} is not a valid regex ({exc})"
                ) from None
        return patterns


# ---------------------------------------------------------------- text rules


class TextCleaner:
    """Applies the text rules of a :class:`CleanConfig`; counts the texts each rule changed."""

    def __init__(self, cfg: CleanConfig) -> None:
        self.cfg = cfg
        self.changed: Counter = Counter()
        self._boilerplate = (
            re.compile("|".join(f"(?:{p})" for p in cfg.boilerplate_patterns), re.M)
            if cfg.remove_boilerplate and cfg.boilerplate_patterns
            else None
        )

    def _sub(self, rule: str, pattern: re.Pattern, repl: str, text: str) -> str:
        out = pattern.sub(repl, text)
        if out != text:
            self.changed[rule] += 1
        return out

    def _prose(self, text: str, several_lines: bool) -> str:
        cfg = self.cfg
        if cfg.remove_html_comments and "<!--" in text:
            text = self._sub("html_comments", _HTML_COMMENT, "", text)
        if cfg.remove_markdown_images:
            text = self._sub("markdown_images", _MD_IMAGE, "", text)
        text = self._technical(text)
        # templates span several lines; a one-line heading or bold text is the content itself
        if several_lines:
            if cfg.headings == "keep":
                text = "\n".join(_HEADING.sub(r"\1", line) for line in text.split("\n"))
            if self._boilerplate is not None:
                text = self._sub("boilerplate", self._boilerplate, "", text)
        if cfg.remove_urls and cfg.urls != "keep":
            text = self._sub("urls", _MD_LINK, r"\1", text)
            text = self._sub("urls", _URL, self._url, text)
        if cfg.remove_mentions and "@" in text:
            text = self._sub("mentions", _MENTION, "", text)
        if cfg.unescape_html and "&" in text:
            text = self._apply("html_entities", html.unescape, text)
        if cfg.unicode_form:
            text = self._apply(
                "unicode", lambda t: unicodedata.normalize(cfg.unicode_form, t), text
            )
        lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
        return _BLANK_LINES.sub("\n\n", "\n".join(lines))

    def _apply(self, rule: str, fn: Any, text: str) -> str:
        out = fn(text)
        if out != text:
            self.changed[rule] += 1
        return out

    def _url(self, m: re.Match) -> str:
        if self.cfg.urls == "marker":
            return MARKERS["url"]
        if self.cfg.urls == "shorten":
            host = re.sub(r"^(?:https?://)?(?:www\.)?", "", m.group(0), flags=re.I)
            return host.split("/")[0].split("?")[0]
        return ""

    def _block(self, kind: str, lines: list[str]) -> list[str]:
        """A stack trace or log (``kind``) as its rule says; counted when changed."""
        cfg = self.cfg
        rule, most, counter = {
            "stack_trace": (cfg.stack_traces, cfg.trace_max_lines, "stack_traces"),
            "log": (cfg.logs, cfg.log_max_lines, "logs"),
            "code": (cfg.indented_code, cfg.code_max_lines, "indented_code"),
        }[kind]
        if rule == "keep" or (rule == "shorten" and len(lines) <= most):
            return lines
        self._blocks_hit.add(counter)
        if rule == "marker":
            return [MARKERS[kind]]
        out = [*lines[:most], "..."]
        if kind == "stack_trace" and _PY_TRACE.match(lines[0]):
            out.append(lines[-1])  # the exception and its message
        return out

    def _technical(self, text: str) -> str:
        """Stack traces, logs and indented code outside fences, as their rules say."""
        cfg = self.cfg
        if cfg.stack_traces == cfg.logs == cfg.indented_code == "keep":
            return text
        lines = text.split("\n")
        out: list[str] = []
        i, n = 0, len(lines)
        while i < n:
            line = lines[i]
            if _PY_TRACE.match(line):
                j = i + 1
                while (
                    j < n
                    and lines[j].strip()
                    and (lines[j][:1] in {" ", "\t"} or _PY_FRAME.match(lines[j]))
                ):
                    j += 1
                j += 1 if j < n and lines[j].strip() else 0  # the exception line
                out += self._block("stack_trace", lines[i:j])
                i = j
                continue
            j = i
            while j < n and _AT_FRAME.match(lines[j]):
                j += 1
            if j - i >= 2:
                out += self._block("stack_trace", lines[i:j])
                i = j
                continue
            while j < n and _LOG_LINE.match(lines[j]):
                j += 1
            if j - i >= cfg.log_min_lines:
                out += self._block("log", lines[i:j])
                i = j
                continue
            if (
                cfg.indented_code != "keep"
                and _INDENTED.match(line)
                and (i == 0 or not lines[i - 1].strip())
                and not _LIST_ITEM.match(line)
            ):
                j = i
                while j < n and (_INDENTED.match(lines[j]) or not lines[j].strip()):
                    j += 1
                while j > i and not lines[j - 1].strip():
                    j -= 1
                if j - i >= 2:
                    out += self._block("code", lines[i:j])
                    i = j
                    continue
            out.append(line)
            i += 1
        return "\n".join(out)

    def _kind(self, body: list[str]) -> str:
        """``stack_trace``, ``log`` or ``code``: what a fenced block's lines are."""
        lines = [x for x in body if x.strip()]
        if not lines:
            return "code"
        if any(_PY_TRACE.match(x) for x in lines) or (
            sum(bool(_AT_FRAME.match(x)) for x in lines) >= max(2, len(lines) / 2)
        ):
            return "stack_trace"
        logs = sum(bool(_LOG_LINE.match(x)) for x in lines)
        if logs >= max(self.cfg.log_min_lines, len(lines) / 2):
            return "log"
        return "code"

    def _code(self, block: str) -> str:
        lines = block.strip("\n").split("\n")
        fence = lines[0].strip()[:3]
        body = lines[1:-1] if len(lines) > 1 and lines[-1].strip().startswith(fence) else lines[1:]
        kind = self._kind(body)
        if kind != "code":
            rule = self.cfg.stack_traces if kind == "stack_trace" else self.cfg.logs
            if rule != "keep":
                return "\n".join(self._block(kind, [x.strip() for x in body if x.strip()]))
        if self.cfg.code_blocks == "keep":
            return block.strip("\n")
        if self.cfg.code_blocks == "drop":
            self._blocks_hit.add("code_blocks")
            return ""
        if self.cfg.code_blocks == "marker":
            self._blocks_hit.add("code_blocks")
            return MARKERS["code"]
        if len(body) <= self.cfg.code_max_lines:
            return block.strip("\n")
        self._blocks_hit.add("code_blocks")
        return "\n".join([lines[0], *body[: self.cfg.code_max_lines], "...", fence])

    def __call__(self, text: str) -> str:
        self._blocks_hit: set[str] = set()  # block rules that changed this text
        try:
            return self._clean(text)
        finally:
            self.changed.update(self._blocks_hit)

    def _clean(self, text: str) -> str:
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if "```" not in text and "~~~" not in text:
            return self._prose(text, "\n" in text.strip()).strip()
        parts, last = [], 0
        for m in _CODE.finditer(text):
            parts.append(self._prose(text[last : m.start()], True).strip())
            parts.append(self._code(m.group(0)))
            last = m.end()
        parts.append(self._prose(text[last:], True).strip())
        return _BLANK_LINES.sub("\n\n", "\n".join(p for p in parts if p.strip())).strip()


def exact_key(text: str) -> str:
    """The form under which two texts count as the same (case and spacing ignored)."""
    return " ".join(text.casefold().split())


def shingles(text: str, k: int) -> list[str]:
    """Word k-shingles of ``text`` (lower-cased words; fewer words: one shingle)."""
    words = _WORD.findall(text.casefold())
    if len(words) <= k:
        return [" ".join(words)] if words else []
    return [" ".join(words[i : i + k]) for i in range(len(words) - k + 1)]


# ---------------------------------------------------------------- near duplicates


_PRIME = np.uint64((1 << 61) - 1)


def minhash_signatures(docs: list[list[str]], num_perm: int, seed: int = 1) -> np.ndarray:
    """MinHash signatures (docs x num_perm, uint64) of shingle lists, vectorised: every
    shingle gets an integer id, and each permutation is ``(a * id + b) mod p``."""
    n = len(docs)
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=n)
    flat = [s for d in docs for s in d]
    sig = np.full((n, num_perm), np.iinfo(np.uint64).max, dtype=np.uint64)
    if not flat:
        return sig
    codes, _ = pd.factorize(pd.Series(flat, dtype=object), sort=False)
    rng = np.random.RandomState(seed)
    a = rng.randint(1, 1 << 30, size=num_perm).astype(np.uint64)
    b = rng.randint(0, 1 << 30, size=num_perm).astype(np.uint64)
    # ids are < 2**31 and a, b < 2**30, so a * id + b never overflows uint64
    ids = codes.astype(np.uint64)
    has = lengths > 0
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[has]
    chunk = max(1, (1 << 23) // max(len(ids), 1))
    for j in range(0, num_perm, chunk):
        h = (ids[:, None] * a[None, j : j + chunk] + b[None, j : j + chunk]) % _PRIME
        sig[has, j : j + chunk] = np.minimum.reduceat(h, starts, axis=0)
    return sig


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimising false positives + negatives at ``threshold``
    (datasketch's choice for its MinHashLSH)."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return int(lsh.b), int(lsh.r)


def candidate_pairs(
    sig: np.ndarray, bands: int, rows: int, max_per_bucket: int = 50
) -> set[tuple[int, int]]:
    """Pairs (i, j), i < j, of rows sharing at least one LSH band. A bucket pairs each
    member with at most ``max_per_bucket`` earlier members, so the work stays linear."""
    n = sig.shape[0]
    pairs: set[tuple[int, int]] = set()
    if n < 2:
        return pairs
    mult = (
        np.random.RandomState(7).randint(1, 1 << 62, size=rows, dtype=np.int64).astype(np.uint64)
        | 1
    )
    idx = np.arange(n)
    for band in range(bands):
        block = sig[:, band * rows : (band + 1) * rows]
        with np.errstate(over="ignore"):  # a wrapping polynomial hash of the band
            keys = (block * mult[None, :]).sum(axis=1, dtype=np.uint64)
        order = np.lexsort((idx, keys))
        k = keys[order]
        same = np.flatnonzero(k[1:] == k[:-1])
        if not len(same):
            continue
        # runs of equal keys: start of each run among the "same" positions
        starts = np.flatnonzero(np.diff(np.concatenate([[-2], same])) != 1)
        for s in starts:
            lo = same[s]
            hi = lo + 1
            while hi + 1 < n and k[hi + 1] == k[lo]:
                hi += 1
            members = order[lo : hi + 1]
            for p in range(1, len(members)):
                for q in members[max(0, p - max_per_bucket) : p]:
                    pairs.add(
                        (int(q), int(members[p])) if q < members[p] else (int(members[p]), int(q))
                    )
    return pairs


def jaccard(a: set[str], b: set[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 0.0


# ---------------------------------------------------------------- the row pass


@dataclass
class CleanResult:
    """What :func:`clean_rows` decided: kept row indices (input order), cleaned texts,
    dropped rows, conflicts, counts of texts each rule changed."""

    kept: list[int]
    texts: list[str]
    dropped: list[dict[str, Any]]
    conflicts: list[dict[str, Any]]
    rule_changes: dict[str, int] = field(default_factory=dict)


class _Dedup:
    """The rows of one clean run: which are alive, which were dropped and why, and the label
    conflicts found between copies of one text."""

    def __init__(
        self,
        ids: list[str],
        texts: list[str],
        labels: list[list[str]],
        cleaned: list[str],
        cfg: CleanConfig,
    ) -> None:
        self.ids, self.texts, self.labels, self.cleaned, self.cfg = ids, texts, labels, cleaned, cfg
        n = len(texts)
        self.alive = np.ones(n, dtype=bool)
        self.dropped: list[dict[str, Any]] = []
        self.conflicts: list[dict[str, Any]] = []
        self.labelled = np.array([bool(x) for x in labels], dtype=bool)
        # labelled rows first, then input order: the first survivor of a group is the one kept
        self.priority = np.lexsort((np.arange(n), ~self.labelled))
        self.label_key = ["\x1f".join(x) for x in labels]
        self.key_of = [exact_key(t) for t in cleaned]

    def drop(self, i: int, reason: str, of: str = "") -> None:
        self.alive[i] = False
        self.dropped.append(
            {
                "id": self.ids[i],
                "text": self.texts[i],
                "labels": list(self.labels[i]),
                "reason": reason,
                "duplicate_of": of,
            }
        )

    def drop_empty(self) -> None:
        for i, t in enumerate(self.cleaned):
            if not t:
                self.drop(i, "empty")
            elif len(t) < self.cfg.min_chars:
                self.drop(i, "too_short")

    def _conflict(self, members: list[int], kind: str, similarity: float | None) -> bool:
        """Report copies of one text with different label sets; True when they are dropped."""
        labelled = [i for i in members if self.labelled[i]]
        if len(dict.fromkeys(self.label_key[i] for i in labelled)) < 2:
            return False
        entry = {
            "kind": kind,
            "ids": [self.ids[i] for i in labelled],
            "labels": [self.labels[i] for i in labelled],
            "texts": [self.cleaned[i] for i in labelled][:2],
            "action": "dropped" if self.cfg.conflicts == "drop" else "kept one copy per label set",
        }
        if similarity is not None:
            entry["similarity"] = round(similarity, 3)
        self.conflicts.append(entry)
        if self.cfg.conflicts == "drop":
            for i in members:
                self.drop(i, "conflict")
            return True
        return False

    def resolve_group(self, members: list[int], kind: str, similarity: float | None = None) -> None:
        """Members in priority order, all copies of one text: keep, drop or report."""
        if self._conflict(members, kind, similarity):
            return
        first_of: dict[str, int] = {}
        head = members[0]
        for i in members:
            key = self.label_key[i] if self.labelled[i] else ""
            if self.labelled[i] and key not in first_of:
                first_of[key] = i
                continue
            if not self.labelled[i] and i == head:
                continue
            of = first_of.get(key, head) if self.labelled[i] else head
            self.drop(i, "duplicate" if kind == "exact" else "near_duplicate", self.ids[of])

    def exact_duplicates(self) -> None:
        keys = pd.Series(self.key_of)
        order = [i for i in self.priority if self.alive[i]]
        groups = keys.iloc[order].groupby(keys.iloc[order].values, sort=False).indices
        for positions in groups.values():
            if len(positions) > 1:
                self.resolve_group([order[p] for p in positions], "exact")

    def near_duplicates(self) -> None:
        cfg = self.cfg
        rows = [i for i in self.priority if self.alive[i]]
        sh = [shingles(self.cleaned[i], cfg.shingle_words) for i in rows]
        # texts without a word (emoji, punctuation) have no shingles: exact matching only
        rows = [i for i, s in zip(rows, sh, strict=True) if s]
        sh = [s for s in sh if s]
        sig = minhash_signatures(sh, cfg.num_perm)
        bands, per_band = lsh_params(cfg.near_dup_threshold, cfg.num_perm)
        # positions are in priority order, so (p, q) with p < q: q is the later copy
        later: dict[int, list[int]] = {}
        for p, q in candidate_pairs(sig, bands, per_band):
            later.setdefault(q, []).append(p)
        sets: dict[int, set[str]] = {}
        for q in sorted(later):
            i = rows[q]
            if not self.alive[i]:
                continue
            sq = sets.setdefault(q, set(sh[q]))
            for p in sorted(later[q]):
                j = rows[p]
                if not self.alive[j] or (cfg.dedup_exact and self.key_of[i] == self.key_of[j]):
                    continue  # copies of one text were settled (or reported) above
                sim = jaccard(sets.setdefault(p, set(sh[p])), sq)
                if sim < cfg.near_dup_threshold:
                    continue
                if self.labelled[i] and self.labelled[j] and self.label_key[i] != self.label_key[j]:
                    self.resolve_group([j, i], "near", sim)
                    if not self.alive[i]:
                        break
                    continue
                self.drop(i, "near_duplicate", self.ids[j])
                break


def clean_rows(
    ids: list[str], texts: list[str], labels: list[list[str]], cfg: CleanConfig
) -> CleanResult:
    """Clean texts and drop empty, short, duplicate and (with ``conflicts='drop'``)
    conflicting rows. Every input row ends up either in ``kept`` or in ``dropped``."""
    cleaner = TextCleaner(cfg)
    cleaned = [cleaner(t or "") for t in texts]
    rows = _Dedup(ids, texts, labels, cleaned, cfg)
    rows.drop_empty()
    if cfg.dedup_exact:
        rows.exact_duplicates()
    if cfg.near_duplicates:
        rows.near_duplicates()
    n = len(texts)
    kept = [i for i in range(n) if rows.alive[i]]
    if len(kept) + len(rows.dropped) != n:  # each row is kept or dropped exactly once
        raise RuntimeError(f"clean: {n} rows in, {len(kept)} kept + {len(rows.dropped)} dropped")
    return CleanResult(kept, cleaned, rows.dropped, rows.conflicts, dict(cleaner.changed))


# ---------------------------------------------------------------- the stage


def _label_counts(labels: list[list[str]]) -> Counter:
    return Counter(lab for row in labels for lab in row)


def _summary(
    n_in: int,
    result: CleanResult,
    before: Counter,
    after: Counter,
    names: list[str],
    cfg: CleanConfig,
) -> str:
    reasons = Counter(d["reason"] for d in result.dropped)
    n_lab_dropped = sum(1 for d in result.dropped if d["labels"])
    lines = [
        f"Rows in: **{n_in}**; rows out: **{len(result.kept)}**; dropped: **{len(result.dropped)}** "
        f"({n_lab_dropped} of them labelled).\n",
        "### Dropped rows by reason\n",
        md_table([{"reason": r, "rows": reasons.get(r, 0)} for r in REASONS]),
        "### Label counts before and after\n",
        md_table(
            [{"label": k, "before": before.get(k, 0), "after": after.get(k, 0)} for k in names]
        ),
        "### Texts changed by each rule\n",
        md_table([{"rule": k, "texts": v} for k, v in sorted(result.rule_changes.items())]),
    ]
    if result.conflicts:
        lines += [
            f"### Conflicts: {len(result.conflicts)} text(s) with different labels "
            f"(policy `{cfg.conflicts}`; all in `conflicts.json`)\n",
            md_table(
                [
                    {
                        "kind": c["kind"],
                        "ids": ", ".join(c["ids"][:4]),
                        "labels": " / ".join(";".join(x) for x in c["labels"][:4]),
                        "text": c["texts"][0][:80],
                        "action": c["action"],
                    }
                    for c in result.conflicts[:20]
                ]
            ),
        ]
    else:
        lines.append("No conflicting labels for the same text.\n")
    lost = [k for k in names if before.get(k, 0) and not after.get(k, 0)]
    if lost:
        lines.append(f"**Warning**: label(s) {lost} have no rows left after cleaning.\n")
    return "\n".join(lines)


def _sample(
    ids: list[str], texts: list[str], labels: list[list[str]], result: CleanResult, k: int
) -> list[dict]:
    changed = [i for i in result.kept if result.texts[i] != (texts[i] or "").strip()]
    out = [
        {
            "id": ids[i],
            "status": "cleaned",
            "original": texts[i],
            "cleaned": result.texts[i],
            "labels": labels[i],
            "reason": "",
        }
        for i in changed[: (k + 1) // 2]
    ]
    for d in result.dropped[: k - len(out)]:
        out.append(
            {
                "id": d["id"],
                "status": "dropped",
                "original": d["text"],
                "cleaned": "",
                "labels": d["labels"],
                "reason": f"{d['reason']} {d['duplicate_of']}".strip(),
            }
        )
    shown = set(changed[: (k + 1) // 2])
    kept_rest = (i for i in result.kept if i not in shown)
    for i, _ in zip(kept_rest, range(k - len(out)), strict=False):
        out.append(
            {
                "id": ids[i],
                "status": "kept",
                "original": texts[i],
                "cleaned": result.texts[i],
                "labels": labels[i],
                "reason": "",
            }
        )
    return out


def run_clean(
    store: StageStore, cfg: CleanConfig, rows: StageRef, refresh: bool = False
) -> StageRef:
    """Clean the ingest stage's ``rows/`` (``rows`` is its StageRef)."""

    def builder(ctx: BuildContext) -> dict[str, Any]:
        log = stage_logger()
        if not (rows.dir / "rows").is_dir():
            raise InputDataError(f"{rows.dir}: no rows/ dataset; re-run the ingest stage")
        ds = load_rows(rows.dir)
        names, multi_label = read_label_info(rows.dir)
        cols = ds.to_dict()
        ids, texts, labels = cols["id"], cols["text"], cols["labels"]
        split = cols.get("split") or [""] * len(ids)
        result = clean_rows(ids, texts, labels, cfg)
        kept = result.kept
        out = {
            "id": [ids[i] for i in kept],
            "text": [result.texts[i] for i in kept],
            "labels": [labels[i] for i in kept],
            "split": [split[i] for i in kept],
        }
        save_dataset(datasets.Dataset.from_dict(out, features=CANONICAL_FEATURES), ctx.dir / "rows")
        # from_dict, not from_list: an empty list would lose the columns
        dropped_cols = {k: [d[k] for d in result.dropped] for k in DROPPED_FEATURES}
        save_dataset(
            datasets.Dataset.from_dict(dropped_cols, features=DROPPED_FEATURES), ctx.dir / "dropped"
        )
        (ctx.dir / "conflicts.json").write_text(
            json.dumps(result.conflicts, indent=1, ensure_ascii=False)
        )
        write_label_info(ctx.dir, names, multi_label)
        if (rows.dir / "user_slices.json").is_file():
            shutil.copyfile(rows.dir / "user_slices.json", ctx.dir / "user_slices.json")
        before, after = _label_counts(labels), _label_counts(out["labels"])
        reasons = Counter(d["reason"] for d in result.dropped)
        if result.conflicts:
            log.warning(
                "clean: %d text(s) carry conflicting labels (policy %r); see conflicts.json",
                len(result.conflicts),
                cfg.conflicts,
            )
        lost = [k for k in names if before.get(k, 0) and not after.get(k, 0)]
        for lab in lost:
            why = Counter(d["reason"] for d in result.dropped if lab in (d["labels"] or []))
            log.warning(
                "clean: label %r has no rows left after cleaning (its %d row(s) dropped: %s); "
                "no model can learn it. Lower clean.min_chars, switch off the rule that "
                "dropped them, or add rows with this label",
                lab,
                before[lab],
                ", ".join(f"{r} {n}" for r, n in why.most_common()) or "?",
            )
        if not any(out["labels"]):
            raise InputDataError(
                f"clean: no labelled row survives cleaning of {rows.dir} ({dict(reasons)}); "
                "lower clean.min_chars or switch off rules (clean.conflicts='report')"
            )
        write_summary(
            ctx.dir,
            _summary(len(ids), result, before, after, names, cfg),
            _sample(ids, texts, labels, result, cfg.sample_rows),
        )
        return {
            "rows_in": len(ids),
            "rows_out": len(kept),
            "dropped": len(result.dropped),
            "dropped_by_reason": dict(reasons),
            "labelled_out": sum(1 for x in out["labels"] if x),
            "conflicts": len(result.conflicts),
        }

    if not isinstance(rows, StageRef):
        raise ConfigError("clean: `rows` must be the ingest stage's StageRef")
    return store.build_stage(SPEC, cfg, {"rows": rows}, builder, refresh)
