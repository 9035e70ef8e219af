"""Core: patch_model puts an exact-identity-at-init value gate into every decoder attention layer."""

import copy
import math

import pytest
import torch
from torch import nn

import vga_hf
from vga_hf import VGAConfig
from vga_hf.testing import tiny_model

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "gpt2"]
GATE_CONFIGS = {
    "head-value": dict(),
    "element-value": dict(granularity="element"),
    "head-headvalue": dict(gate_input="head_value"),
    "element-headvalue": dict(granularity="element", gate_input="head_value"),
    "iga": dict(gate_input="input"),
    "value-normalized": dict(gate_input="value_normalized"),
    "output-position": dict(position="output"),
}


def ids(batch=2, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 128, (batch, length), generator=g)


def logits(model, x, **kw):
    with torch.no_grad():
        return model(x, **kw).logits


def randomize_gates(model, std=0.5, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in vga_hf.get_gates(model).values():
            gate.weight.copy_(torch.randn(gate.weight.shape, generator=g) * std)
            gate.bias.copy_(torch.randn(gate.bias.shape, generator=g) * std)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", list(GATE_CONFIGS))
def test_zero_init_is_bit_exact(arch, variant):
    model = tiny_model(arch)
    x = ids()
    ref = logits(model, x)
    vga_hf.patch_model(model, **GATE_CONFIGS[variant])
    assert vga_hf.is_patched(model)
    assert len(vga_hf.get_gates(model)) == model.config.num_hidden_layers
    assert torch.equal(logits(model, x), ref)
    randomize_gates(model)
    assert not torch.allclose(logits(model, x), ref), "non-zero gates must change the output"


@pytest.mark.parametrize("arch,n_kv,head_dim", [("llama", 2, 16), ("gemma", 1, 16), ("gpt2", 4, 16),
                                                ("phi3", 2, 16)])
def test_one_gate_per_kv_head(arch, n_kv, head_dim):
    model = vga_hf.patch_model(tiny_model(arch))
    for gate in vga_hf.get_gates(model).values():
        assert gate.num_kv_heads == n_kv and gate.head_dim == head_dim
        assert gate.bias.shape == (n_kv,)  # head granularity: one scalar per kv head
        assert gate.weight.shape == (n_kv, n_kv * head_dim)  # W_g in R^{h x d}: reads the whole value


# ---- an independent reference of VGA attention, written from the spec's formula -------------------
def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def reference_attention(q, k, v, g, scaling):
    """q [B,H,T,d], k/v [B,Hkv,T,d], g [B,Hkv,T,1 or d]: z_i = sum_j softmax_j(q_i.k_j) (g_j * v_j)."""
    groups = q.shape[1] // k.shape[1]
    v = v * g
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = (q @ k.transpose(-1, -2)) * scaling
    T = q.shape[2]
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1) @ v


def reference_gate(u, gate, s):
    """g = s * sigmoid(W u + b), from the raw parameters. u [B,T,in] -> [B,n_kv,T,per_head]."""
    B, T, _ = u.shape
    if gate.gate_input == "head_value":
        uh = u.view(B, T, gate.num_kv_heads, gate.head_dim)
        z = torch.stack([uh[:, :, h] @ gate.weight[h].T for h in range(gate.num_kv_heads)], 2)
        z = z + gate.bias.view(gate.num_kv_heads, -1)
    else:
        if gate.gate_input == "value_normalized":
            u = u / torch.sqrt((u * u).mean(-1, keepdim=True) + 1e-6)
        z = (u @ gate.weight.T + gate.bias).view(B, T, gate.num_kv_heads, -1)
    return (s / (1 + torch.exp(-z))).transpose(1, 2)


def llama_reference(attn, x, cos, sin, s):
    B, T, _ = x.shape
    hd = attn.head_dim
    q = (x @ attn.q_proj.weight.T).view(B, T, -1, hd).transpose(1, 2)
    k = (x @ attn.k_proj.weight.T).view(B, T, -1, hd).transpose(1, 2)
    v_flat = x @ attn.v_proj.weight.T
    v = v_flat.view(B, T, -1, hd).transpose(1, 2)
    gate = attn.vga_gate
    g = reference_gate(x if gate.gate_input == "input" else v_flat, gate, s)
    c, sn = cos.unsqueeze(1), sin.unsqueeze(1)
    q, k = q * c + _rotate_half(q) * sn, k * c + _rotate_half(k) * sn
    z = reference_attention(q, k, v, g, hd ** -0.5)
    return z.transpose(1, 2).reshape(B, T, -1) @ attn.o_proj.weight.T


