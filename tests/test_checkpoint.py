"""Checkpoints (issue 3): HF-format saves with gates, every reload route, gates-only files, errors,
model card, Hub upload (mocked), atomic saves, the `vga-hf patch` / `vga-hf info` commands."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import vga_hf
from vga_hf import VGAConfig
from vga_hf.checkpoint import gate_statistics, read_card_metadata, vga_model_class
from vga_hf.cli import build_parser
from vga_hf.cli import main as cli_main
from vga_hf.testing import tiny_model, tiny_tokenizer

ARCHS = ["llama", "mistral", "gpt2"]
EAGER = dict(attn_implementation="eager")


def ids(length=10, seed=0):
    return torch.randint(3, 128, (2, length), generator=torch.Generator().manual_seed(seed))


def logits(model, x=None):
    with torch.no_grad():
        return model(ids() if x is None else x).logits


def randomize_gates(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in vga_hf.get_gates(model).values():
            gate.weight.copy_(torch.randn(gate.weight.shape, generator=g) * 0.3)
            gate.bias.copy_(torch.randn(gate.bias.shape, generator=g))
    return model


def patched(arch, seed=0, **vga):
    return randomize_gates(vga_hf.patch_model(tiny_model(arch, seed=seed), **vga), seed=seed + 1)


def tensor_names(folder):
    names = set()
    for path in Path(folder).glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            names |= set(f.keys())
    return names


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{arch: (folder, reference logits)}: patched tiny models with trained-looking gates, saved with
    plain `model.save_pretrained`."""
    out = {}
    for arch in ARCHS:
        model = patched(arch)
        folder = tmp_path_factory.mktemp(f"vga-{arch}")
        model.save_pretrained(folder)
        out[arch] = (folder, logits(model))
    return out


# ---- 1. the saved folder --------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_save_pretrained_writes_hf_folder_with_gates(arch, saved, tmp_path):
    folder, _ = saved[arch]
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "modeling_vga.py"} <= files
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == f"vga_{arch}"
    assert config["architectures"][0].startswith("VGA")
    assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_vga.")
    assert VGAConfig.from_dict(config["vga_config"]) == VGAConfig()
    vanilla = tmp_path / "vanilla"
    tiny_model(arch).save_pretrained(vanilla)
    gate_keys = {k for k in tensor_names(folder) if ".vga_gate." in k}
    assert len(gate_keys) == 2 * 2  # 2 layers x (weight, bias)
    assert tensor_names(folder) - gate_keys == tensor_names(vanilla)  # original keys unchanged


# ---- 2. reload routes ------------------------------------------------------------------------------
ROUTES = {
    "vga_hf.from_pretrained": lambda folder, **kw: vga_hf.from_pretrained(folder, **kw),
    "AutoModelForCausalLM": lambda folder, **kw: AutoModelForCausalLM.from_pretrained(folder, **kw),
    "AutoModelForCausalLM+trust_remote_code": lambda folder, **kw: AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=True, **kw),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("arch", ARCHS)
def test_reload_routes_give_identical_logits(arch, route, saved):
    folder, reference = saved[arch]
    model = ROUTES[route](folder, **EAGER)
    assert vga_hf.is_patched(model) and model.config.model_type == arch  # in memory: the base type
    assert torch.equal(logits(model), reference)


REMOTE_SCRIPT = textwrap.dedent("""
    import json, sys
    class BlockVGA:  # vga_hf is not installed, as far as this process can tell
        def find_spec(self, name, path=None, target=None):
            if name == "vga_hf" or name.startswith("vga_hf."):
                raise ImportError("vga_hf is blocked")
    sys.meta_path.insert(0, BlockVGA())
    import torch
    from transformers import AutoModelForCausalLM
    results = {}
    for arch, folder in json.loads(sys.argv[1]).items():
        r = results[arch] = {}
        try:
            AutoModelForCausalLM.from_pretrained(folder)
            r["refused"] = None
        except Exception as err:
            r["refused"] = f"{type(err).__name__}: {err}"
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, attn_implementation="eager")
        x = torch.load(f"{folder}/../{arch}-ids.pt")
        with torch.no_grad():
            out = model(x).logits
        r["equal"] = bool(torch.equal(out, torch.load(f"{folder}/../{arch}-logits.pt")))
        r["gates"] = sum(".vga_gate." in n for n, _ in model.named_parameters())
    results["vga_hf_imported"] = "vga_hf" in sys.modules
    print("RESULTS" + json.dumps(results))
""")


