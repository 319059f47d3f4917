"""harness: run lm-evaluation-harness (lm-eval 0.4.13, the `eval` extra) on a GatedModel under a method.

lm-eval has no plugin entry points, so we call its Python API with an `HFLM` subclass whose model calls
go through `GatedModel.forward` / `generate` with the decisions a `Policy` makes for the budget
(DESIGN §3). `mc_task_yaml` writes an offline task config for a file in l2a's mc format
(`dataset_path: json`), with the same prompt as `tasks.MultipleChoice` ("Question: q\\nAnswer:" +
" choice"), so lm-eval's acc / acc_norm can be checked against ours.

Differences from `evaluate.py` worth knowing: lm-eval batches (context, continuation) requests, so a
decision is made per request from the whole scored sequence (right-padded, no attention mask), not once
per question from its prompt; static methods are unaffected (input-agnostic). No timing, no cost model:
use `evaluate.py` for the Pareto points. lm_eval is imported inside the functions that need it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .budget import Budget

_MISSING = "the lm-eval bridge needs the `eval` extra: pip install 'l2a[eval]' (lm-eval==0.4.13)"


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.models.utils_hf import stop_sequences_criteria
    except ImportError:
        raise ImportError(_MISSING) from None
    return lm_eval, HFLM, stop_sequences_criteria


def gated_lm(model, policy, budget, batch_size: int = 8):
    """An lm-eval `HFLM` whose forward and generate run `policy`'s decisions for `budget` on `model`."""
    import torch

    _, HFLM, stop_sequences_criteria = _lm_eval()
    budget = Budget.parse(budget)

    class GatedLM(HFLM):
        def __init__(self):
            super().__init__(pretrained=model.hf, tokenizer=model.tokenizer, backend="causal", batch_size=batch_size)
            self.decisions = []  # every decision made, for realized-cost accounting

        def _decide(self, ids, mask):
            ds = policy.decide(model, ids, mask, [budget] * ids.shape[0])
            self.decisions.extend(ds)
            return ds

        def _model_call(self, inps, attn_mask=None, labels=None):
            with torch.no_grad():
                return model.forward(inps, decisions=self._decide(inps, None))  # (B, T, V)

        def _model_generate(self, context, max_length, stop, **kw):
            mask = kw.pop("attention_mask", None)
            if kw.get("temperature", 0.0) == 0.0 and not kw.get("do_sample"):
                kw.pop("temperature", None)
                kw["do_sample"] = False
            stopping = stop_sequences_criteria(self.tokenizer, stop, context.shape[1], context.shape[0])
            return model.generate(context, attention_mask=mask, decisions=self._decide(context, mask),
                                  max_new_tokens=max_length - context.shape[1], stopping_criteria=stopping, **kw)

    return GatedLM()


def mc_task_yaml(name: str, data_file, out_dir) -> Path:
    """Write an lm-eval task YAML named `name` for an l2a mc JSONL file; return its path.

    JSON is valid YAML, so the config is written with `json.dumps` (no YAML library needed).
    """
    config = {
        **_local_task(name, data_file, "multiple_choice"),
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "target_delimiter": " ",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
    }
    return _write(config, name, out_dir)


def math_task_yaml(name: str, data_file, out_dir, max_gen_toks: int = 256) -> Path:
    """Write an lm-eval generative task YAML for an l2a math JSONL file (GSM8K's `#### N` scoring)."""
    config = {
        **_local_task(name, data_file, "generate_until"),
        "doc_to_target": "{{answer.split('####')[-1].strip()}}",
        "generation_kwargs": {"until": ["Question:", "\n\n"], "do_sample": False, "max_gen_toks": max_gen_toks},
        "filter_list": [{"name": "last-number", "filter": [
            {"function": "regex", "group_select": -1, "regex_pattern": r"(-?[$0-9.,]{2,})|(-?[0-9]+)"},
            {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_case": True, "ignore_punctuation": False,
                         "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"]}],
    }
    return _write(config, name, out_dir)


def _local_task(name: str, data_file, output_type: str) -> dict:
    """The part of a task config shared by every l2a JSONL file: local json dataset, one test split."""
    from .data import resolve

    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(resolve(data_file).resolve())}},
        "test_split": "test",
        "output_type": output_type,
        "doc_to_text": "Question: {{question}}\nAnswer:",
    }


def _write(config: dict, name: str, out_dir) -> Path:
    out = Path(out_dir) / f"{name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    return out


def run_lm_eval(model, tasks: list[str], method: str = "dense", budget=1.0, limit: int | None = None,
                batch_size: int = 8, include_path=None, num_fewshot: int | None = None, seed: int = 0,
                calibration=None) -> dict:
    """lm-eval's `simple_evaluate` on `tasks` with `method` at `budget`; returns its results dict plus
    `l2a`: {method, budget, realized_layers, realized_groups} over the decisions actually made."""
    lm_eval, _, _ = _lm_eval()
    from lm_eval.tasks import TaskManager

    from .baselines import make_method

    policy = make_method(method, seed=seed, calibration=calibration)
    lm = gated_lm(model, policy, budget, batch_size)
    manager = TaskManager(include_path=os.fspath(include_path) if include_path is not None else None)
    out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit, num_fewshot=num_fewshot,
                                  task_manager=manager, random_seed=seed, numpy_random_seed=seed,
                                  torch_random_seed=seed, fewshot_random_seed=seed)
    ds = lm.decisions
    out["l2a"] = {
        "method": method,
        "budget": Budget.parse(budget).to_dict(),
        "realized_layers": sum(d.layer_fraction for d in ds) / len(ds) if ds else None,
        "realized_groups": sum(d.group_fraction(model.n_groups) for d in ds) / len(ds) if ds else None,
    }
    return out
