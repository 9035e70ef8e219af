"""The retrofit recipe (recipes/retrofit.py) end to end on tiny models built in code: every mode, the
--no-vga control, the output through the checkpoint routes, kill + resume equivalence, two processes
(DDP over gloo), and every bad input refused before training."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import vga_hf
from vga_hf.testing import save_tiny_checkpoint, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "retrofit.py"
CONFIGS = ROOT / "recipes" / "configs"


def _load_recipe():
    spec = importlib.util.spec_from_file_location("retrofit_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["retrofit_recipe"] = module
    spec.loader.exec_module(module)
    return module


recipe = _load_recipe()

WORDS = ("the king queen crown sword night day love death honour speak hath thou thee my lord good sir "
         "what where when why how come go stay fly heart blood fair foul").split()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrofit_assets")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "." for _ in range(900)]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return {"root": root, "llama": save_tiny_checkpoint(root / "tiny_llama", "llama"),
            "gpt2": save_tiny_checkpoint(root / "tiny_gpt2", "gpt2"), "data": str(root / "train.txt")}


def base_args(assets, out, model="llama", **extra) -> list[str]:
    args = {"model": assets[model], "data": assets["data"], "output_dir": str(out), "max_steps": 4,
            "batch_size": 2, "block_len": 32, "eval_blocks": 2, "eval_every": 2, "warmup_steps": 1,
            "gate_lr": 0.01, "save_every": 0, "diagnostics.window": 32, "diagnostics.stride": 32,
            "diagnostics.max_windows": 1, "diagnostics.calib_windows": 1, "diagnostics.progress": False}
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


def run(argv) -> int:
    return recipe.main(list(argv))


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


# ---- end to end ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,model", [("gates", "llama"), ("gates+lora", "llama"), ("full", "gpt2")])
def test_end_to_end(assets, tmp_path, mode, model):
    out = tmp_path / "run"
    assert run(base_args(assets, out, model, mode=mode)) == 0
    for name in ("summary.md", "summary.json", "log.jsonl", "config.yaml", "model/config.json",
                 "model/README.md", "diagnostics_before.json", "diagnostics_after.json"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    for key in ("perplexity", "sink_rate", "first_token_attention", "value_drain", "kurtosis", "max_inf_norm",
                "w8a8_gap", "gate_mean_abs_shift", "gate_max_abs_shift"):
        assert key in summary["after"], key
    assert summary["before"]["gate_mean_abs_shift"] == 0.0  # identity gates before training
    assert summary["after"]["gate_max_abs_shift"] > 0  # ... and they moved
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss/lm" in r] == [1, 2, 3, 4]
    assert any("eval/loss" in r for r in log)
    table = (out / "summary.md").read_text()
    assert "| perplexity (held-out) |" in table and "gates moved" in table
    card = (out / "model" / "README.md").read_text()
    assert "perplexity" in card

    saved = weights(out / "model")
    base = weights(assets[model])
    gate_keys = [k for k in saved if ".vga_gate." in k]
    assert gate_keys and not any("lora" in k for k in saved)  # LoRA merged, gates kept
    changed = [k for k in base if not torch.equal(base[k], saved[k])]
    if mode == "gates":
        assert changed == []  # base frozen
    else:
        assert changed  # LoRA merged into / full fine-tuning changed the attention weights

    # the output loads through the checkpoint routes and computes what was measured
    loaded = _load_routes(out / "model")
    for m in loaded:
        assert vga_hf.is_patched(m)
        assert torch.equal(dict(m.named_parameters())[gate_keys[0]].detach(), saved[gate_keys[0]])
    ids = torch.arange(3, 40)[None]
    logits = [m(ids).logits for m in loaded]
    for other in logits[1:]:
        torch.testing.assert_close(logits[0], other)


def _load_routes(folder):
    from transformers import AutoModelForCausalLM

    models = [AutoModelForCausalLM.from_pretrained(folder),  # import vga_hf has run
              AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True),  # the code saved with it
              vga_hf.from_pretrained(folder)]
    return [m.eval() for m in models]


def test_control_run_without_vga(assets, tmp_path):
    out = tmp_path / "control"
    assert run(base_args(assets, out, mode="full", **{"vga": False})) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "gate_mean_abs_shift" not in summary["after"]
    assert "perplexity" in summary["after"] and "sink_rate" in summary["after"]
    saved = weights(out / "model")
    assert not any(".vga_gate." in k for k in saved)
    config = json.loads((out / "model" / "config.json").read_text())
    assert "vga_config" not in config
    assert "vga=off (control)" in (out / "summary.md").read_text()


def test_control_flag_spelling(assets):
    cfg = recipe.parse_config(["--no-vga", "--mode", "full", "--push-to-hub", "me/x", "--overwrite"])
    assert (cfg.vga, cfg.mode, cfg.push_to_hub, cfg.overwrite) == (False, "full", "me/x", True)


# ---- resume --------------------------------------------------------------------------------------
def test_resume_after_kill_gives_the_same_weights(assets, tmp_path):
    extra = {"mode": "gates+lora", "lora_dropout": 0.1, "max_steps": 6, "save_every": 2, "keep_checkpoints": 2,
             "eval_every": 0}
    reference = tmp_path / "reference"
    assert run(base_args(assets, reference, **extra)) == 0

    killed = tmp_path / "killed"
    argv = base_args(assets, killed, **extra, debug_step_sleep=1.0)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, str(RECIPE), *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    marker = killed / "checkpoints" / "step-0000002" / recipe.STATE_FILE
    deadline = time.time() + 150
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert marker.exists(), err[-3000:]
    assert not (killed / "model").exists()  # it really was interrupted

    assert run(base_args(assets, killed, **extra, resume="latest")) == 0
    log = [json.loads(line) for line in (killed / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss/lm" in r][-1] == 6
    ref, got = weights(reference / "model"), weights(killed / "model")
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key


def test_resume_refuses_a_different_configuration(assets, tmp_path):
    out = tmp_path / "run"
    assert run(base_args(assets, out, max_steps=3, save_every=2)) == 0
    message = _refused(base_args(assets, out, max_steps=3, save_every=2, gate_lr=0.5, resume="latest"))
    assert "different configuration" in message and "gate_lr" in message


# ---- two processes -------------------------------------------------------------------------------
def test_two_processes_ddp_gloo(assets, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(29500 + os.getpid() % 1000), str(RECIPE),
           *base_args(assets, out, mode="gates+lora", max_steps=3, save_every=2)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "2 process(es)" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["world_size"] == 2
    assert summary["run"]["tokens_per_step"] == 2 * 2 * 32
    state = json.loads((out / "checkpoints" / "step-0000002" / recipe.STATE_FILE).read_text())
    assert state["fingerprint"]["world_size"] == 2
    assert (out / "model" / "model.safetensors").exists()


# ---- bad input, refused before training ----------------------------------------------------------
def _refused(argv, capsys=None) -> str:
    import io
    from contextlib import redirect_stderr

    buf = io.StringIO()
    with redirect_stderr(buf):
        code = run(argv)
    assert code == 2, buf.getvalue()
    return buf.getvalue()


def test_refuses_unknown_model(assets, tmp_path):
    message = _refused(base_args(assets, tmp_path / "o", model="llama") + [f"model={tmp_path / 'nowhere'}"])
    assert "no such local model folder" in message
    assert not (tmp_path / "o").exists()


def test_refuses_unpatchable_model(assets, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = tmp_path / "tiny_mamba"
    config = AutoConfig.for_model("mamba", vocab_size=128, hidden_size=32, num_hidden_layers=1, state_size=4)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    message = _refused(base_args(assets, tmp_path / "o", attn_implementation="eager") + [f"model={folder}"])
    assert "cannot be patched" in message and "mamba" in message
    assert not (tmp_path / "o").exists()


def test_refuses_data_without_text_column(assets, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps({"content": "some text " * 20}) for _ in range(50)))
    message = _refused(base_args(assets, tmp_path / "o") + [f"data={data}"])
    assert "no text column 'text'" in message and "content" in message


def test_refuses_empty_data(assets, tmp_path):
    data = tmp_path / "empty.txt"
    data.write_text("\n\n")
    message = _refused(base_args(assets, tmp_path / "o") + [f"data={data}"])
    assert "contains no text" in message


def test_refuses_block_len_beyond_max_positions(assets, tmp_path):
    message = _refused(base_args(assets, tmp_path / "o", model="gpt2", block_len=256))
    assert "block_len=256 exceeds the model's maximum of 128 positions" in message


def test_refuses_existing_output_folder(assets, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    message = _refused(base_args(assets, out))
    assert "already exists" in message and "overwrite" in message
    assert (out / "keep.txt").read_text() == "mine"


def test_refuses_gates_mode_without_vga(assets, tmp_path):
    message = _refused(base_args(assets, tmp_path / "o") + ["--no-vga"])
    assert "nothing to train" in message


def test_refuses_unknown_option_and_bad_value(assets, tmp_path):
    assert "unknown option 'gate_learning_rate'" in _refused(base_args(assets, tmp_path / "o", gate_learning_rate=1))
    assert "not a valid" in _refused(base_args(assets, tmp_path / "o", max_steps="many"))
    assert "diagnostics settings" in _refused(base_args(assets, tmp_path / "o", **{"diagnostics.nonsense": 1}))


# ---- configuration files and --help --------------------------------------------------------------
def test_default_yaml_is_the_embedded_default():
    from_file = recipe.parse_config(["--config", str(CONFIGS / "retrofit_default.yaml")])
    assert from_file == recipe.RetrofitConfig()
    header = (CONFIGS / "retrofit_default.yaml").read_text().splitlines()[0]
    assert header.startswith("#")


def test_config_files_parse_and_overrides_win():
    tiny = recipe.parse_config(["--config", str(CONFIGS / "tiny.yaml"), "max_steps=7", "--gate-lr", "0.5"])
    assert tiny.max_steps == 7 and tiny.gate_lr == 0.5
    raw = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    assert set(raw) <= {f.name for f in dataclasses.fields(recipe.RetrofitConfig)}
    fsdp = yaml.safe_load((CONFIGS / "accelerate_fsdp.yaml").read_text())
    assert fsdp["distributed_type"] == "FSDP"


def test_help_documents_every_option():
    result = subprocess.run([sys.executable, str(RECIPE), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    flat = " ".join(result.stdout.split())
    for f in dataclasses.fields(recipe.RetrofitConfig):
        assert "--" + f.name.replace("_", "-") in flat, f.name