def gpt2_reference(attn, x, s):
    B, T, E = x.shape
    hd = attn.head_dim
    qkv = x @ attn.c_attn.weight + attn.c_attn.bias  # Conv1D: [E, 3E]
    q, k, v_flat = qkv.split(E, dim=-1)
    q, k, v = (t.view(B, T, -1, hd).transpose(1, 2) for t in (q, k, v_flat))
    g = reference_gate(x if attn.vga_gate.gate_input == "input" else v_flat, attn.vga_gate, s)
    z = reference_attention(q, k, v, g, hd ** -0.5)
    return z.transpose(1, 2).reshape(B, T, E) @ attn.c_proj.weight + attn.c_proj.bias


@pytest.mark.parametrize("arch", ["llama", "mistral", "gpt2"])
@pytest.mark.parametrize("variant", ["head-value", "element-value", "head-headvalue", "iga", "value-normalized"])
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_matches_independent_reference(arch, variant, backend):
    model = tiny_model(arch, attn_implementation=backend)
    cfg = VGAConfig(**GATE_CONFIGS[variant])
    vga_hf.patch_model(model, cfg)
    randomize_gates(model, std=0.3)
    B, T = 2, 10
    x = torch.randn(B, T, model.config.hidden_size)
    mask = torch.full((T, T), float("-inf")).triu(1)[None, None]
    if arch == "gpt2":
        attn = model.transformer.h[1].attn
        with torch.no_grad():
            out = attn(x, attention_mask=mask)[0]
            ref = gpt2_reference(attn, x, cfg.scale)
    else:
        attn = model.model.layers[1].self_attn
        pos = torch.arange(T)[None].expand(B, T)
        with torch.no_grad():
            cos, sin = model.model.rotary_emb(x, pos)
            out = attn(x, position_embeddings=(cos, sin), attention_mask=mask)[0]
            ref = llama_reference(attn, x, cos, sin, cfg.scale)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_output_position_matches_reference():
    """position='output' (paper appendix): z_i * g(v_i) on each head's output."""
    model = vga_hf.patch_model(tiny_model("llama"), position="output")
    randomize_gates(model, std=0.3)
    attn = model.model.layers[0].self_attn
    B, T = 1, 8
    x = torch.randn(B, T, 64)
    mask = torch.full((T, T), float("-inf")).triu(1)[None, None]
    pos = torch.arange(T)[None]
    with torch.no_grad():
        cos, sin = model.model.rotary_emb(x, pos)
        out = attn(x, position_embeddings=(cos, sin), attention_mask=mask)[0]
        hd = attn.head_dim
        q = (x @ attn.q_proj.weight.T).view(B, T, -1, hd).transpose(1, 2)
        k = (x @ attn.k_proj.weight.T).view(B, T, -1, hd).transpose(1, 2)
        v_flat = x @ attn.v_proj.weight.T
        v = v_flat.view(B, T, -1, hd).transpose(1, 2)
        c, sn = cos.unsqueeze(1), sin.unsqueeze(1)
        q, k = q * c + _rotate_half(q) * sn, k * c + _rotate_half(k) * sn
        z = reference_attention(q, k, v, torch.ones(1), hd ** -0.5)  # ungated values
        g = reference_gate(v_flat, attn.vga_gate, 2.0).repeat_interleave(2, 1)  # [B,H,T,1]
        ref = (z * g).transpose(1, 2).reshape(B, T, -1) @ attn.o_proj.weight.T
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# ---- everything users combine it with ----------------------------------------------------------
@pytest.mark.parametrize("arch,backends", [("llama", ["sdpa", "flex_attention"]), ("phi3", ["sdpa", "flex_attention"]),
                                           ("gpt2", ["sdpa"])])  # transformers has no flex path for GPT-2
def test_backends_agree(arch, backends):
    x = ids()
    outs = {}
    for backend in ["eager", *backends]:
        model = vga_hf.patch_model(tiny_model(arch, attn_implementation="eager"))
        randomize_gates(model)
        model.set_attn_implementation(backend)
        outs[backend] = logits(model, x)
    for backend in backends:
        torch.testing.assert_close(outs[backend], outs["eager"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "mistral", "gpt2", "qwen2", "phi3"])
