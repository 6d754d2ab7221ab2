"""Tiny, randomly initialised models built from a config and a tokenizer trained with
``tokenizers`` — for tests and speed benchmarks on machines with no hub access."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

DEFAULT_CORPUS = [
    "the cat sat on the mat",
    "a dog chased the ball in the park",
    "this is great news and i am happy",
    "i am so angry about this bug",
    "the build fails with an error on windows",
    "please add support for a new feature",
    "what a surprise, i did not expect that",
    "this is sad and disappointing",
]


def train_wordpiece_tokenizer(out_dir: str | Path, corpus: Iterable[str], vocab_size: int = 500):
    """Build a BERT-style WordPiece tokenizer for ``corpus`` and save it to ``out_dir``.

    When every word of the corpus fits in ``vocab_size`` (with the specials and single
    characters), the vocabulary is those words, numbered in a fixed order, so the same corpus
    always gives the same token ids and a seeded tiny model is the same on every run.
    Otherwise the ``tokenizers`` WordPiece trainer learns sub-words (it breaks frequency ties
    differently from run to run).
    """
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    texts = list(corpus)
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({ch for word in counts for ch in word})
    base = specials + chars + [f"##{ch}" for ch in chars]
    known = set(base)
    words = sorted((w for w in counts if w not in known), key=lambda w: (-counts[w], w))
    fixed = len(base) + len(words) <= vocab_size
    vocab = {t: i for i, t in enumerate(base + words)} if fixed else None
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    if not fixed:
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=specials, min_frequency=1
        )
        tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    fast.save_pretrained(str(out_dir))
    return fast


def make_tiny_bert(
    out_dir: str | Path,
    kind: str = "mlm",
    corpus: Iterable[str] | None = None,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    num_labels: int = 2,
    id2label: dict[int, str] | None = None,
    seed: int = 0,
) -> Path:
    """Save a tiny random BERT with its tokenizer to ``out_dir`` and return the path.

    kind: ``"mlm"`` (BertForMaskedLM), ``"base"`` (BertModel), ``"nli"`` (sequence
    classification with entailment/neutral/contradiction labels) or ``"cls"``
    (sequence classification with ``num_labels`` labels).
    """
    import torch
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertForSequenceClassification,
        BertModel,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_wordpiece_tokenizer(out, corpus or DEFAULT_CORPUS)
    if kind == "nli":
        id2label = {0: "entailment", 1: "neutral", 2: "contradiction"}
    elif id2label is None:
        id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    torch.manual_seed(seed)
    cls = {
        "mlm": BertForMaskedLM,
        "base": BertModel,
        "nli": BertForSequenceClassification,
        "cls": BertForSequenceClassification,
    }[kind]
    cls(config).save_pretrained(str(out))
    return out


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process_group(
    proc: subprocess.Popen, sig: int = signal.SIGTERM, wait_s: float = 30
) -> None:
    """Stop the process group of ``proc`` (started with ``start_new_session=True``): ``sig``
    first, SIGKILL when it has not ended after ``wait_s`` seconds; nothing if it has ended."""
    if proc.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@contextmanager
def local_prefect_server(
    env: dict[str, str] | None = None,
    port: int | None = None,
    log_path: str | Path | None = None,
    timeout_s: float = 180,
) -> Iterator[str]:
    """Start ``prefect server start`` on a loopback port (as ``make server`` does), wait until
    its health check answers, yield the API URL and stop the server on exit (SIGTERM, then
    SIGKILL). ``env`` is the server's environment (default: this process's); its output goes
    to ``log_path`` when given, and its tail is in the error when it does not come up."""
    import sys
    import time
    import urllib.request

    port = port or free_port()
    api = f"http://127.0.0.1:{port}/api"
    prefect = str(Path(sys.executable).with_name("prefect"))
    log = open(log_path, "w") if log_path else None  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                tail = Path(log_path).read_text()[-3000:] if log_path else ""
                raise RuntimeError(f"the Prefect server on port {port} did not come up\n{tail}")
            time.sleep(0.5)
        yield api
    finally:
        stop_process_group(proc)
        if log:
            log.close()
