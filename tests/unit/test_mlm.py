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
