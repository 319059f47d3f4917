"""The `l2a` CLI: lazy (no torch for --help), user errors exit 2 with one clear line and no traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from l2a import cli, demo

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run(*code_or_args, module=False):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])))
    argv = [sys.executable, "-m", "l2a.cli", *code_or_args] if module else [sys.executable, "-c", *code_or_args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)


def test_help_does_not_import_torch():
    code = (
        "import sys, l2a.cli\n"
        "for argv in (['--help'], ['bench', '--help'], ['demo', '--help'], ['generate', '--help']):\n"
        "    try:\n"
        "        l2a.cli.main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    p = run(code)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("NO-TORCH")
    assert "usage: l2a" in p.stdout and "bench" in p.stdout and "static" in p.stdout


@pytest.mark.parametrize("args", [
    ["generate", "--prompt", "hi", "--budget", "1.5"],
    ["demo", "--budgets", "1.0,0"],
    ["bench", "--fractions", "0.5,abc"],
])
def test_bad_budget_exits_2_without_traceback(args):
    p = run(*args, module=True)
    assert p.returncode == 2
    assert "budget must be" in p.stderr and "(0, 1]" in p.stderr
    assert "Traceback" not in p.stderr


def test_library_value_error_is_a_clean_user_error(tmp_path, capsys):
    bad = tmp_path / "d.json"
    bad.write_text(json.dumps([{"layers": [True], "bogus": 1}]))
    assert cli.main(["bench", "--decisions", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("l2a: error: unknown GateDecision keys ['bogus']") and "Traceback" not in err


def test_unknown_model_is_a_clean_user_error(capsys):
    assert cli.main(["generate", "--model", "no-such-model", "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("l2a: error: unknown model 'no-such-model'") and "smollm2-135m" in err


def test_calibrate_needs_a_gate_artifact(capsys):
    assert cli.main(["calibrate"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("l2a: error: l2a calibrate needs --gates DIR")


def test_calib_mc_search_needs_calib_mc(capsys, tmp_path):
    assert cli.main(["eval", "--task", "mc", "--results", str(tmp_path / "r.jsonl"), "--calib-mc-search", "64"]) == 2
    assert "pass --calib-mc FILE too" in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "r.jsonl").exists()


def test_calib_flags_make_the_static_baselines_calibration():
    from l2a.commands import _calibration
    from l2a.static import Calibration

    args = cli._parser().parse_args(["eval", "--task", "mc", "--calib-search", "64", "--calib-mc", "a.jsonl", "b.jsonl",
                                     "--calib-mc-search", "128"])
    assert _calibration(args) == Calibration(search=64, mc=("a.jsonl", "b.jsonl"), mc_search=128)
    assert _calibration(cli._parser().parse_args(["eval", "--task", "mc"])) == Calibration()


def test_fit_depth_and_check_gates_without_statics_say_what_they_need(capsys):
    assert cli.main(["fit-depth"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("l2a: error: l2a fit-depth needs --gates DIR")
    assert cli.main(["check-gates", "--no-static"]) == 2
    assert "give --ablation DIR" in capsys.readouterr().err


def test_demo_question_source(tmp_path, monkeypatch):
    f = tmp_path / "gsm.jsonl"
    f.write_text(json.dumps({"question": "What is 2+2?", "answer": "2+2=4\n#### 4"}) + "\n")
    q, ref, source = demo._question(str(f))
    assert (q, ref) == ("What is 2+2?", "4") and str(f.resolve()) in source
    monkeypatch.setenv(demo.DATA_ENV, str(f))
    assert demo._question(None)[0] == "What is 2+2?"
    monkeypatch.setenv(demo.DATA_ENV, str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="no GSM8K file"):
        demo._question(None)
    monkeypatch.delenv(demo.DATA_ENV)
    monkeypatch.setattr(demo, "_REPO_DATA", tmp_path / "absent.jsonl")
    assert demo._question(None) == (*demo.BUILTIN_QUESTION, "built-in question")


@pytest.mark.parametrize("native", [True, False])
def test_dtype_auto_is_resolved_before_the_command_runs(native, monkeypatch, capsys):
    import torch

    import l2a.loading

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    monkeypatch.setattr(l2a.loading, "cpu_flags", lambda: {"amx_bf16"})
    args = cli._parser().parse_args(["calibrate"])  # calibrate defaults to auto
    assert args.dtype == "auto"
    cli._resolve_auto_dtype(args)
    assert args.dtype == ("bfloat16" if native else "float32")  # records carry the dtype that ran, never "auto"
    assert ("no native bfloat16" in capsys.readouterr().err) is not native
    assert cli._parser().parse_args(["eval", "--task", "mc", "--dtype", "auto"]).dtype == "auto"
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["eval", "--task", "mc", "--dtype", "int8"])


def test_warm_refine_takes_several_budgets_and_refuses_bad_ones(capsys, tmp_path):
    args = cli._parser().parse_args(["train", "--warm-start", "greedy-kl", "--warm-refine", "0.7", "0.55"])
    assert args.warm_refine == [0.7, 0.55]  # TrainConfig sorts them deepest first
    out = str(tmp_path / "g")
    assert cli.main(["train", "--gates-out", out, "--warm-start", "block-influence", "--warm-refine", "0.6"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("l2a: error: warm_refine refines the greedy-kl")
    assert cli.main(["train", "--gates-out", out, "--warm-start", "greedy-kl", "--warm-refine", "0.3"]) == 2
    assert "[0.4, 1)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--warm-start", "greedy-kl", "--warm-refine", "0.55", "1.5"])
    assert "budget must be in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()
    args = cli._parser().parse_args(["train", "--select", "val-exact", "--val-budgets", "0.85", "0.7", "0.55"])
    assert (args.select, args.val_budgets) == ("val-exact", [0.85, 0.7, 0.55])
    assert cli.main(["train", "--gates-out", out, "--select", "val-exact", "--val-budgets", "1.0"]) == 2
    assert "val_budgets must be layer budgets in (0, 1)" in capsys.readouterr().err
    assert cli.main(["train", "--gates-out", out, "--sampler", "topk"]) == 2  # the default estimator is st
    assert "topk needs estimator score" in capsys.readouterr().err
    assert cli._parser().parse_args(["train", "--estimator", "score", "--sampler", "topk"]).sampler == "topk"
    assert not (tmp_path / "g").exists()


def test_train_flags_reach_the_train_config(monkeypatch, tmp_path):
    import l2a.train

    seen = []
    monkeypatch.setattr(l2a.train, "train", lambda cfg: seen.append(cfg) or {"config": {}, "gate_params": 0, "seconds": 0})
    mc = ["--warm-start", "greedy-kl", "--train-text", "0.5", "--mix-mc", "a.jsonl", "--dtype", "float32"]
    for flags, calib_mix in (([], True), (["--no-calib-mix"], False)):
        assert cli.main(["train", "--gates-out", str(tmp_path / "g"), *mc, *flags]) == 0
        assert (seen[-1].mix_mc, seen[-1].train_text, seen[-1].calib_mix) == (["a.jsonl"], 0.5, calib_mix)


def test_commands_load_their_bridges_with_the_gates(monkeypatch):
    """`l2a eval --bridges` / `tune-bridges --bridges` load the bridges with the gates, in one call: gates
    trained with bridges are then checked against them (no warning for bridges attached afterwards)."""
    import argparse

    from l2a import commands, loading

    seen = {}
    monkeypatch.setattr(loading, "load", lambda spec, **kw: seen.update(kw) or "model")
    args = argparse.Namespace(threads=0, model="m", dtype="float32", gates="G", bridges="B")
    assert commands._load(args) == "model" and seen == {"dtype": "float32", "gates": "G", "bridges": "B"}
    commands._load(argparse.Namespace(threads=0, model="m", dtype="float32", no_gates=True))
    assert seen == {"dtype": "float32", "gates": False, "bridges": None}


def test_generate_loads_and_records_its_bridges(monkeypatch, tmp_path, capsys):
    """`l2a generate --bridges DIR` loads the bridges with the gates and names them in its record."""
    from l2a import loading

    seen = {}
    fake = type("M", (), {"tokenizer": object()})()
    monkeypatch.setattr(loading, "load", lambda spec, **kw: seen.update(kw) or fake)
    monkeypatch.setattr(demo, "_chat_ids", lambda tok, prompt, chat: [1, 2])
    monkeypatch.setattr(demo, "_answer", lambda *a, **k: {"layers_kept": 3, "n_layers": 4, "decided_by": "learned gates",
                                                          "new_tokens": 2, "think_allowance": None, "think_tokens": 0,
                                                          "answer_forced": False, "decode_tok_s": 1.0})
    out = tmp_path / "r.jsonl"
    assert cli.main(["generate", "--prompt", "hi", "--budget", "0.5", "--bridges", "B", "--out", str(out)]) == 0
    assert seen["bridges"] == "B"
    assert json.loads(out.read_text())["config"]["bridges"] == "B"
