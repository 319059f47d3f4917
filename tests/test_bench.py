"""bench on a tiny random model: the record's fields, ratios and exact KV accounting. Timings are never asserted."""

import json

import pytest
from conftest import tiny_model

from l2a.baselines import even_groups, even_spaced
from l2a.bench import bench, build_prompts, format_table, load_decisions
from l2a.cost import CostModel
from l2a.gated import GatedModel

P, N = 8, 4  # prompt_len, new_tokens: the cache holds P + N - 1 positions


def small_bench(model, **kw):
    args = dict(prompt_len=P, new_tokens=N, batch_sizes=(1, 2), fractions=(0.5,), mixed_batch=4,
                repeats=1, warmup=0, progress=False)
    args.update(kw)
    return bench(model, **args)


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "records.jsonl"
    rec = small_bench(tiny_model(n_layers=4), out=out)
    rec["_out"] = out
    return rec


def by_name(rec):
    return {(e["config"], e["batch"]): e for e in rec["results"]["configs"]}


def test_record_has_every_config_and_field(record):
    got = by_name(record)
    names = {"hf", "gated@1.0", "gated@0.5", "pruned@0.5"}
    assert {(n, b) for n in names for b in (1, 2)} | {("mixed", 4), ("bucketed", 4)} == set(got)
    for e in got.values():
        for key in ("ttft_ms", "decode_tok_s", "total_tok_s", "kv_bytes", "kv_bytes_modeled", "modeled_gflop_per_token",
                    "rss_peak_mib", "layer_fraction", "group_fraction", "layers_kept"):
            assert key in e, key
        assert e["kv_tokens"] == P + N - 1
        assert e["ttft_ms"] > 0 and e["total_tok_s"] > 0 and e["rss_peak_mib"] > 0
    assert got[("gated@0.5", 1)]["layer_fraction"] == 0.5 and got[("gated@0.5", 1)]["layers_kept"] == 2
    assert got[("mixed", 4)]["row_layers_kept"] == [4, 3, 2, 1]  # budgets 1.0, 0.75, 0.5, 0.25 of 4 layers
    assert record["command"] == "bench" and record["config"]["prompt_len"] == P
    json.dumps(record["results"], allow_nan=False)


def test_ratios_are_reported(record):
    ratios = record["results"]["ratios"]
    assert set(ratios["gated_vs_hf"]) == {"1", "2"}
    assert set(ratios["gated_vs_pruned"]) == {"0.5"}
    assert ratios["mixed_speedup_vs_bucketed"] > 0
    assert set(ratios["goals"]) == {"gated_vs_hf>=0.97", "gated_vs_pruned>=0.95", "mixed_speedup_vs_bucketed>1",
                                    "mixed_kv_vs_rows<=1.02"}


def test_kv_bytes_equal_the_cost_model_exactly(record):
    cost = CostModel.from_config(tiny_model(n_layers=4).config)
    tokens = P + N - 1
    for (name, b), e in by_name(record).items():
        assert e["kv_bytes"] == e["kv_bytes_modeled"], name  # plain DynamicCache, RowCache, buckets alike
        if name in ("hf", "gated@1.0"):
            assert e["kv_bytes"] == cost.kv_bytes(None, tokens=tokens, batch=b)
    mixed = by_name(record)[("mixed", 4)]
    rows = [cost.kv_bytes(even_spaced(4, f), tokens=tokens) for f in (1.0, 0.75, 0.5, 0.25)]
    assert mixed["row_kv_bytes"] == rows == mixed["row_kv_bytes_modeled"]
    assert mixed["kv_bytes"] == sum(rows)
    assert record["results"]["ratios"]["mixed_kv_vs_rows"] == 1.0


def test_record_is_appended_and_tabulated(record):
    lines = record["_out"].read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["command"] == "bench"
    table = format_table(record)
    assert table.splitlines()[0].startswith("| config | batch | layers kept | TTFT ms | decode tok/s | ratio | KV MiB")
    assert "| mixed | 4 |" in table and "modeled GFLOP/token" in table
    rec = json.loads(lines[0])  # as read back from JSON: ratio keys are str(batch)
    rec["results"]["ratios"]["gated_vs_hf"] = {"1": 0.5, "2": 0.25}
    table = format_table(rec)
    assert "| 0.500 vs hf |" in table and "| 0.250 vs hf |" in table


def test_explicit_decisions_with_group_pruning_and_a_gated_model(tmp_path):
    d = even_groups(4, 4, 0.5, layers=even_spaced(4, 0.75))
    path = tmp_path / "decisions.json"
    path.write_text(json.dumps([d.to_dict()]))
    (loaded,) = load_decisions(path)
    assert loaded == d
    gm = GatedModel(tiny_model(n_layers=4))
    rec = small_bench(gm, decisions=[loaded], batch_sizes=(2,), mixed_batch=0)
    got = by_name(rec)
    assert set(got) == {("hf", 2), ("gated@1.0", 2), ("gated@d0", 2), ("pruned@d0", 2)}
    e = got[("gated@d0", 2)]
    assert e["group_fraction"] == 0.5 and e["layers_kept"] == 3
    assert e["kv_bytes"] == got[("pruned@d0", 2)]["kv_bytes"] == e["kv_bytes_modeled"]
    assert "mixed_speedup_vs_bucketed" not in rec["results"]["ratios"]


def test_bad_inputs_are_value_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"layers": [True]}))
    with pytest.raises(ValueError, match="non-empty JSON list"):
        load_decisions(bad)
    with pytest.raises(ValueError, match="new_tokens"):
        bench(tiny_model(), new_tokens=0, progress=False)


def test_prompts_without_tokenizer_are_random_ids():
    ids = build_prompts(None, 3, 5, vocab=128)
    assert tuple(ids.shape) == (3, 5) and int(ids.min()) >= 3
