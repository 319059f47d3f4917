"""The main job (`l2a demo`) and one-off generation (`l2a generate`): answer a GSM8K question at several
budgets with the loaded gates (layers, KV-head groups and think allowance), streaming, then a short
Pareto sweep and bench. Called by commands.py; cli.py parses the flags.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .commands import _emit, _load

# Built-in question for `l2a demo` when no GSM8K file is found (an original GSM8K-style problem).
BUILTIN_QUESTION = (
    "A baker makes 48 muffins in the morning and 36 in the afternoon. She sells 60 of them and gives 5 to "
    "her neighbours. How many muffins are left at the end of the day?",
    "19",
)
DATA_ENV = "L2A_DATA"  # overrides the GSM8K file the demo reads
_REPO_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "gsm8k" / "test.jsonl"



class _Stream:
    """on_token callback: prints row 0's text as it grows and times first token / the rest."""

    def __init__(self, tokenizer, echo: bool):
        import time

        self.tok, self.echo, self.clock = tokenizer, echo, time.perf_counter
        self.ids: list[int] = []
        self.shown = ""
        self.t0 = self.clock()
        self.t_first = self.t_last = None

    def __call__(self, tokens):
        self.t_last = self.clock()
        if self.t_first is None:
            self.t_first = self.t_last
        self.ids.append(int(tokens[0]))
        if self.echo:
            text = self.text()
            print(text[len(self.shown):], end="", flush=True)
            self.shown = text

    def text(self) -> str:
        return self.tok.decode(self.ids, skip_special_tokens=True)

    def stats(self) -> dict:
        n = len(self.ids)
        ttft = None if self.t_first is None else self.t_first - self.t0
        decode = (n - 1) / (self.t_last - self.t_first) if n > 1 and self.t_last > self.t_first else None
        return {"new_tokens": n, "ttft_ms": None if ttft is None else 1000 * ttft, "decode_tok_s": decode}


def _chat_ids(tokenizer, text: str, chat: bool):
    if chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    return tokenizer(text, return_tensors="pt")["input_ids"]


def _answer(gm, ids, budget: float, max_new_tokens: int, echo: bool, thinking_token_budget: int | None = None) -> dict:
    """Generate at `budget`: through the loaded gates when there are some, else even-spaced layers."""
    from .baselines import even_spaced
    from .budget import Budget
    from .reasoning import think_length

    if gm.tokenizer is None:
        raise ValueError("this model has no tokenizer; generation from text needs one")
    stream = _Stream(gm.tokenizer, echo)
    if gm.policy is not None:
        gm.generate(ids, budget=Budget(budget), max_new_tokens=max_new_tokens, on_token=stream,
                    thinking_token_budget=thinking_token_budget)
        d, how = gm.last_decisions[0], "learned gates"
    else:
        d, how = even_spaced(gm.n_layers, budget), "static even-spaced: no gates loaded"
        gm.generate(ids, decisions=d, max_new_tokens=max_new_tokens, on_token=stream,
                    thinking_token_budget=thinking_token_budget)
    eos = gm.hf.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos])
    proc = gm.last_think
    return {"budget": budget, "axes": list(Budget(budget).axes), "layers_kept": sum(d.layers), "n_layers": gm.n_layers,
            "groups_kept": round(d.group_fraction(gm.n_groups), 3), "decided_by": how,
            "think_allowance": thinking_token_budget if thinking_token_budget is not None else d.think_tokens,
            "think_tokens": think_length(gm.tokenizer, stream.ids, eos, gm.answer_format),
            "answer_forced": proc is not None and proc.forced_at[0] is not None, **stream.stats(), "text": stream.text()}


def _think_note(ans: dict) -> str:
    allow = ans["think_allowance"]
    return (f"{ans['think_tokens']} think tokens" + ("" if allow is None else f" of {allow} allowed")
            + (", answer forced" if ans["answer_forced"] else ""))