@pytest.mark.parametrize("position", ["value", "output"])
def test_cached_generation_equals_uncached_forward(arch, position):
    model = vga_hf.patch_model(tiny_model(arch), position=position)
    randomize_gates(model, std=1.0)
    prompt = ids(1, 6)
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)
    # the cache holds gated values: step-by-step logits equal one full forward without cache
    full = logits(model, cached)
    with torch.no_grad():
        out = model(cached[:, :7], use_cache=True)
        steps = [out.logits]
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        for t in range(7, cached.shape[1]):
            out = model(cached[:, t:t + 1], cache=cache, use_cache=True)
            cache = out.cache if hasattr(out, "cache") else out.past_key_values
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_decoding_computes_one_gate_per_new_token():
    model = vga_hf.patch_model(tiny_model("llama"))
    gate = vga_hf.get_gates(model)[0]
    gate.record = True
    with torch.no_grad():
        out = model(ids(1, 9), use_cache=True)
        assert gate.last_gate.shape[:2] == (1, 9)
        model(ids(1, 1), cache=out.past_key_values, use_cache=True)
    assert gate.last_gate.shape[:2] == (1, 1)  # never a gate over the whole cache


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_gradients_reach_gates_and_checkpointing_matches(arch):
    x = ids()
    grads = {}
    for ckpt in (False, True):
        model = vga_hf.patch_model(tiny_model(arch))
        randomize_gates(model, std=0.1)
        model.train()
        if ckpt:
            model.gradient_checkpointing_enable()
        model(x, labels=x).loss.backward()
        grads[ckpt] = [p.grad.clone() for p in vga_hf.gate_parameters(model)]
        assert all(g is not None and g.abs().sum() > 0 for g in grads[ckpt])
    for a, b in zip(grads[False], grads[True]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_torch_compile():
    model = vga_hf.patch_model(tiny_model("llama"))
    randomize_gates(model)
    x = ids()
    eager = logits(model, x)
    compiled = torch.compile(model)  # inductor
    torch.testing.assert_close(logits(compiled, x), eager, atol=1e-5, rtol=1e-5)
    hooks = [len(m._forward_hooks) for m in model.modules() if m._forward_hooks]
    assert hooks == [1, 1], "tracing must not register the value hook twice"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_half_precision(dtype, arch):
    model = tiny_model(arch).to(dtype)
    x = ids()
    ref = logits(model, x)
    vga_hf.patch_model(model)
    assert all(p.dtype == dtype for p in vga_hf.gate_parameters(model))
    assert torch.equal(logits(model, x), ref)  # s*sigmoid(0) == 1 exactly in half precision too
    randomize_gates(model)
    assert torch.isfinite(logits(model, x)).all()


def test_deepcopy_keeps_gates_and_is_independent():
    model = vga_hf.patch_model(tiny_model("llama"))
    randomize_gates(model)
    x = ids()
    ref = logits(model, x)
    clone = copy.deepcopy(model)
    assert vga_hf.is_patched(clone)
    assert torch.equal(logits(clone, x), ref)
    with torch.no_grad():
        for p in vga_hf.gate_parameters(clone):
            p.zero_()
    assert torch.equal(logits(model, x), ref)  # the original is untouched
    vga_hf.unpatch_model(clone)
    assert torch.equal(logits(model, x), ref) and vga_hf.is_patched(model)


@pytest.mark.parametrize("arch", ARCHS)
def test_unpatch_restores_exactly(arch):
    model = tiny_model(arch)
    x = ids()
    ref = logits(model, x)
    keys = set(model.state_dict())
    config_class = type(model.config)
    vga_hf.patch_model(model)
    randomize_gates(model)
    patched_keys = set(model.state_dict())
    assert keys < patched_keys and all(".vga_gate." in k for k in patched_keys - keys)
    vga_hf.unpatch_model(model)
    assert not vga_hf.is_patched(model) and vga_hf.get_vga_config(model) is None
    assert set(model.state_dict()) == keys
    assert type(model.config) is config_class
    assert torch.equal(logits(model, x), ref)
    for m in model.modules():
        assert not any(vga_hf.patch._is_vga_hook(h) for h in m._forward_hooks.values())
        assert not any(vga_hf.patch._is_vga_hook(h) for h in m._forward_pre_hooks.values())


def test_patch_is_idempotent_and_refuses_stacking():
    model = vga_hf.patch_model(tiny_model("llama"))
    randomize_gates(model)
    x = ids()
    ref = logits(model, x)
    vga_hf.patch_model(model)  # same config: no-op
    assert torch.equal(logits(model, x), ref)
    assert sum(1 for n, _ in model.named_modules() if n.endswith("vga_gate")) == 2
    with pytest.raises(ValueError, match="already patched.*unpatch_model"):
        vga_hf.patch_model(model, granularity="element")


@pytest.mark.parametrize("layers,expected", [([0], [0]), ([-1], [1]), ([0, 1], [0, 1]), (None, [0, 1])])
def test_layer_selection(layers, expected):
    model = vga_hf.patch_model(tiny_model("llama"), layers=layers)
    assert list(vga_hf.get_gates(model)) == expected


def test_only_gates_trainable_and_summary():
    model = vga_hf.patch_model(tiny_model("llama"))
    vga_hf.mark_only_gates_trainable(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".vga_gate." in n for n in trainable)
    assert len(trainable) == 4
    assert [n for n, _ in vga_hf.gate_named_parameters(model)] == trainable
    line = vga_hf.summary(model)
    assert "2/2 attention layers" in line and "132 gate parameters" in line and "%" in line
    assert vga_hf.summary(tiny_model("llama")) == "vga_hf: model not patched"


def test_gpt2_cross_attention_left_alone():
    model = tiny_model("gpt2", add_cross_attention=True)
    vga_hf.patch_model(model)
    gated = [n for n, _ in model.named_modules() if n.endswith("vga_gate")]
    assert gated == ["transformer.h.0.attn.vga_gate", "transformer.h.1.attn.vga_gate"]


def test_generic_fallback_for_unregistered_model_type():
    model = tiny_model("llama")
    model.config.model_type = "my_new_decoder"  # not in the registry
    x = ids()
    ref = logits(model, x)
    vga_hf.patch_model(model)
    assert len(vga_hf.get_gates(model)) == 2 and torch.equal(logits(model, x), ref)


def test_vision_and_encoder_attention_are_skipped():
    class VisionAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.v_proj = nn.Linear(8, 8)
            self.head_dim, self.num_heads, self.is_causal = 4, 2, False

    model = tiny_model("llama")
    model.vision_tower = nn.Sequential(VisionAttention())
    model.encoder = nn.Sequential(VisionAttention())
    vga_hf.patch_model(model)
    assert sorted(n for n, _ in model.named_modules() if n.endswith("vga_gate")) == [
        "model.layers.0.self_attn.vga_gate", "model.layers.1.self_attn.vga_gate"]


# ---- PEFT LoRA ---------------------------------------------------------------------------------
def _lora(model, **kw):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False, **kw)
    return get_peft_model(model, cfg)