@pytest.fixture(scope="module")
def without_vga_hf(saved, tmp_path_factory):
    """Load every saved checkpoint in one subprocess in which vga_hf cannot be imported."""
    work = tmp_path_factory.mktemp("remote")
    folders = {}
    for arch, (folder, reference) in saved.items():
        torch.save(ids(), folder.parent / f"{arch}-ids.pt")
        torch.save(reference, folder.parent / f"{arch}-logits.pt")
        folders[arch] = str(folder)
    env = {**os.environ, "HF_MODULES_CACHE": str(work / "modules"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, json.dumps(folders)], capture_output=True,
                          text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)
    assert "RESULTS" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(proc.stdout.split("RESULTS")[-1].splitlines()[0])


@pytest.mark.parametrize("arch", ARCHS)
def test_without_vga_hf_refuses_unless_trust_remote_code(arch, without_vga_hf):
    result = without_vga_hf[arch]
    assert without_vga_hf["vga_hf_imported"] is False
    assert result["refused"] and "trust_remote_code=True" in result["refused"]
    assert result["equal"] and result["gates"] == 4


SAVE_VARIANTS = {  # name: (dtype, save_pretrained kwargs)
    "sharded": (torch.float32, dict(max_shard_size="40KB")),
    "bf16": (torch.bfloat16, {}),
}


@pytest.mark.parametrize("variant", SAVE_VARIANTS)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sharded_and_bf16_saves(arch, variant, tmp_path):
    dtype, save_kwargs = SAVE_VARIANTS[variant]
    tiny_model(arch).save_pretrained(tmp_path / "base")  # loaded in `dtype` the way transformers does it
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=dtype, **EAGER)
    model = randomize_gates(vga_hf.patch_model(base))
    model.save_pretrained(tmp_path / "vga", **save_kwargs)
    shards = list((tmp_path / "vga").glob("*.safetensors"))
    assert (len(shards) > 1) == (variant == "sharded")
    reloaded = vga_hf.from_pretrained(tmp_path / "vga", dtype=dtype, **EAGER)
    assert all(p.dtype == dtype for p in vga_hf.gate_parameters(reloaded))
    assert torch.equal(logits(reloaded), logits(model))


VANILLA_LOADS = {  # name: (load(folder, base class) -> model, expected gate weight, bias)
    "VGA class": (lambda f, base: vga_model_class(base).from_pretrained(f, **EAGER), 0.0, 0.0),
    "from_pretrained default config": (lambda f, _: vga_hf.from_pretrained(f, vga_config=VGAConfig(), **EAGER),
                                       0.0, 0.0),
    "from_pretrained bias_init": (lambda f, _: vga_hf.from_pretrained(
        f, vga_config=dict(bias_init=1.5, scale=1.0), **EAGER), 0.0, 1.5),
}


@pytest.mark.parametrize("how", VANILLA_LOADS)
@pytest.mark.parametrize("arch", ARCHS)
def test_vanilla_checkpoint_through_vga_classes_gets_exact_init_gates(arch, how, tmp_path):
    load, weight, bias = VANILLA_LOADS[how]
    vanilla = tiny_model(arch)
    vanilla.save_pretrained(tmp_path)
    model = load(tmp_path, type(vanilla))
    gates = vga_hf.get_gates(model)
    assert len(gates) == 2
    for gate in gates.values():  # exactly at init, never uninitialised memory
        assert torch.equal(gate.weight, torch.full_like(gate.weight, weight))
        assert torch.equal(gate.bias, torch.full_like(gate.bias, bias))
    if bias == 0.0:
        assert torch.equal(logits(model), logits(vanilla))


def test_from_pretrained_of_vanilla_checkpoint_without_vga_config_loads_it_as_is(tmp_path):
    tiny_model("gpt2").save_pretrained(tmp_path)
    model = vga_hf.from_pretrained(tmp_path, **EAGER)
    assert type(model).__name__ == "GPT2LMHeadModel" and not vga_hf.is_patched(model)


def test_unpatched_model_saves_as_its_base(tmp_path):
    model = vga_hf.unpatch_model(vga_hf.from_pretrained(tiny_model_folder(tmp_path / "src"), **EAGER))
    model.save_pretrained(tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert "auto_map" not in config and "vga_config" not in config
    assert not (tmp_path / "out" / "modeling_vga.py").exists()
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "out")).__name__ == "LlamaForCausalLM"


def tiny_model_folder(folder, arch="llama", **vga):
    patched(arch, **vga).save_pretrained(folder)
    return folder


