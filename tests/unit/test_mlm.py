import pytest
import torch

from label_pipeline.mlm import masked_logits, mlm_head


def _distilbert(tok_dir):
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=200, dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    return DistilBertForMaskedLM(cfg).eval()


def _bert(tiny_mlm_dir):
    from transformers import AutoModelForMaskedLM

    return AutoModelForMaskedLM.from_pretrained(str(tiny_mlm_dir)).eval()


@pytest.mark.parametrize("build", [_bert, _distilbert])
def test_head_on_masked_positions_equals_full_forward(build, tiny_mlm_dir):
    model = build(tiny_mlm_dir)
    head = mlm_head(model)
    assert head is not None
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, model.config.vocab_size, (3, 11), generator=g)
    attn = torch.ones_like(ids)
    attn[2, 7:] = 0
    select = torch.zeros_like(ids, dtype=torch.bool)
    select[0, 1] = select[0, 5] = select[1, 10] = select[2, 3] = True
    inputs = {"input_ids": ids, "attention_mask": attn}
    with torch.no_grad():
        fast = masked_logits(model, head, inputs, select)
        full = model(**inputs).logits[select]
        fallback = masked_logits(model, None, inputs, select)
    assert fast.shape == (4, model.config.vocab_size)
    torch.testing.assert_close(fast, full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fallback, full)


def test_fitted_head_perplexity_reads_the_encoder_not_the_random_head(tmp_path):
    """A created head is random: its perplexity is that of the head. Fitting a copy of the
    head on the frozen encoder gives a lower figure, at least as good as the held-out tokens'
    own frequencies (what a head learns first), and the model is left exactly as it was."""
    from label_pipeline.devices import DeviceConfig, choose_device
    from label_pipeline.mlm import (
        MaskedLMTraining,
        _masked_states,
        fitted_head_perplexity,
        heldout_perplexity,
        load_masked_lm,
        pack_texts,
    )
    from label_pipeline.testing import DEFAULT_CORPUS, make_tiny_bert

    base = make_tiny_bert(tmp_path / "base", "base")
    mlm = load_masked_lm(base)
    assert mlm.head_created
    texts = [f"{t} {i}" for i in range(20) for t in DEFAULT_CORPUS]
    fit, held = (
        pack_texts(mlm.tokenizer, texts[:-40], 32),
        pack_texts(mlm.tokenizer, texts[-40:], 32),
    )
    cfg, cpu = MaskedLMTraining(seed=3), choose_device(DeviceConfig(device="cpu"))
    before = {k: v.clone() for k, v in mlm.model.state_dict().items()}
    raw = heldout_perplexity(mlm, held, cfg, cpu)
    fitted = fitted_head_perplexity(mlm, fit, held, cfg, cpu, steps=200)
    assert fitted is not None and raw is not None and fitted < raw
    _, held_tokens = _masked_states(mlm, held, cfg, cpu, 32, cfg.seed)
    _, fit_tokens = _masked_states(mlm, fit, cfg, cpu, 32, cfg.seed + 1)
    freq = torch.bincount(fit_tokens, minlength=len(mlm.tokenizer)).double() + 0.5
    unigram = float(torch.exp(-torch.log(freq / freq.sum())[held_tokens].mean()))
    assert fitted < unigram * 1.05
    after = mlm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert heldout_perplexity(mlm, held, cfg, cpu) == raw  # same masks, same model
