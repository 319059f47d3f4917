"""Gate artifacts: `l2a_config.json` + `l2a_gates.safetensors`, PEFT-style (DESIGN decision 9).

An artifact holds only the gates (a few hundred KB), never base weights, and records the identity of
the base model it was trained on: the architecture fields of its config (hashed) and a fingerprint of
its embedding weights (robust to fp32/bf16 loading). Loading onto another base is refused with an error
that names both. No pickle: tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch

from . import arch
from .gates import GateConfig, GatePolicy

CONFIG_NAME = "l2a_config.json"
WEIGHTS_NAME = "l2a_gates.safetensors"
FORMAT = 1

_ARCH_FIELDS = (
    "model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
    "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings",
)


def base_identity(hf_model) -> dict:
    """What a gate artifact must match: config hash over architecture fields + embedding fingerprint."""
    cfg = hf_model.config
    fields = {k: getattr(cfg, k, None) for k in _ARCH_FIELDS}
    if fields["head_dim"] is None:
        fields["head_dim"] = arch.geometry(cfg).head_dim
    config_hash = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    emb = hf_model.get_input_embeddings().weight
    rows = emb[: min(256, emb.shape[0])].detach().to("cpu", torch.bfloat16).float()
    weights_hash = hashlib.sha256(rows.numpy().tobytes()).hexdigest()[:16]
    return {
        "name_or_path": getattr(cfg, "_name_or_path", None) or getattr(cfg, "name_or_path", None),
        "config_hash": config_hash,
        "weights_hash": weights_hash,
        "fields": fields,
    }


def policy_digest(policy: GatePolicy) -> str:
    """16 hex digits identifying a policy: its gate config and every parameter and buffer, bit for bit."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(policy.config), sort_keys=True, default=str).encode())
    for name, t in sorted(policy.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def save_gates(policy: GatePolicy, directory: str | os.PathLike, hf_model, extra: dict | None = None) -> Path:
    """Write the artifact; `extra` (training config, metrics) is stored under "training"."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "policy": "GatePolicy",
        "gate_config": policy.config_dict(),
        "base_model": base_identity(hf_model),
        "training": extra or {},
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in policy.state_dict().items()}
    tmp = d / (WEIGHTS_NAME + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, d / WEIGHTS_NAME)
    (d / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return d


def read_config(directory: str | os.PathLike) -> dict:
    d = Path(directory)
    if not (d / CONFIG_NAME).is_file() or not (d / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{d} is not a gate artifact: expected {CONFIG_NAME} and {WEIGHTS_NAME} in it")
    meta = json.loads((d / CONFIG_NAME).read_text())
    if meta.get("format") != FORMAT or meta.get("policy") != "GatePolicy":
        raise ValueError(f"{d / CONFIG_NAME}: unsupported artifact (format {meta.get('format')!r}, policy {meta.get('policy')!r})")
    return meta


def check_base(want: dict, hf_model, what: str) -> None:
    """Refuse an artifact (`what`, e.g. "gates in DIR") made for another base model, naming both."""
    have = base_identity(hf_model)
    if want["config_hash"] != have["config_hash"] or want["weights_hash"] != have["weights_hash"]:
        diff = {k: (want["fields"].get(k), have["fields"].get(k)) for k in want["fields"] if want["fields"].get(k) != have["fields"].get(k)}
        why = f"config fields differ (artifact, model): {diff}" if diff else "same architecture but different weights"
        raise ValueError(
            f"{what} were made for base model {want.get('name_or_path')!r} "
            f"(config {want['config_hash']}, weights {want['weights_hash']}), not this one "
            f"({have.get('name_or_path')!r}, config {have['config_hash']}, weights {have['weights_hash']}): {why}"
        )


def load_gates(directory: str | os.PathLike, hf_model) -> GatePolicy:
    """The GatePolicy stored in `directory`, after checking it was trained on `hf_model`."""
    from safetensors.torch import load_file

    meta = read_config(directory)
    check_base(meta["base_model"], hf_model, f"gates in {directory}")
    policy = GatePolicy(GateConfig(**meta["gate_config"]))
    state = load_file(str(Path(directory) / WEIGHTS_NAME))
    if "depth_w" in state:  # gates with a fitted depth head (depth.py)
        policy.set_depth(state["depth_w"], float(state["depth_b"]))
    policy.load_state_dict(state, strict=True)
    # gates trained with bridges decide for a model that runs them: the evaluator checks (bridges.check_policy)
    policy.trained_bridges = meta.get("training", {}).get("bridges", {}).get("digest")
    return policy.eval()


# ---- training state (resuming an interrupted run) ---------------------------------------------------------


def save_state(path: str | os.PathLike, module, opt, gen: torch.Generator, extra: dict, meta: dict) -> None:
    """Write a run's state: `module`'s state, the optimizer's, the generator's and `extra` tensors to `path`
    (NAME.safetensors, atomically), `meta` (JSON-able) beside it as NAME.json."""
    from safetensors.torch import save_file

    tensors = {f"policy.{k}": v.detach().contiguous() for k, v in module.state_dict().items()}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"opt.{i}.{k}"] = v.detach().reshape(-1).contiguous() if v.dim() == 0 else v.detach().contiguous()
    tensors["rng"] = gen.get_state()
    tensors.update({f"extra.{k}": v.detach().contiguous() for k, v in extra.items()})
    path = Path(path)
    save_file(tensors, str(path) + ".tmp")
    Path(str(path) + ".tmp").replace(path)
    path.with_suffix(".json").write_text(json.dumps(meta))


def read_state(path: str | os.PathLike) -> tuple[dict, dict] | None:
    """(tensors, meta) saved by `save_state` at `path`, or None when there is none."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path.exists() and path.with_suffix(".json").exists()):
        return None
    return load_file(str(path)), json.loads(path.with_suffix(".json").read_text())


def restore_state(tensors: dict, module, opt, gen: torch.Generator) -> dict:
    """Load `read_state`'s tensors into `module`, `opt` and `gen`; returns the extra tensors."""
    module.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("policy.")})
    state = opt.state_dict()
    for i, _ in enumerate(opt.param_groups[0]["params"]):
        st = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"opt.{i}.")}
        if st:
            st["step"] = st["step"].reshape(())
            state["state"][i] = st
    opt.load_state_dict(state)
    gen.set_state(tensors["rng"])
    return {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
