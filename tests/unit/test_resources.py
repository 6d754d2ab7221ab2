"""Offline NLTK resources: WordNet from Debian packages, the tagger from textblob-aptagger."""

from __future__ import annotations

import os
import time

import pytest

from label_pipeline import resources
from label_pipeline.errors import ResourceMissingError

needs_debian_wordnet = pytest.mark.skipif(
    not (resources.WORDNET_SOURCE / "data.noun").is_file()
    or not any(p.is_file() for p in resources.LEXNAMES_MAN_PAGES)
    or resources.tagger_pickle_path() is None,
    reason="needs apt wordnet-base + wordnet-sense-index and pip textblob-aptagger",
)


@needs_debian_wordnet
def test_lexnames_built_from_man_page_in_nltk_format():
    lines = resources.lexnames_lines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3"
    assert lines[3] == "03\tnoun.Tops\t1"
    assert lines[29] == "29\tverb.body\t2"
    assert lines[44] == "44\tadj.ppl\t3"
    # NLTK's reader: index, lexname, _ = line.split(); assert int(index) == i
    for i, line in enumerate(lines):
        index, _name, _cat = line.split()
        assert int(index) == i


@pytest.mark.slow
@needs_debian_wordnet
def test_prepare_local_route_gives_data_nltk_reads(tmp_path, monkeypatch):
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader
    from nltk.tag.perceptron import PerceptronTagger

    target = tmp_path / "nltk_data"
    # nltk's path sandbox reads only below directories on nltk.data.path
    monkeypatch.setattr(nltk.data, "path", [*nltk.data.path, str(target)])
    done = resources.prepare(target, try_download=False)
    assert done == {"wordnet": "local", "tagger": "local"}
    wn_dir = target / "corpora" / "wordnet"
    data = wn_dir / "data.noun"
    assert data.is_file() and not data.is_symlink()  # copied, not linked
    reader = WordNetCorpusReader(str(wn_dir), None)
    lemmas = {lem.name() for s in reader.synsets("happy") for lem in s.lemmas()}
    assert {"glad", "felicitous"} <= lemmas
    assert reader.synsets("dog")[0].lexname() == "noun.animal"

    tagger = PerceptronTagger(load=False)
    tagger.load_from_json("eng", loc=target / "taggers" / resources.TAGGER_NAME)
    tags = dict(tagger.tag("The quick brown fox jumps over the lazy dog".split()))
    assert tags["The"] == "DT" and tags["over"] == "IN" and tags["lazy"] == "JJ"

    started = time.perf_counter()
    assert resources.prepare(target, try_download=False) == {
        "wordnet": "present",
        "tagger": "present",
    }
    assert time.perf_counter() - started < 0.5  # idempotent: a file check, nothing rebuilt


def test_prepare_fails_with_install_hint_when_no_route(tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "WORDNET_SOURCE", tmp_path / "no-wordnet")
    monkeypatch.setattr(resources, "tagger_pickle_path", lambda: None)
    with pytest.raises(ResourceMissingError) as err:
        resources.prepare(tmp_path / "nltk_data", try_download=False)
    msg = str(err.value)
    assert "wordnet-base wordnet-sense-index" in msg
    assert "textblob-aptagger" in msg
    assert resources.ENV_VAR in msg
    # nothing half-written is taken for prepared data
    assert not resources.wordnet_available(tmp_path / "nltk_data")
    assert resources.main(["--dir", str(tmp_path / "nltk_data"), "--no-download"]) == 1


def test_env_var_moves_the_data_dir_and_nltk_searches_it(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    monkeypatch.setenv(resources.ENV_VAR, str(tmp_path / "elsewhere"))
    assert resources.nltk_data_dir() == (tmp_path / "elsewhere").resolve()
    d = resources.ensure_nltk_path()
    assert nltk.data.path.count(str(d)) == 1
    resources.ensure_nltk_path()
    assert nltk.data.path.count(str(d)) == 1  # appended once


def test_nltk_offline_turns_downloads_into_resource_errors():
    import nltk

    with resources.nltk_offline("synonym"):
        with pytest.raises(
            ResourceMissingError, match="augment.synonym.*averaged_perceptron_tagger"
        ):
            nltk.download("averaged_perceptron_tagger")
    assert nltk.download is not None and nltk.download.__name__ != "refuse"


def test_require_wordnet_names_method_and_fix(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty")])
    monkeypatch.setenv(resources.ENV_VAR, str(tmp_path / "empty"))
    with pytest.raises(ResourceMissingError) as err:
        resources.require_wordnet("synonym")
    msg = str(err.value)
    assert "augment.synonym" in msg and "corpora/wordnet" in msg
    assert "skip_unavailable" in msg and "enabled=false" in msg
    assert os.fspath(tmp_path / "empty") in msg
