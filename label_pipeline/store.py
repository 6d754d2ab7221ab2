"""The stage store: every stage output lives in ``<root>/<stage>/<fingerprint>/``.

A stage directory is built in a temporary sibling directory and renamed into
place only when complete, with ``manifest.json`` written last. A directory
without a manifest is never taken for complete. Two runs building the same
stage at once serialise on a lock file, and the second finds the first's result.

The root may also be an fsspec URL (``s3://bucket/store``, ``gs://...``, ``memory://``
for tests) so that workers on several machines share one store. A stage is then built
in a local cache directory exactly as above, uploaded to ``<url>/<stage>/.tmp-...``,
moved into ``<url>/<stage>/<fingerprint>/`` and completed by writing its manifest last;
reading a stage downloads it once into the local cache. ``file://`` URLs and plain paths
use the local directory directly (a shared network mount works that way).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

MANIFEST = "manifest.json"
#: local cache of remote stores: ``$LABEL_PIPELINE_STORE_CACHE/<hash of url>/``
CACHE_ENV = "LABEL_PIPELINE_STORE_CACHE"
_TRACKED_LIBRARIES = (
    "label-pipeline",
    "datasets",
    "transformers",
    "torch",
    "prefect",
    "scikit-learn",
    "sentence-transformers",
    "nlpaug",
)


class StageRef(BaseModel):
    """What flows between tasks: a stage's name, fingerprint and directory.

    Never the data itself; open the directory with ``datasets.load_from_disk``.
    """

    stage: str
    fingerprint: str
    path: str
    cached: bool = False
    #: URL of a remote store holding the stage (None: ``path`` is the only copy)
    store: str | None = None

    @property
    def dir(self) -> Path:
        return Path(self.path)

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.dir / MANIFEST).read_text())


def _canonical(value: Any) -> Any:
    """Turn configs and inputs into plain JSON-able values with stable ordering."""
    if isinstance(value, BaseModel):
        return _canonical(value.model_dump(mode="json"))
    if isinstance(value, StageRef):
        return value.fingerprint
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_canonical(v) for v in value]
        return sorted(items, key=json.dumps) if isinstance(value, set | frozenset) else items
    if isinstance(value, Path):
        return str(value)
    return value


def fingerprint_of(stage: str, version: str, config: Any, inputs: Mapping[str, Any]) -> str:
    """hash(stage name, stage code version, the stage's config, its inputs' fingerprints)."""
    payload = {
        "stage": stage,
        "version": version,
        "config": _canonical(config),
        "inputs": {k: (v.fingerprint if isinstance(v, StageRef) else v) for k, v in inputs.items()},
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


@dataclass(frozen=True)
class StageSpec:
    """A stage's identity: its name, its code version, and which of its config and inputs it
    reads. The one place that decides what enters a stage's fingerprint: the stage builds
    under :meth:`fingerprint` (through :meth:`StageStore.build_stage`) and the flow's Prefect
    cache key is the same value, so an unchanged re-run is answered by either.

    Attributes:
        name: the stage's name (its folder in the store).
        version: bumped when the stage's code changes what it writes.
        resolve: the config the stage runs with, from the one it is given (e.g. an ``auto``
            setting resolved for this machine); None: the config as given.
        select: the inputs the stage reads, from (resolved config, the inputs the flow
            passes); None: every input the flow passes. Inputs that are None are left out.
    """

    name: str
    version: str
    resolve: Callable[[Any], Any] | None = None
    select: Callable[[Any, dict[str, Any]], Mapping[str, Any]] | None = None

    def config(self, cfg: Any) -> Any:
        return self.resolve(cfg) if self.resolve is not None else cfg

    def inputs(self, cfg: Any, refs: Mapping[str, Any]) -> dict[str, Any]:
        chosen = self.select(self.config(cfg), dict(refs)) if self.select else refs
        return {k: v for k, v in chosen.items() if v is not None}

    def fingerprint(self, cfg: Any, refs: Mapping[str, Any]) -> str:
        return fingerprint_of(self.name, self.version, self.config(cfg), self.inputs(cfg, refs))


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """Content hash of a file, or of every file below a directory (names included)."""
    p = Path(path)
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    for f in files:
        h.update(str(f.relative_to(p) if f != p else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:20]


def built_by() -> dict[str, str] | None:
    """The Prefect flow run building a stage (id and name), None outside a run: a later run
    that finds the stage cached names it."""
    try:
        from prefect.context import FlowRunContext, TaskRunContext
    except Exception:  # pragma: no cover - prefect always installed
        return None
    flow_ctx = FlowRunContext.get()
    flow_run = getattr(flow_ctx, "flow_run", None)
    if flow_run is not None:
        return {"id": str(flow_run.id), "name": str(flow_run.name)}
    task_ctx = TaskRunContext.get()  # a task in another process (Dask): the id only
    task_run = getattr(task_ctx, "task_run", None)
    if task_run is not None and task_run.flow_run_id is not None:
        return {"id": str(task_run.flow_run_id), "name": ""}
    return None


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _TRACKED_LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


#: ends the name of the file beside a temporary directory that says who writes it
OWNER_SUFFIX = ".owner"
#: temporary directories of the store: a build (``.tmp-``), a download (``.dl-``), a
#: replaced stage on its way out (``.old-``)
_TMP_PREFIXES = (".tmp-", ".dl-", ".old-")


@contextlib.contextmanager
def owned_tmp_dir(parent: Path, prefix: str, name: str) -> Iterator[Path]:
    """A fresh directory ``parent/<prefix><name>-<random>`` for the block to fill and rename
    into place. Beside it, ``<dir>.owner`` names the writing process (pid, host, start time)
    and stays locked (``flock``) by this process while the block runs; the kernel drops the
    lock when the process ends, however it ends, so :func:`remove_stale_tmp` tells the
    directory of a killed run (owner file unlocked) from a live one. The directory is
    removed when the block raises or leaves it in place; the owner file goes after it."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f"{prefix}{name}-{uuid.uuid4().hex[:8]}"
    owner = tmp.with_name(tmp.name + OWNER_SUFFIX)
    fd = os.open(owner, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.write(fd, json.dumps(info).encode())
        tmp.mkdir()
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # still there: not renamed into place
            with contextlib.suppress(OSError):
                owner.unlink()
    finally:
        os.close(fd)  # releases the lock, after the directory is gone or in place


def swap_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished directory ``tmp`` to ``final``; an existing ``final`` (a refresh)
    is moved aside first and removed after, so ``final`` is never half-written."""
    if final.exists():
        trash = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        final.rename(trash)
        tmp.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(final)


@contextlib.contextmanager
def atomic_directory(final: Path, prefix: str = ".tmp-") -> Iterator[Path]:
    """Write a directory all at once: yield a fresh temporary directory beside ``final``
    (:func:`owned_tmp_dir`, so a killed writer's is swept by :func:`remove_stale_tmp`) for
    the block to fill; it becomes ``final`` when the block finishes (:func:`swap_into_place`)
    and is removed when the block raises. Hold a lock around it when several processes may
    write the same ``final``."""
    final = Path(final)
    with owned_tmp_dir(final.parent, prefix, final.name) as tmp:
        yield tmp
        swap_into_place(tmp, final)


def _owner_alive(owner: Path) -> bool | None:
    """Whether the process that wrote ``owner`` still holds it: True (locked), False
    (unlocked: its writer is gone), None (no owner file)."""
    try:
        fd = os.open(owner, os.O_RDWR)
    except FileNotFoundError:
        return None
    except OSError:
        return True  # cannot tell: keep the directory
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def remove_stale_tmp(directory: Path, legacy_older_than_s: float = 3600.0) -> list[Path]:
    """Remove the temporary directories directly in ``directory`` whose writing process is
    gone: a ``.tmp-``/``.dl-`` directory whose owner file is not locked (see
    :func:`owned_tmp_dir`), an ``.old-`` directory (a replaced stage; garbage once the swap
    happened), and a directory without an owner file (written before owner files existed)
    not changed for ``legacy_older_than_s``. A concurrent run's live directory stays.
    Returns the directories removed."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        name = entry.name
        if not name.startswith(_TMP_PREFIXES) or name.endswith(OWNER_SUFFIX):
            continue
        with contextlib.suppress(OSError):
            if not entry.is_dir(follow_symlinks=False):
                continue
        path = Path(entry.path)
        owner = path.with_name(name + OWNER_SUFFIX)
        alive = _owner_alive(owner)
        if alive is None and not name.startswith(".old-"):
            with contextlib.suppress(OSError):
                alive = now - path.stat().st_mtime <= legacy_older_than_s
        if alive:
            continue
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            owner.unlink()
        if not path.exists():
            removed.append(path)
    # owner files whose directory is gone (a run killed between the two removals)
    for entry in entries:
        if entry.name.startswith(_TMP_PREFIXES) and entry.name.endswith(OWNER_SUFFIX):
            owner = Path(entry.path)
            if not owner.with_name(entry.name[: -len(OWNER_SUFFIX)]).exists():
                if _owner_alive(owner) is False:
                    with contextlib.suppress(OSError):
                        owner.unlink()
    return removed


@dataclass
class BuildContext:
    """Handed to a stage's builder: where to write, and a place for manifest facts."""

    dir: Path
    stage: str
    fingerprint: str
    info: dict[str, Any] = field(default_factory=dict)
    #: where ``dir`` will be once the build succeeds (``dir`` is a temporary directory):
    #: the path to name in messages
    final_dir: Path | None = None

    def final(self, name: str) -> Path:
        """``name`` inside the stage directory as the user will find it."""
        return (self.final_dir or self.dir) / name


class StageStore:
    """Content-addressed, crash-safe directories for stage outputs.

    Args:
        root: directory under which ``<stage>/<fingerprint>/`` folders live, or an
            fsspec URL of one (see the module docstring).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.fs: Any = None  # fsspec filesystem of a remote store, None when local
        self.remote_root = ""
        root_str = os.fspath(root)
        scheme = root_str.split("://", 1)[0] if "://" in root_str else ""
        if scheme in {"", "file", "local"}:
            self.url = None
            path = root_str.split("://", 1)[1] if scheme else root_str
            self.root = Path(path).expanduser().resolve()
        else:
            import fsspec

            self.url = root_str.rstrip("/")
            self.fs, remote = fsspec.core.url_to_fs(self.url)
            self.remote_root = remote.rstrip("/")
            cache = Path(os.environ.get(CACHE_ENV, "~/.cache/label-pipeline/stores")).expanduser()
            self.root = (cache / hashlib.sha256(self.url.encode()).hexdigest()[:16]).resolve()

    def __repr__(self) -> str:
        return f"StageStore({self.url or str(self.root)!r})"

    @property
    def is_remote(self) -> bool:
        return self.fs is not None

    def _remote(self, stage: str, fingerprint: str, *parts: str) -> str:
        return "/".join([self.remote_root, stage, fingerprint, *parts])

    def path(self, stage: str, fingerprint: str) -> Path:
        return self.root / stage / fingerprint

    def is_complete(self, stage: str, fingerprint: str) -> bool:
        if self.is_remote:
            return bool(self.fs.exists(self._remote(stage, fingerprint, MANIFEST)))
        return (self.path(stage, fingerprint) / MANIFEST).is_file()

    def ref(self, stage: str, fingerprint: str, cached: bool = False) -> StageRef:
        """A reference to a complete stage; from a remote store, its local copy."""
        if self.is_remote:
            self._fetch(stage, fingerprint)
        return StageRef(
            stage=stage,
            fingerprint=fingerprint,
            path=str(self.path(stage, fingerprint)),
            cached=cached,
            store=self.url,
        )

    def localize(self, ref: StageRef) -> StageRef:
        """``ref`` with a ``path`` that exists on this machine (downloading it if needed)."""
        if ref.store is None or (Path(ref.path) / MANIFEST).is_file():
            return ref
        return StageStore(ref.store).ref(ref.stage, ref.fingerprint, cached=ref.cached)

    def _fetch(self, stage: str, fingerprint: str) -> None:
        """Download a remote stage into the local cache unless the cached copy is current."""
        final = self.path(stage, fingerprint)
        remote_manifest = self.fs.cat_file(self._remote(stage, fingerprint, MANIFEST))
        local_manifest = final / MANIFEST
        if local_manifest.is_file() and local_manifest.read_bytes() == remote_manifest:
            return
        with self._lock(stage, fingerprint):
            if local_manifest.is_file() and local_manifest.read_bytes() == remote_manifest:
                return
            with atomic_directory(final, ".dl-") as tmp:
                base = self._remote(stage, fingerprint)
                for src in sorted(self.fs.find(base)):
                    rel = src[len(base) :].lstrip("/") if src.startswith(base) else None
                    if rel is None:  # some filesystems drop a leading "/"
                        rel = src.split(f"/{stage}/{fingerprint}/", 1)[1]
                    if rel == MANIFEST:
                        continue
                    dst = tmp / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    self.fs.get_file(src, str(dst))
                (tmp / MANIFEST).write_bytes(remote_manifest)  # the copy is complete

    def _upload(self, stage: str, fingerprint: str, local: Path) -> None:
        """Copy a complete local stage directory into the remote store, manifest last."""
        base = "/".join([self.remote_root, stage])
        tmp = f"{base}/.tmp-{fingerprint}-{uuid.uuid4().hex[:8]}"
        final = self._remote(stage, fingerprint)
        files = sorted(f for f in local.rglob("*") if f.is_file() and f != local / MANIFEST)
        try:
            for f in files:
                self.fs.put_file(str(f), f"{tmp}/{f.relative_to(local).as_posix()}")
            if self.fs.exists(final):  # refresh: retract the old manifest first, then replace
                if self.fs.exists(f"{final}/{MANIFEST}"):
                    self.fs.rm_file(f"{final}/{MANIFEST}")
                self.fs.rm(final, recursive=True)
            for f in files:
                rel = f.relative_to(local).as_posix()
                self.fs.mv(f"{tmp}/{rel}", f"{final}/{rel}")
            self.fs.put_file(str(local / MANIFEST), f"{final}/{MANIFEST}")
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp, recursive=True)

    @contextlib.contextmanager
    def _lock(self, stage: str, fingerprint: str) -> Iterator[None]:
        lock_dir = self.root / stage
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f".{fingerprint}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def build_stage(
        self,
        spec: StageSpec,
        cfg: Any,
        refs: Mapping[str, Any],
        builder: Callable[[BuildContext], dict[str, Any] | None],
        refresh: bool = False,
    ) -> StageRef:
        """:meth:`build` under the stage's identity (``spec.fingerprint(cfg, refs)``)."""
        return self.build(
            spec.name, spec.version, spec.config(cfg), spec.inputs(cfg, refs), builder, refresh
        )

    def build(
        self,
        stage: str,
        version: str,
        config: Any,
        inputs: Mapping[str, Any],
        builder: Callable[[BuildContext], dict[str, Any] | None],
        refresh: bool = False,
    ) -> StageRef:
        """Return the stage directory for these inputs, building it only if needed.

        ``builder(ctx)`` writes everything into ``ctx.dir`` and returns facts for the
        manifest (row counts, decisions...). If it raises, nothing is left behind.
        """
        fp = fingerprint_of(stage, version, config, inputs)
        if not refresh and self.is_complete(stage, fp):
            return self.ref(stage, fp, cached=True)
        with self._lock(stage, fp):
            # another run may have finished it while we waited for the lock
            if not refresh and self.is_complete(stage, fp):
                return self.ref(stage, fp, cached=True)
            final = self.path(stage, fp)
            self.clean_stale_tmp(stage)  # left by a killed run of this stage
            started = time.time()
            with atomic_directory(final) as tmp:
                ctx = BuildContext(dir=tmp, stage=stage, fingerprint=fp, final_dir=final)
                facts = builder(ctx) or {}
                manifest = {
                    "stage": stage,
                    "version": version,
                    "fingerprint": fp,
                    "config": _canonical(config),
                    "inputs": {
                        k: (v.model_dump() if isinstance(v, StageRef) else v)
                        for k, v in inputs.items()
                    },
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "host": socket.gethostname(),
                    "flow_run": built_by(),
                    "seconds": round(time.time() - started, 3),
                    "libraries": library_versions(),
                    **_canonical(ctx.info),
                    **_canonical(facts),
                }
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
            if self.is_remote:
                try:
                    self._upload(stage, fp, final)
                except BaseException:
                    shutil.rmtree(final, ignore_errors=True)
                    raise
        return self.ref(stage, fp, cached=False)

    def clean_stale_tmp(self, stage: str | None = None, older_than_s: float = 3600.0) -> int:
        """Remove the temporary directories that killed runs left in ``stage``'s directory
        (and its hidden subdirectories, e.g. zero-shot shards), or in every stage's when
        ``stage`` is None; a live run's stay (see :func:`remove_stale_tmp`; ``older_than_s``
        applies to directories without an owner file). Returns how many were removed. A
        build runs it for its stage; the flow runs it for the whole store when it starts."""
        stage_dirs = [self.root / stage] if stage else self._stage_dirs()
        removed = 0
        for d in stage_dirs:
            removed += len(remove_stale_tmp(d, older_than_s))
            with contextlib.suppress(OSError):
                for sub in d.iterdir():
                    if sub.name.startswith(".") and not sub.name.startswith(_TMP_PREFIXES):
                        if sub.is_dir():
                            removed += len(remove_stale_tmp(sub, older_than_s))
        return removed

    def _stage_dirs(self) -> list[Path]:
        try:
            return [d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")]
        except OSError:
            return []