def generate(args) -> int:
    from .record import run_record

    gm = _load(args)
    if gm.tokenizer is None:
        raise ValueError(f"model {args.model!r} has no tokenizer; `l2a generate` needs one")
    ids = _chat_ids(gm.tokenizer, args.prompt, args.chat)
    ans = _answer(gm, ids, args.budget, args.max_new_tokens, echo=True, thinking_token_budget=args.thinking_token_budget)
    print()
    print(f"[budget {args.budget:g}: {ans['layers_kept']}/{ans['n_layers']} layers ({ans['decided_by']}), "
          f"{ans['new_tokens']} tokens, {_think_note(ans)}, {_f(ans['decode_tok_s'])} tok/s decode]", file=sys.stderr)
    config = {k: getattr(args, k) for k in ("model", "budget", "max_new_tokens", "dtype", "threads", "chat",
                                            "thinking_token_budget", "bridges")}
    _emit(run_record("generate", config, {"prompt": args.prompt, **ans}), args.out)
    return 0


def _f(x, spec=".1f"):
    return "—" if x is None else format(x, spec)


def _question(path_arg) -> tuple[str, str, str]:
    """(question, reference answer, source) from a GSM8K-style JSON-lines file, else the built-in one."""
    path = path_arg or os.environ.get(DATA_ENV) or (_REPO_DATA if _REPO_DATA.is_file() else None)
    if path is None:
        return BUILTIN_QUESTION[0], BUILTIN_QUESTION[1], "built-in question"
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no GSM8K file at {path} (from --data or ${DATA_ENV})")
    with open(path, encoding="utf-8") as f:
        first = json.loads(f.readline())
    if "question" not in first:
        raise ValueError(f"{path}: expected JSON lines with a 'question' field")
    ref = str(first.get("answer", "")).rsplit("####", 1)[-1].strip()
    return first["question"], ref, f"{path.resolve()} (first question)"


def demo(args) -> int:
    from .record import run_record

    question, ref, source = _question(args.data)
    print(f"question source: {source}")
    print(f"Q: {question}\nreference answer: {ref}\n")
    gm = _load(args)
    ids = _chat_ids(gm.tokenizer, question, chat=True)
    answers = []
    for b in sorted(set(args.budgets), reverse=True):
        echo = b == 1.0
        print(f"--- budget {b:g}" + (", streaming:" if echo else ""))
        ans = _answer(gm, ids, b, args.max_new_tokens, echo=echo)
        if echo:
            print()
        else:
            text = ans["text"].strip().replace("\n", " ")
            print(text[:300] + (" ..." if len(text) > 300 else ""))
        print(f"[{ans['layers_kept']}/{ans['n_layers']} layers ({ans['decided_by']}), {ans['new_tokens']} tokens "
              f"({_think_note(ans)}), TTFT {_f(ans['ttft_ms'])} ms, decode {_f(ans['decode_tok_s'])} tok/s measured]\n")
        answers.append(ans)
    if gm.policy is None:
        print("note: without trained gates the budgets use static even-spaced skipping.\n")
    results = {"source": source, "question": question, "reference": ref, "answers": answers}
    if args.sweep:
        from .evaluate import evaluate
        from .pareto import report

        methods = ["dense"] + (["l2a"] if gm.policy is not None else []) + ["block-influence", "angular", "even-spaced"]
        out = Path(args.sweep_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        print(f"--- Pareto sweep: gsm8k-loglik, first {args.sweep_limit} items, layer budgets {args.sweep_budgets}, "
              f"methods {','.join(methods)} -> {out}")
        evaluate(gm, "gsm8k-loglik", [args.data], args.sweep_budgets, methods, limit=args.sweep_limit,
                 batch_size=8, seeds=1, out=out, model_name=args.model, axes=("layers",))  # scoring: no thinking to cut
        rep = report(out)
        print(Path(rep["markdown"]).read_text())
        results["sweep"] = {"results": str(out), "report": rep["markdown"], "plots": rep["plots"]}
    if args.bench:
        from .bench import bench, format_table

        fr = tuple(b for b in sorted(set(args.budgets), reverse=True) if b < 1.0) or (0.5,)
        print(f"--- bench: batch 1 and 8, prompt 64, new tokens 32, repeats 2, fractions {fr}")
        rec = bench(gm, prompt_len=64, new_tokens=32, batch_sizes=(1, 8), fractions=fr, repeats=2, warmup=1,
                    dtype=args.dtype, threads=args.threads)
        print(format_table(rec))
        results["bench"] = rec["results"]
    config = {k: getattr(args, k) for k in ("model", "budgets", "max_new_tokens", "sweep", "sweep_limit",
                                            "sweep_budgets", "bench", "dtype", "threads")}
    _emit(run_record("demo", config, results), args.out)
    return 0
