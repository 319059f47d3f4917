"""Budget forcing: triggers exactly at each row's allowance, always yields a parseable answer."""

import pytest
import torch
from chartok import char_tokenizer
from conftest import tiny_model
from transformers import LogitsProcessorList

from l2a.gated import GatedModel
from l2a.reasoning import ThinkBudgetProcessor
from l2a.tasks import extract_answer


@torch.no_grad()
def test_forcing_per_row_and_parseable_answer():
    tok = char_tokenizer()
    m = GatedModel(tiny_model("llama", n_layers=2), tokenizer=tok)
    ids = tok(["Q: 1+1?", "Q: 2+3?", "Q: 9-4?"], return_tensors="pt", padding=True)
    marker = tok("\n#### ", add_special_tokens=False)["input_ids"]
    digits = [tok.convert_tokens_to_ids(c) for c in "0123456789"]
    allowances = [3, 7, None]
    T = ids["input_ids"].shape[1]
    proc = ThinkBudgetProcessor(allowances, T, marker, eos_id=1, answer_tokens=4, numeric_ids=digits)
    out = m.generate(ids["input_ids"], attention_mask=ids["attention_mask"], max_new_tokens=20,
                     logits_processor=LogitsProcessorList([proc]), pad_token_id=0)
    free = m.generate(ids["input_ids"], attention_mask=ids["attention_mask"], max_new_tokens=20,
                      pad_token_id=0)
    for row, a in enumerate(allowances):
        gen = out[row, T:].tolist()
        if a is None:  # uncapped row: untouched by the processor
            assert gen == free[row, T:].tolist()
            continue
        assert gen[:a] == free[row, T : T + a].tolist()  # thinking before the allowance is the model's own
        assert gen[a : a + len(marker)] == marker  # forcing starts exactly at the allowance
        text = tok.decode(gen, skip_special_tokens=True)
        assert extract_answer(text) is not None  # a parseable number follows the marker
        assert 1 in gen[a + len(marker) : a + len(marker) + 5]  # bounded answer, then EOS


def test_bad_allowances_are_refused():
    with pytest.raises(ValueError, match="non-negative"):
        ThinkBudgetProcessor([-1], 4, [5], eos_id=1)
    with pytest.raises(ValueError, match="marker"):
        ThinkBudgetProcessor([3], 4, [], eos_id=1)