def _merged_reference(peft_model, gate_state):
    """Merge LoRA into a plain copy, then patch it with the same gate values: the reference."""
    merged = copy.deepcopy(peft_model).merge_and_unload()
    if vga_hf.is_patched(merged):
        vga_hf.unpatch_model(merged)
    vga_hf.patch_model(merged)
    merged.load_state_dict(gate_state, strict=False)
    return merged


@pytest.mark.parametrize("order", ["lora_then_patch", "patch_then_lora"])
def test_lora_contribution_is_gated(order):
    base = tiny_model("llama")
    x = ids()
    if order == "lora_then_patch":
        model = vga_hf.patch_model(_lora(base))
    else:
        model = _lora(vga_hf.patch_model(base))
    randomize_gates(model, std=0.5)
    gate_state = {k.replace("base_model.model.", ""): v for k, v in model.state_dict().items() if "vga_gate" in k}
    reference = _merged_reference(model, gate_state)
    torch.testing.assert_close(logits(model, x), logits(reference, x), atol=1e-5, rtol=1e-5)
    # the hook sits on the LoRA wrapper, not on the wrapped base layer
    attn = model.get_base_model().model.layers[0].self_attn
    assert any(vga_hf.patch._is_vga_hook(h) for h in attn.v_proj._forward_hooks.values())
    assert not any(vga_hf.patch._is_vga_hook(h) for h in attn.v_proj.base_layer._forward_hooks.values())