def test_resave_of_loaded_checkpoint_and_pickled_config(tmp_path):
    import pickle

    first = vga_hf.from_pretrained(tiny_model_folder(tmp_path / "a", granularity="element", layers=[-1]), **EAGER)
    first.save_pretrained(tmp_path / "b")
    second = AutoModelForCausalLM.from_pretrained(tmp_path / "b", **EAGER)
    assert vga_hf.get_vga_config(second) == VGAConfig(granularity="element", layers=[-1])
    assert list(vga_hf.get_gates(second)) == [1]
    assert torch.equal(logits(second), logits(first))
    assert pickle.loads(pickle.dumps(second.config)).to_dict() == second.config.to_dict()


# ---- 3. gates only ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_save_and_load_gates(arch, tmp_path):
    model = patched(arch, granularity="element")
    vga_hf.save_gates(model, tmp_path / "gates")
    assert {p.name for p in (tmp_path / "gates").iterdir()} == {"vga_gates.json", "vga_gates.safetensors"}
    assert set(load_file(tmp_path / "gates" / "vga_gates.safetensors")) == {
        f"layers.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")}
    base = tiny_model(arch)  # same base weights (seed 0), no gates
    vga_hf.load_gates(base, tmp_path / "gates")
    assert vga_hf.get_vga_config(base) == VGAConfig(granularity="element")
    assert torch.equal(logits(base), logits(model))


MISMATCHES = {  # base model overrides -> what the error must say
    "layer count": (dict(num_hidden_layers=3), "layer count"),
    "kv heads": (dict(num_key_value_heads=1), "kv heads: the gates expect 2, this model has 1"),
    "head size": (dict(head_dim=8), "head size: the gates expect 16, this model has 8"),
}


@pytest.mark.parametrize("case", MISMATCHES)
def test_load_gates_into_mismatching_base_says_what_differs(case, tmp_path):
    overrides, message = MISMATCHES[case]
    vga_hf.save_gates(patched("llama"), tmp_path)
    other = tiny_model("llama", **overrides)
    with pytest.raises(ValueError, match=message):
        vga_hf.load_gates(other, tmp_path)
    assert not vga_hf.is_patched(other)


