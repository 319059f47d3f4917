"""bench: *measured* cost of gated inference, side by side with plain transformers and pruned models.

One process, one run, configs interleaved round-robin across repeats so machine noise hits all alike:
- ``hf``: transformers `generate` on the unwrapped model (the dense speed reference);
- ``gated@1.0`` / ``gated@f``: `GatedModel` at the dense decision / at a decision (even-spaced layers);
- ``pruned@f``: `prune_model` of the plain model to the same decision, plain `generate` (its speed limit);
- ``mixed``: one batch whose rows cycle through several budgets in ONE gated generate, versus
  ``bucketed``: the same rows grouped by decision, one gated generate per group, run one after another.

Every run generates exactly `new_tokens` tokens per row (greedy, EOS suppressed by min_new_tokens), all
under `torch.inference_mode`. Metrics (medians over `repeats` after `warmup` rounds; per-repeat values
first, then the median):
- TTFT: wall time of a generate with max_new_tokens=1 (prefill plus one token);
- decode tok/s = batch x (new_tokens - 1) / (total - TTFT), with total the wall time of the full generate;
- total tok/s = batch x new_tokens / total;
- KV bytes held by the cache after the full generate, which holds prompt_len + new_tokens - 1 positions
  (the last token is never fed back), next to the cost model's bytes for that many positions;
- RSS: the per-run peak (VmHWM after resetting it via /proc/self/clear_refs) and its rise over the RSS
  at the start of the run; where the reset is unavailable, the process max RSS (monotone) and no delta.
Modeled FLOPs (cost.py, labelled "modeled") are the mean over the decode steps of one row's FLOPs per
token. This module does not model cost and does not decide anything: decisions come from baselines.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from dataclasses import dataclass, field

from . import memory
from .baselines import even_spaced
from .cost import CostModel
from .decision import GateDecision

# Original GSM8K-style word problems (no external data): the prompt text of every bench row.
PROMPT_TEXT = (
    "Question: A baker makes 48 muffins in the morning and 36 in the afternoon. She sells two thirds of "
    "them and gives 5 to her neighbours. How many muffins are left at the end of the day? "
    "Question: Tom reads 12 pages of his book every weekday and twice as many on each day of the weekend. "
    "The book has 300 pages. How many full weeks does he need to finish it? "
    "Question: A train leaves at 9:15 and travels 180 kilometres at 72 kilometres per hour. It then waits "
    "20 minutes at a station. At what time can it leave the station? "
    "Question: Maria buys 3 notebooks at $4 each and 5 pens at $1.50 each. She pays with a $50 bill. "
    "How much change does she get back? Answer step by step and give the final number."
)
MIB = 1 << 20


@dataclass
class _Config:
    """One measured configuration: who runs it and with which per-row decisions."""

    name: str  # "hf", "gated@1.0", "gated@0.5", "pruned@0.5", "mixed", "bucketed"
    kind: str  # "plain" (a transformers model), "gated" (one GatedModel call), "bucketed" (one call per group)
    batch: int
    decisions: list  # (B,) GateDecision per row
    plain: object = None  # the transformers model of a "plain" config
    requested: object = None  # the requested layer fraction(s); realized ones come from the decisions
    runs: list = field(default_factory=list)  # per measured repeat: dict of ttft_s, total_s, rss, kv


def build_prompts(tokenizer, batch: int, prompt_len: int, vocab: int, seed: int = 0):
    """(batch, prompt_len) token ids: windows of PROMPT_TEXT shifted by 5 tokens per row (random ids
    from [3, vocab) when there is no tokenizer, e.g. a tiny test model)."""
    import torch

    if tokenizer is None:
        g = torch.Generator().manual_seed(seed)
        return torch.randint(3, vocab, (batch, prompt_len), generator=g)
    ids = tokenizer(PROMPT_TEXT, add_special_tokens=False)["input_ids"]
    need = prompt_len + 5 * batch
    ids = (ids * (need // len(ids) + 1))[:need]
    return torch.tensor([ids[5 * i : 5 * i + prompt_len] for i in range(batch)], dtype=torch.long)


def load_decisions(path) -> list[GateDecision]:
    """A JSON file holding a list of GateDecision dicts (`GateDecision.to_dict()` form)."""
    import json

    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of GateDecision dicts")
    return [GateDecision.from_dict(d) for d in data]


# -- running -----------------------------------------------------------------------------------------------


class _Runner:
    """Owns the plain model and attaches/detaches a GatedModel on demand (attach is in place)."""

    def __init__(self, hf, tokenizer, gated_decisions):
        self.hf, self.tokenizer, self.gm = hf, tokenizer, None
        self.gated_decisions = gated_decisions  # planned once per attach so slicing is never timed
        self.pad = tokenizer.pad_token_id if tokenizer is not None else hf.generation_config.pad_token_id

    def plain(self):
        if self.gm is not None:
            self.gm.detach()
            self.gm = None
        return self.hf

    def gated(self):
        if self.gm is None:
            from .gated import GatedModel

            self.gm = GatedModel(self.hf, self.tokenizer)
            for ds in self.gated_decisions:
                self.gm.plan(ds)  # builds group-sliced layers now, outside the timed region
        return self.gm

    def generate(self, cfg: _Config, ids, n: int):
        """(seconds, cache) of one greedy generate of exactly n tokens per row."""
        import torch

        kw = dict(
            attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False,
            pad_token_id=self.pad, return_dict_in_generate=True,
        )
        if cfg.kind == "plain":
            t0 = time.perf_counter()
            out = cfg.plain.generate(input_ids=ids, **kw)
            return time.perf_counter() - t0, out.past_key_values
        gm = self.gm
        gm.last_cache = None  # drop the previous run's KV before this one starts
        t0 = time.perf_counter()
        gm.generate(ids, decisions=cfg.decisions, **kw)
        return time.perf_counter() - t0, gm.last_cache

    def measure(self, cfg: _Config, ids, new_tokens: int) -> dict:
        """TTFT run, then the full run with its KV and RSS. Bucketed: one pair per group, times summed."""
        groups = [list(range(cfg.batch))]
        if cfg.kind == "bucketed":
            by: dict = {}
            for row, d in enumerate(cfg.decisions):
                by.setdefault(d, []).append(row)
            groups = list(by.values())
        ttft = total = 0.0
        kv, kv_tokens, rows_kv = 0, 0, None
        if self.gm is not None:
            self.gm.last_cache = None  # the previous config's KV must not count in this one's RSS
        gc.collect()
        reset = memory.reset_peak_rss()
        rss0 = memory.status_kib("VmRSS") if reset else None
        for rows in groups:
            sub = cfg if cfg.kind != "bucketed" else _Config(cfg.name, "gated", len(rows), [cfg.decisions[r] for r in rows])
            t, _ = self.generate(sub, ids[rows], 1)
            ttft += t
            t, cache = self.generate(sub, ids[rows], new_tokens)
            total += t
            kv += memory.cache_bytes(cache)
            kv_tokens = cache.get_seq_length()
            if cfg.kind == "gated":
                rows_kv = cache.row_kv_bytes()
            del cache
        peak = memory.status_kib("VmHWM") if reset else memory.max_rss_kib()
        return {
            "ttft_s": ttft, "total_s": total, "kv_bytes": kv, "kv_tokens": kv_tokens, "row_kv_bytes": rows_kv,
            "rss_peak_kib": peak, "rss_delta_kib": (peak - rss0) if reset else None,
        }


# -- the benchmark -----------------------------------------------------------------------------------------


def bench(
    model_spec="smollm2-135m",
    prompt_len: int = 64,
    new_tokens: int = 32,
    batch_sizes=(1, 8),
    fractions=(0.75, 0.5),
    mixed_budgets=(1.0, 0.75, 0.5, 0.25),
    repeats: int = 3,
    warmup: int = 1,
    dtype: str = "float32",
    threads: int | None = 2,
    out=None,
    decisions=None,
    mixed_batch: int = 8,
    progress: bool = True,
) -> dict:
    """Measure the configs of the module docstring; return one record (`record.run_record`), appended
    to `out` when given. `model_spec`: a registered name or path, a transformers model, or a GatedModel
    (detached by the run; wrap `m.hf` again to reuse it). `decisions` (GateDecision or dicts) replaces
    `fractions`. Set OMP_WAIT_POLICY=PASSIVE before torch is imported (the CLI does)."""
    import torch

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _bench(model_spec, prompt_len, new_tokens, batch_sizes, fractions, mixed_budgets, repeats, warmup,
                      dtype, threads, out, decisions, mixed_batch, progress)
    finally:
        torch.set_num_threads(old_threads)


def _bench(model_spec, prompt_len, new_tokens, batch_sizes, fractions, mixed_budgets, repeats, warmup, dtype,
           threads, out, decisions, mixed_batch, progress) -> dict:
    import os

    import torch
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    from .gated import GatedModel
    from .loading import load
    from .prune import prune_model
    from .record import run_record, write_record

    for name, v in (("prompt_len", prompt_len), ("new_tokens", new_tokens), ("repeats", repeats)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if warmup < 0 or mixed_batch < 0:
        raise ValueError("warmup and mixed_batch must be non-negative")
    batch_sizes = tuple(batch_sizes)
    if not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be positive ints, got {batch_sizes!r}")
    gm = model_spec if isinstance(model_spec, GatedModel) else load(model_spec, dtype=dtype)
    tok = gm.tokenizer
    hf = gm.detach()
    if isinstance(model_spec, GatedModel) and dtype is not None:
        from .loading import resolve_dtype

        hf.to(resolve_dtype(dtype))
    L, G = gm.n_layers, gm.n_groups
    dtype_bytes = next(hf.parameters()).element_size()
    cost = CostModel.from_config(hf.config, dtype_bytes=dtype_bytes)

    if decisions is not None:
        named = [(f"d{i}", d if isinstance(d, GateDecision) else GateDecision.from_dict(d), None)
                 for i, d in enumerate(decisions)]
        for _, d, _ in named:
            d.check_fits(L, G)
    else:
        named = [(f"{f:g}", even_spaced(L, f), f) for f in fractions if f != 1.0]
    dense = GateDecision.dense(L)

    configs: list[_Config] = []
    for b in batch_sizes:
        configs.append(_Config("hf", "plain", b, [dense] * b, plain=hf, requested=1.0))
        for label, d, f in named:
            configs.append(_Config(f"pruned@{label}", "plain", b, [d] * b, plain=prune_model(hf, d), requested=f))
    for b in batch_sizes:
        configs.append(_Config("gated@1.0", "gated", b, [dense] * b, requested=1.0))
        for label, d, f in named:
            configs.append(_Config(f"gated@{label}", "gated", b, [d] * b, requested=f))
    if mixed_batch and mixed_budgets:
        req = [mixed_budgets[i % len(mixed_budgets)] for i in range(mixed_batch)]
        rows = [even_spaced(L, f) for f in req]
        configs.append(_Config("mixed", "gated", mixed_batch, rows, requested=req))
        configs.append(_Config("bucketed", "bucketed", mixed_batch, rows, requested=req))

    ids = build_prompts(tok, max(batch_sizes + (mixed_batch,)), prompt_len, hf.config.vocab_size)
    runner = _Runner(hf, tok, [c.decisions for c in configs if c.kind == "gated"])
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # generation-config notices would repeat once per run
    t_start = time.perf_counter()
    try:
        with torch.inference_mode(), tqdm(total=(warmup + repeats) * len(configs), desc="bench", file=sys.stderr,
                                          disable=not progress) as bar:
            for rep in range(warmup + repeats):
                for cfg in configs:  # round-robin: every config once per repeat
                    runner.plain() if cfg.kind == "plain" else runner.gated()
                    run = runner.measure(cfg, ids[: cfg.batch], new_tokens)
                    if rep >= warmup:
                        cfg.runs.append(run)
                    bar.set_postfix_str(f"{cfg.name} b={cfg.batch}")
                    bar.update()
    finally:
        runner.plain()
        hf_logging.set_verbosity(verbosity)

    entries = [_summarize(c, cost, prompt_len, new_tokens, G) for c in configs]
    results = {
        "configs": entries,
        "ratios": _ratios(entries, named, batch_sizes),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "rss_method": "per-run VmHWM after clear_refs" if memory.reset_peak_rss() else "process ru_maxrss (monotone)",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "notes": {
            "decode_tok_s": "batch * (new_tokens - 1) / (total_s - ttft_s), per repeat, then the median",
            "ttft_s": "generate with max_new_tokens=1; bucketed: summed over buckets (all rows' first token)",
            "kv_bytes": "held after the full generate (prompt_len + new_tokens - 1 positions); bucketed: summed over buckets",
            "modeled": "CostModel FLOPs per decode token per row, mean over the decode steps; kv_bytes_modeled likewise",
        },
    }
    config = {
        "model": model_spec if isinstance(model_spec, str) else (getattr(hf.config, "_name_or_path", "") or type(hf).__name__),
        "model_type": hf.config.model_type,
        "prompt_len": prompt_len, "new_tokens": new_tokens, "batch_sizes": batch_sizes, "fractions": fractions,
        "decisions": None if decisions is None else [d.to_dict() for _, d, _ in named], "mixed_budgets": mixed_budgets,
        "mixed_batch": mixed_batch, "repeats": repeats, "warmup": warmup, "dtype": dtype, "threads": threads,
        "prompts": "tokenizer(PROMPT_TEXT) windows" if tok is not None else "random ids",
    }
    record = run_record("bench", config, results)
    if out is not None:
        write_record(out, record)
    return record


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _summarize(c: _Config, cost: CostModel, prompt_len: int, new_tokens: int, n_groups: int) -> dict:
    B, n = c.batch, new_tokens - 1
    decode = [B * n / (r["total_s"] - r["ttft_s"]) if n and r["total_s"] > r["ttft_s"] else None for r in c.runs]
    kv_tokens = c.runs[-1]["kv_tokens"]
    flops = [
        sum(cost.decode_flops(d, prompt_len + j) for j in range(1, n + 1)) / n if n else cost.decode_flops(d, prompt_len)
        for d in c.decisions
    ]
    rows_modeled = [cost.kv_bytes(d, tokens=kv_tokens) for d in c.decisions]
    layers = [sum(d.layers) for d in c.decisions]
    entry = {
        "config": c.name, "batch": B, "requested_fraction": c.requested,
        "layers_kept": statistics.mean(layers), "n_layers": cost.n_layers,
        "layer_fraction": statistics.mean(d.layer_fraction for d in c.decisions),
        "group_fraction": statistics.mean(d.group_fraction(n_groups) for d in c.decisions),
        "ttft_ms": 1000 * _median(r["ttft_s"] for r in c.runs),
        "total_s": _median(r["total_s"] for r in c.runs),
        "decode_tok_s": _median(decode),
        "total_tok_s": _median(B * new_tokens / r["total_s"] for r in c.runs),
        "kv_bytes": c.runs[-1]["kv_bytes"], "kv_tokens": kv_tokens,
        "kv_bytes_modeled": sum(rows_modeled),
        "modeled_gflop_per_token": statistics.mean(flops) / 1e9,
        "rss_peak_mib": max(r["rss_peak_kib"] for r in c.runs) / 1024,
        "rss_delta_mib": _median(None if r["rss_delta_kib"] is None else r["rss_delta_kib"] / 1024 for r in c.runs),
        "runs": {k: [r[k] for r in c.runs] for k in ("ttft_s", "total_s")},
    }
    if c.runs[-1]["row_kv_bytes"] is not None:
        entry["row_kv_bytes"] = c.runs[-1]["row_kv_bytes"]
        entry["row_kv_bytes_modeled"] = rows_modeled
    if c.name in ("mixed", "bucketed"):
        entry["row_layers_kept"] = layers
    return entry


def _ratios(entries: list[dict], named, batch_sizes) -> dict:
    by = {(e["config"], e["batch"]): e for e in entries}

    def ratio(a, b, key="decode_tok_s"):  # keys of the returned dicts are str(batch): JSON object keys
        x, y = by.get(a), by.get(b)
        if x is None or y is None or not x[key] or not y[key]:
            return None
        return x[key] / y[key]

    def per_batch(a, b):
        return {str(n): ratio((a, n), (b, n)) for n in batch_sizes}

    out = {
        "gated_vs_hf": per_batch("gated@1.0", "hf"),
        "gated_vs_pruned": {lab: per_batch(f"gated@{lab}", f"pruned@{lab}") for lab, *_ in named},
        "pruned_speedup_vs_hf": {lab: per_batch(f"pruned@{lab}", "hf") for lab, *_ in named},
        "gated_speedup_vs_hf": {lab: per_batch(f"gated@{lab}", "hf") for lab, *_ in named},
    }
    mixed = next((e for e in entries if e["config"] == "mixed"), None)
    bucketed = next((e for e in entries if e["config"] == "bucketed"), None)
    if mixed and bucketed:
        out["mixed_speedup_vs_bucketed"] = bucketed["total_s"] / mixed["total_s"]
        out["mixed_kv_vs_rows"] = mixed["kv_bytes"] / mixed["kv_bytes_modeled"]
    vals = lambda d: [v for v in d.values() if v is not None]  # noqa: E731
    gp = [v for d in out["gated_vs_pruned"].values() for v in vals(d)]
    gh = vals(out["gated_vs_hf"])
    out["goals"] = {  # None: not measured (or no valid timing)
        "gated_vs_hf>=0.97": all(v >= 0.97 for v in gh) if gh else None,
        "gated_vs_pruned>=0.95": all(v >= 0.95 for v in gp) if gp else None,
        "mixed_speedup_vs_bucketed>1": out.get("mixed_speedup_vs_bucketed", 0) > 1 if mixed else None,
        "mixed_kv_vs_rows<=1.02": out.get("mixed_kv_vs_rows", 9) <= 1.02 if mixed else None,
    }
    return out


def format_table(record: dict) -> str:
    """The markdown table of a bench record (measured, with the modeled column labelled)."""
    res = record["results"]
    ratios = res["ratios"]
    head = "| config | batch | layers kept | TTFT ms | decode tok/s | ratio | KV MiB | modeled GFLOP/token |"
    lines = [head, "|" + "---|" * 8]

    def fmt(x, spec):
        return "—" if x is None else format(x, spec)

    for e in res["configs"]:
        name, b = e["config"], str(e["batch"])
        r = None
        if name == "gated@1.0":
            r = fmt(ratios["gated_vs_hf"].get(b), ".3f") + " vs hf"
        elif name.startswith("gated@"):
            r = fmt(ratios["gated_vs_pruned"][name[6:]].get(b), ".3f") + " vs pruned"
        elif name.startswith("pruned@"):
            r = fmt(ratios["pruned_speedup_vs_hf"][name[7:]].get(b), ".2f") + "x hf"
        elif name == "mixed":
            r = fmt(ratios.get("mixed_speedup_vs_bucketed"), ".2f") + "x bucketed"
        kept = f"{e['layers_kept']:g}/{e['n_layers']}" + (" (mean)" if name in ("mixed", "bucketed") else "")
        lines.append(
            f"| {name} | {b} | {kept} | {fmt(e['ttft_ms'], '.1f')} | {fmt(e['decode_tok_s'], '.1f')} | {r or ''} "
            f"| {e['kv_bytes'] / MIB:.2f} | {e['modeled_gflop_per_token']:.3f} |"
        )
    lines.append(
        "\nratio: decode tok/s of gated@1.0 / hf and gated@f / pruned@f (goals >= 0.97, >= 0.95); pruned: decode "
        "speedup over hf; mixed: bucketed / mixed wall time (goal > 1). "
        + (f"mixed KV / sum of rows (cost model): {ratios['mixed_kv_vs_rows']:.4f} (goal <= 1.02)."
           if "mixed_kv_vs_rows" in ratios else "")
    )
    return "\n".join(lines)