def test_gates_train_next_to_lora_and_merge_keeps_them():
    model = _lora(vga_hf.patch_model(tiny_model("llama")))
    for p in vga_hf.gate_parameters(model):
        p.requires_grad_(True)
    x = ids()
    model.train()
    model(x, labels=x).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vga_hf.gate_parameters(model))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert all(p.grad is not None for p in lora_b)
    model.eval()
    randomize_gates(model)
    before = logits(model, x)
    merged = model.merge_and_unload()
    assert vga_hf.is_patched(merged)
    torch.testing.assert_close(logits(merged, x), before, atol=1e-5, rtol=1e-5)


def test_peft_modules_to_save_trains_and_uses_the_adapter_copy():
    model = _lora(vga_hf.patch_model(tiny_model("llama")), modules_to_save=["vga_gate"])
    gates = vga_hf.get_gates(model)
    assert len(gates) == 2 and all(p.requires_grad for p in vga_hf.gate_parameters(model))
    x = ids()
    before = logits(model, x)
    randomize_gates(model)  # writes into the adapter's trainable copies
    assert not torch.allclose(logits(model, x), before), "the forward must use the adapter's gate copy"
    adapter_keys = __import__("peft").get_peft_model_state_dict(model).keys()
    assert any("vga_gate" in k for k in adapter_keys), "gates must be saved with the adapter"


# ---- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(granularity="token"), "granularity.*head, element"),
    (dict(gate_input="keys"), "gate_input.*value, head_value, input"),
    (dict(position="query"), "position.*value, output"),
    (dict(scale=0), "scale must be > 0"),
    (dict(scale="2"), "scale must be a number"),
    (dict(weight_init_std=-1.0), "weight_init_std must be >= 0"),
    (dict(layers="0,1"), "layers must be None"),
    (dict(layers=[0, 0]), "duplicates"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VGAConfig(**kwargs)


def test_config_json_round_trip_and_versioning():
    cfg = VGAConfig(granularity="element", gate_input="input", scale=1.0, layers=[0, 3])
    assert VGAConfig.from_json_string(cfg.to_json_string()) == cfg
    data = cfg.to_dict()
    data["format_version"] = 99
    with pytest.raises(ValueError, match="format version 99.*Upgrade"):
        VGAConfig.from_dict(data)
    with pytest.raises(ValueError, match="Unknown VGAConfig field"):
        VGAConfig.from_dict({"granularity": "head", "colour": "red"})
    assert VGAConfig().is_identity_at_init and not VGAConfig(scale=1.0).is_identity_at_init


def test_patch_errors():
    with pytest.raises(ValueError, match="found no decoder self-attention.*Supported model types: .*gpt2.*llama"):
        vga_hf.patch_model(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(ValueError, match="layers contains 5.*2 decoder attention layers"):
        vga_hf.patch_model(tiny_model("llama"), layers=[5])
    with pytest.raises(ValueError, match="Unknown VGAConfig option"):
        vga_hf.patch_model(tiny_model("llama"), granularty="head")
    with pytest.raises(TypeError, match="VGAConfig or a dict"):
        vga_hf.patch_model(tiny_model("llama"), "head")
    with pytest.raises(ValueError, match="call vga_hf.patch_model"):
        vga_hf.mark_only_gates_trainable(tiny_model("llama"))


def test_from_scratch_form_starts_at_half():
    model = vga_hf.patch_model(tiny_model("llama"), scale=1.0)
    gate = vga_hf.get_gates(model)[0]
    gate.record = True
    logits(model, ids())
    assert torch.allclose(gate.last_gate, torch.full_like(gate.last_gate, 0.5))
    assert math.isclose(VGAConfig(scale=1.0).scale / 2, 0.5)


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["llama", "mistral"])
def test_real_smollm2_patched_logits_equal_unpatched(architecture):
    from vga_hf.assets import load_smollm2

    model, tokenizer = load_smollm2(architecture)
    x = tokenizer("To be, or not to be, that is the question:", return_tensors="pt")["input_ids"]
    ref = logits(model, x)
    vga_hf.patch_model(model)
    assert len(vga_hf.get_gates(model)) == 30
    assert all(g.num_kv_heads == 3 and g.head_dim == 64 for g in vga_hf.get_gates(model).values())
    assert torch.equal(logits(model, x), ref)