def test_gates_through_peft_and_save_checkpoint_of_peft_model(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(patched("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    vga_hf.save_gates(model, tmp_path / "gates")
    fresh = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    vga_hf.load_gates(fresh, tmp_path / "gates")
    assert all(torch.equal(a, b) for a, b in zip(vga_hf.gate_parameters(fresh), vga_hf.gate_parameters(model)))
    vga_hf.save_checkpoint(model, tmp_path / "merged")
    assert any("lora_B" in n for n, _ in model.named_parameters())  # the PEFT model is left as it was
    reloaded = vga_hf.from_pretrained(tmp_path / "merged", **EAGER)
    torch.testing.assert_close(logits(reloaded), logits(model), atol=1e-5, rtol=1e-5)


# ---- 4. errors -------------------------------------------------------------------------------------
def drop_tensor(folder, key_part):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    dropped = sorted(k for k in tensors if key_part in k)
    save_file({k: v for k, v in tensors.items() if k not in dropped}, path, metadata={"format": "pt"})
    return dropped


def edit_json(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


LOAD_ERRORS = {
    # name: (damage(folder) -> None, expected message)
    "missing gate tensor": (lambda f: drop_tensor(f, "layers.1.self_attn.vga_gate.bias"),
                            r"lacks 1 gate tensor\(s\): model.layers.1.self_attn.vga_gate.bias"),
    "all gate tensors missing": (lambda f: drop_tensor(f, "vga_gate"), r"lacks 4 gate tensor\(s\)"),
    "newer format version": (lambda f: edit_json(f / "config.json", lambda d: d["vga_config"].update(format_version=99)),
                             "format version 99.*Upgrade vga_hf"),
    "truncated safetensors": (lambda f: truncate(f / "model.safetensors"),
                              "model.safetensors is not a readable safetensors file.*corrupt or truncated"),
    "missing shard": (lambda f: sorted(f.glob("model-*.safetensors"))[-1].unlink(), "shard.*missing"),
}
LOADERS = {"vga_hf.from_pretrained": ROUTES["vga_hf.from_pretrained"],
           "AutoModelForCausalLM": ROUTES["AutoModelForCausalLM"]}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("case", LOAD_ERRORS)
def test_load_errors_are_clear(case, loader, tmp_path):
    damage, message = LOAD_ERRORS[case]
    model = patched("llama")
    model.save_pretrained(tmp_path, **({"max_shard_size": "40KB"} if case == "missing shard" else {}))
    damage(tmp_path)
    with pytest.raises(ValueError, match=message):
        LOADERS[loader](tmp_path)


GATES_ERRORS = {
    "no gates folder": (lambda f: (f / "vga_gates.json").unlink(), FileNotFoundError, "not a gates folder"),
    "newer format version": (lambda f: edit_json(f / "vga_gates.json", lambda d: d.update(format_version=7)),
                             ValueError, "format version 7.*Upgrade"),
    "truncated safetensors": (lambda f: truncate(f / "vga_gates.safetensors"), ValueError, "corrupt or truncated"),
    "missing gate tensor": (lambda f: save_file({k: v for k, v in load_file(f / "vga_gates.safetensors").items()
                                                 if k != "layers.0.bias"}, f / "vga_gates.safetensors"),
                            ValueError, r"missing gate tensors \['layers.0.bias'\]"),
}


@pytest.mark.parametrize("case", GATES_ERRORS)
def test_load_gates_errors_are_clear(case, tmp_path):
    damage, error, message = GATES_ERRORS[case]
    vga_hf.save_gates(patched("llama"), tmp_path)
    damage(tmp_path)
    base = tiny_model("llama")
    with pytest.raises(error, match=message):
        vga_hf.load_gates(base, tmp_path)
    assert not vga_hf.is_patched(base)


def test_other_bad_input_errors(tmp_path):
    folder = tiny_model_folder(tmp_path / "ck")
    with pytest.raises(ValueError, match="already holds gates"):
        vga_hf.from_pretrained(folder, vga_config=VGAConfig(granularity="element"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds no checkpoint"):
        vga_hf.save_checkpoint(patched("llama"), tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="safetensors only"):
        vga_hf.save_checkpoint(patched("llama"), tmp_path / "x", safe_serialization=False)
    with pytest.raises(ValueError, match="no VGA gates"):
        vga_hf.save_gates(tiny_model("llama"), tmp_path / "g")


# ---- 5. model card and Hub upload ------------------------------------------------------------------
def test_save_checkpoint_writes_tokenizer_and_model_card(tmp_path):
    model = patched("llama")
    metrics = {"perplexity": torch.tensor(12.5), "sink_rate": 0.25}
    vga_hf.save_checkpoint(model, tmp_path, tokenizer=tiny_tokenizer(), metrics=metrics,
                           base_model="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert (tmp_path / "tokenizer.json").exists()
    meta = read_card_metadata(tmp_path)
    assert meta["library_name"] == "transformers"
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "vga" in meta["tags"]
    assert VGAConfig.from_dict(meta["vga"]["config"]) == VGAConfig()
    assert meta["vga"]["metrics"] == {"perplexity": 12.5, "sink_rate": 0.25}
    assert "| perplexity | 12.5 |" in (tmp_path / "README.md").read_text()
    assert torch.equal(logits(vga_hf.from_pretrained(tmp_path, **EAGER)), logits(model))


def test_push_to_hub_uploads_the_checkpoint_folder(monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(self, **kwargs):
            folder = Path(kwargs["folder_path"])
            calls.append(("upload_folder", kwargs, sorted(p.name for p in folder.iterdir()),
                          (folder / "README.md").read_text()))
            return "commit-info"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = vga_hf.push_to_hub(patched("gpt2"), "me/tiny-vga", metrics={"ppl": 3.0}, token="t0k", private=True)
    assert out == "commit-info"
    assert calls[0] == ("init", "t0k")
    assert calls[1][1] == "me/tiny-vga" and calls[1][2]["private"] is True and calls[1][2]["exist_ok"] is True
    _, kwargs, files, card = calls[2]
    assert kwargs["repo_id"] == "me/tiny-vga" and kwargs["repo_type"] == "model"
    assert {"README.md", "config.json", "model.safetensors", "modeling_vga.py"} <= set(files)
    meta = yaml.safe_load(card.split("---")[1])
    assert "vga" in meta["tags"] and meta["vga"]["metrics"] == {"ppl": 3.0}
    assert not Path(kwargs["folder_path"]).exists()  # the staging folder is cleaned up


def test_push_to_hub_of_a_saved_folder(tmp_path, monkeypatch):
    import huggingface_hub

    uploads = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: type("Api", (), {
        "create_repo": lambda self, repo_id, **kw: huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}"),
        "upload_folder": lambda self, **kw: uploads.append(kw)})())
    vga_hf.save_checkpoint(patched("llama"), tmp_path / "ck", metrics={"ppl": 2.0})
    vga_hf.push_to_hub(tmp_path / "ck", "me/ck")
    assert uploads[0]["folder_path"] == str(tmp_path / "ck") and uploads[0]["repo_id"] == "me/ck"
    with pytest.raises(ValueError, match="pass them to save_checkpoint"):
        vga_hf.push_to_hub(tmp_path / "ck", "me/ck", metrics={"ppl": 1.0})
    with pytest.raises(ValueError, match="not a checkpoint saved by vga_hf.save_checkpoint"):
        vga_hf.push_to_hub(tmp_path, "me/ck")


# ---- 7. atomic saves -------------------------------------------------------------------------------
def _boom(*args, **kwargs):
    raise RuntimeError("disk full (simulated)")


SAVE_FAILURES = {
    # what to break midway -> which save it interrupts
    "card write after weights": ("vga_hf.checkpoint.save.write_model_card", "checkpoint"),
    "tokenizer save": (None, "checkpoint-tokenizer"),
    "gates file": ("safetensors.torch.save_file", "gates"),
}


@pytest.mark.parametrize("case", SAVE_FAILURES)
def test_interrupted_save_leaves_previous_content(case, tmp_path, monkeypatch):
    target, kind = SAVE_FAILURES[case]
    old, new = patched("llama", seed=0), patched("llama", seed=5)
    tokenizer = tiny_tokenizer()
    save = (lambda m: vga_hf.save_gates(m, tmp_path / "ck")) if kind == "gates" else (
        lambda m: vga_hf.save_checkpoint(m, tmp_path / "ck", tokenizer=tokenizer))
    save(old)
    before = snapshot(tmp_path / "ck")
    if kind == "checkpoint-tokenizer":
        monkeypatch.setattr(type(tokenizer), "save_pretrained", _boom)
    else:
        module, name = target.rsplit(".", 1)
        monkeypatch.setattr(sys.modules[module], name, _boom)
    with pytest.raises(RuntimeError, match="simulated"):
        save(new)
    assert snapshot(tmp_path / "ck") == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary folder left behind
    monkeypatch.undo()
    save(new)  # and a successful save replaces the content
    assert snapshot(tmp_path / "ck") != before


# ---- 6. command line -------------------------------------------------------------------------------
def test_cli_patch_and_info(tmp_path, capsys):
    from vga_hf.testing import save_tiny_checkpoint

    src = save_tiny_checkpoint(tmp_path / "src", "llama")
    out = tmp_path / "out"
    assert cli_main(["patch", src, str(out), "--granularity", "element", "--layers", "-1", "--scale", "2"]) == 0
    model = vga_hf.from_pretrained(out, **EAGER)
    assert vga_hf.get_vga_config(model) == VGAConfig(granularity="element", layers=[-1])
    assert (out / "tokenizer.json").exists() and (out / "README.md").exists()
    assert torch.equal(logits(model), logits(tiny_model("llama")))  # identity gates
    capsys.readouterr()
    assert cli_main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "granularity      element" in text and "1 gated layers" in text and "1.0000" in text
    assert cli_main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [r["layer"] for r in info["layers"]] == [1] and info["layers"][0]["gate0_mean"] == 1.0
    assert cli_main(["patch", src, str(tmp_path / "gates"), "--gates-only"]) == 0
    assert [r["layer"] for r in gate_statistics(tmp_path / "gates")] == [0, 1]
    assert cli_main(["info", str(tmp_path / "missing")]) == 2


def test_cli_help_documents_every_option():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    text = " ".join(sub["patch"].format_help().split())
    for field in VGAConfig.__dataclass_fields__.values():
        assert "--" + field.name.replace("_", "-") in text
        assert " ".join(field.metadata["help"].split())[:40] in text
    for action in sub["patch"]._actions + sub["info"]._actions:
        assert action.help, action.dest


# ---- the real model ------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_round_trip(tmp_path):
    from vga_hf.assets import load_smollm2

    model, tokenizer = load_smollm2(attn_implementation="eager")
    randomize_gates(vga_hf.patch_model(model))
    x = tokenizer("To be, or not to be", return_tensors="pt").input_ids
    vga_hf.save_checkpoint(model, tmp_path, tokenizer=tokenizer, metrics={"ppl": 1.0})
    reloaded = vga_hf.from_pretrained(tmp_path, **EAGER)
    assert len(vga_hf.get_gates(reloaded)) == 30
    assert torch.equal(logits(reloaded, x), logits(model, x))
