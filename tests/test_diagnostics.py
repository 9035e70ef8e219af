"""Diagnostics with known answers (spec section 3): metrics, probe, W8A8, reports, CLI."""

from __future__ import annotations

import gc
import json
import math
import weakref

import pytest
import torch

import vga_hf
from vga_hf.diagnostics import (
    W8A8,
    AttentionStats,
    DiagnosticsSettings,
    attention_probe,
    diagnose,
    first_token_attention,
    key_importance,
    kurtosis,
    load_reports,
    max_key_attention,
    quantize_asymmetric,
    quantize_symmetric,
    write_report,
)
from vga_hf.diagnostics.quant import affine_params
from vga_hf.testing import save_tiny_checkpoint, tiny_model, tiny_tokenizer

FAST = dict(progress=False, window=16, stride=16, max_windows=3, calib_windows=2)


def causal(weights: torch.Tensor) -> torch.Tensor:
    """Row-normalise a [T, T] score pattern under a causal mask -> probs [1, 1, T, T]."""
    w = torch.tril(weights.float())
    return (w / w.sum(-1, keepdim=True))[None, None]


def harmonic(n: int) -> float:
    return sum(1.0 / k for k in range(1, n + 1))


# ---- metrics on synthetic attention maps ---------------------------------------------------------
@pytest.mark.parametrize("T", [2, 4, 8, 16, 64])
def test_uniform_attention_known_answers(T):
    probs = causal(torch.ones(T, T))  # a_ij = 1 / (i + 1)
    a0 = first_token_attention(probs).item()
    assert a0 == pytest.approx(sum(1.0 / (i + 1) for i in range(1, T)) / (T - 1), rel=1e-6)
    alpha0 = key_importance(probs)[0, 0, 0].item()
    assert alpha0 == pytest.approx(harmonic(T) / T, rel=1e-6)  # Gu et al.: 1/T sum_i a_i0
    stats = AttentionStats(eps=0.3)
    stats(0, probs)
    assert stats.mean("sink") == [[1.0 if harmonic(T) / T > 0.3 else 0.0]]


@pytest.mark.parametrize("pattern, a0, sink, mka, mka_pos", [
    ("first", 1.0, True, 1.0, 0),          # every query parks on position 0
    ("third", 0.0, False, 1.0, 3),         # a sink on position 3: not seen by A0, seen by max key
    ("previous", None, False, None, None),  # a copying head (previous token): not a sink
    ("diagonal", 0.0, False, None, None),  # attends to itself
])
def test_attention_patterns(pattern, a0, sink, mka, mka_pos):
    T = 32
    w = torch.full((T, T), 1e-6)
    idx = torch.arange(T)
    if pattern == "first":
        w[:, 0] = 1.0
    elif pattern == "third":
        w[3:, 3] = 1.0
        w[:3, :3] = torch.eye(3)
    elif pattern == "previous":
        w[idx[1:], idx[:-1]] = 1.0
        w[0, 0] = 1.0
    else:
        w[idx, idx] = 1.0
    probs = causal(w)
    if a0 is not None:
        assert first_token_attention(probs).item() == pytest.approx(a0, abs=1e-3)
    stats = AttentionStats(eps=0.3)
    stats(5, probs)
    assert stats.mean("sink") == [[float(sink)]]
    value, pos = max_key_attention(probs, min_queries_frac=0.5)
    if mka is not None:
        assert value.item() == pytest.approx(mka, abs=1e-3) and pos.item() == mka_pos
    else:  # no key holds more than ~2/T of the queries on average
        assert value.item() < 0.1
        assert stats.mean("max_key_sink") == [[0.0]]


def test_stats_average_over_samples():
    T = 8
    sink = causal(torch.tensor([[1.0] + [1e-9] * (T - 1)] * T))
    uniform = causal(torch.ones(T, T))
    stats = AttentionStats(eps=0.3)
    stats(0, torch.cat([sink, uniform, uniform, uniform]).expand(-1, 2, -1, -1))  # 4 samples, 2 heads
    # alpha_0 of uniform T=8 is H_8/8 = 0.34 > 0.3, so all 4 samples are sinks
    assert stats.mean("sink") == [[1.0, 1.0]]
    a0_uniform = sum(1.0 / (i + 1) for i in range(1, T)) / (T - 1)
    assert stats.mean("first_token_attention")[0][0] == pytest.approx((1.0 + 3 * a0_uniform) / 4, rel=1e-5)


# ---- kurtosis ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, make, expected, tol", [
    ("rademacher", lambda g: torch.randint(0, 2, (20000,), generator=g).float() * 2 - 1, 1.0, 1e-3),
    ("gaussian", lambda g: torch.randn(400000, generator=g), 3.0, 0.05),
    ("uniform", lambda g: torch.rand(400000, generator=g), 1.8, 0.02),
    ("laplace", lambda g: torch.distributions.Laplace(0.0, 1.0).sample((400000,)), 6.0, 0.3),
    ("one spike, n=576", lambda g: torch.nn.functional.one_hot(torch.tensor(7), 576).float() * 1e4,
     (576 ** 2 - 3 * 576 + 3) / 575, 1e-6),
])
def test_kurtosis_known_distributions(name, make, expected, tol):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    k = kurtosis(make(g)).item()
    assert k == pytest.approx(expected, abs=tol), name


def test_kurtosis_per_token_over_hidden_dim():
    x = torch.randn(2, 5, 1000)
    x[0, 0, 3] = 1000.0  # an outlier token
    k = kurtosis(x)
    assert k.shape == (2, 5)
    assert k[0, 0] > 100 and (k[1] - 3).abs().max() < 0.7


# ---- quantizer ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, spread", [((64, 64), 1.0), ((10, 300), 100.0), ((5,), 1e-3)])
def test_symmetric_round_trip_within_half_step(shape, spread):
    w = torch.randn(shape) * spread
    q, scale = quantize_symmetric(w)
    assert scale == pytest.approx(w.abs().max().item() / 127)
    assert (q - w).abs().max().item() <= scale / 2 * (1 + 1e-5)
    assert len(torch.unique(torch.round(q / scale))) <= 255


@pytest.mark.parametrize("lo, hi", [(-1.0, 3.0), (0.5, 2.0), (-7.0, -1.0), (-0.01, 100.0)])
def test_asymmetric_round_trip_within_half_step(lo, hi):
    scale, zp = affine_params(lo, hi)
    assert 0 <= zp <= 255
    x = torch.linspace(lo, hi, 1001)
    q = quantize_asymmetric(x, lo, hi)
    assert (q - x).abs().max().item() <= scale / 2 * (1 + 1e-4)
    assert quantize_asymmetric(torch.zeros(1), lo, hi).item() == 0.0  # zero is exact (padding, ReLU)
    assert len(torch.unique(q)) <= 256
    # outside the static range: clipped to it
    assert quantize_asymmetric(torch.tensor([hi + 10 * (hi - lo)]), lo, hi).item() <= max(hi, 0) + scale


def test_w8a8_running_min_max_and_restores_weights():
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = W8A8(model, momentum=0.9)
    names = [n for n, _ in q.linears]
    assert "lm_head" not in names and any(n.endswith("v_proj") for n in names)
    a, b = torch.randint(3, 128, (1, 16)), torch.randint(3, 128, (1, 16))
    seen = []
    handle = model.model.layers[0].self_attn.q_proj.register_forward_pre_hook(
        lambda m, args: seen.append((args[0].min().item(), args[0].max().item())))
    with torch.no_grad(), q.calibrating():
        model(a)
        model(b)
    handle.remove()
    lo = 0.9 * seen[0][0] + 0.1 * seen[1][0]
    hi = 0.9 * seen[0][1] + 0.1 * seen[1][1]
    assert q.ranges["model.layers.0.self_attn.q_proj"] == pytest.approx((lo, hi))
    with torch.no_grad(), q.quantized():
        w = model.model.layers[0].mlp.up_proj.weight
        scale = q.weight_scales["model.layers.0.mlp.up_proj"]
        assert torch.allclose(w / scale, torch.round(w / scale), atol=1e-3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def _peaked_model(seed=0):
    # larger init: peaked next-token distributions, so quantization noise shows in the perplexity
    return tiny_model("llama", seed=seed, initializer_range=0.2)


@torch.no_grad()
def _inject_outlier(model, channel=5, factor=100.0):
    """Function-preserving: the RMSNorm weight of `channel` x factor, the reading columns / factor.
    FP32 output is unchanged, but every q/k/v/gate/up input now has a factor-x outlier channel."""
    for layer in model.model.layers:
        for norm, readers in ((layer.input_layernorm, ("q_proj", "k_proj", "v_proj")),
                              (layer.post_attention_layernorm, ("gate_proj", "up_proj"))):
            norm.weight[channel] *= factor
            parent = layer.self_attn if readers[0] == "q_proj" else layer.mlp
            for r in readers:
                getattr(parent, r).weight[:, channel] /= factor
    return model


def test_injected_activation_outlier_costs_more_under_w8a8():
    ids = torch.randint(3, 128, (200,), generator=torch.Generator().manual_seed(1))
    calib = torch.randint(3, 128, (100,), generator=torch.Generator().manual_seed(2))
    settings = DiagnosticsSettings(progress=False, window=50, stride=50, max_windows=4, calib_windows=2,
                                   attention=False)
    clean = diagnose(_peaked_model(), eval_ids=ids, calib_ids=calib, settings=settings)
    spiky = diagnose(_inject_outlier(_peaked_model()), eval_ids=ids, calib_ids=calib, settings=settings)
    assert spiky["perplexity"] == pytest.approx(clean["perplexity"], rel=1e-4)  # same function in fp32
    assert spiky["w8a8_gap"] > 3 * max(clean["w8a8_gap"], 0.01 * clean["perplexity"])
    assert spiky["w8a8_perplexity"] > clean["w8a8_perplexity"]


# ---- the attention probe ----------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", ["llama", "gpt2", "mistral", "qwen2"])
def test_probe_same_probs_under_eager_and_sdpa(model_type):
    ids = torch.randint(3, 128, (2, 12))
    maps, logits = {}, {}
    for impl in ("eager", "sdpa"):
        model = tiny_model(model_type, attn_implementation=impl)
        got = {}
        with torch.no_grad():
            ref = model(ids, output_attentions=impl == "eager")
            with attention_probe(model, lambda layer, p: got.__setitem__(layer, p.clone())):
                out = model(ids)
        assert model.config._attn_implementation == impl  # restored
        assert torch.equal(out.logits, ref.logits)  # the backend still computes the output
        if impl == "eager":
            for layer, p in got.items():
                torch.testing.assert_close(p, ref.attentions[layer].float())
        maps[impl], logits[impl] = got, out.logits
    assert sorted(maps["eager"]) == [0, 1]
    for layer in maps["eager"]:
        assert maps["eager"][layer].shape == (2, 4, 12, 12)
        torch.testing.assert_close(maps["eager"][layer], maps["sdpa"][layer], atol=1e-6, rtol=1e-5)


def test_generic_eager_matches_model_eager():
    from vga_hf.diagnostics.attention import generic_eager_attention

    model = tiny_model("llama", attn_implementation="eager")
    attn = model.model.layers[0].self_attn
    q, k, v = torch.randn(1, 4, 6, 16), torch.randn(1, 2, 6, 16), torch.randn(1, 2, 6, 16)
    mask = torch.triu(torch.full((6, 6), float("-inf")), 1)[None, None]
    from transformers.models.llama.modeling_llama import eager_attention_forward

    ref_out, ref_probs = eager_attention_forward(attn, q, k, v, mask, scaling=0.25)
    out, probs = generic_eager_attention(attn, q, k, v, None, scaling=0.25)  # causal mask built from shapes
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(probs, ref_probs)


def test_probe_differentiable_and_layer_subset():
    model = tiny_model("llama", attn_implementation="sdpa")
    ids = torch.randint(3, 128, (1, 10))
    losses, layers_seen = [], []

    def cb(layer, p):
        layers_seen.append(layer)
        losses.append(key_importance(p)[..., 0].mean())

    with attention_probe(model, cb, differentiable=True, layers=[1]):
        model(ids)
    assert layers_seen == [1]
    sum(losses).backward()
    layer1 = model.model.layers[1].self_attn
    assert layer1.q_proj.weight.grad.abs().sum() > 0 and layer1.k_proj.weight.grad.abs().sum() > 0
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0  # through the hidden state
    with attention_probe(model, lambda layer, p: losses.append(p.requires_grad)):
        model(ids)
    assert losses[-1] is False


def test_probe_keeps_no_maps_memory_bounded():
    model = tiny_model("llama", attn_implementation="sdpa", num_hidden_layers=4)
    refs, alive_at_callback = [], []

    def cb(layer, p):  # tensors are freed by reference counting, no gc pass needed
        alive_at_callback.append(sum(r() is not None for r in refs))
        refs.append(weakref.ref(p))

    with torch.no_grad(), attention_probe(model, cb):
        model(torch.randint(3, 128, (1, 64)))
    gc.collect()
    assert alive_at_callback == [0, 0, 0, 0]  # the previous layer's map was freed before the next one
    assert all(r() is None for r in refs)
    # streamed statistics: the same size whatever the number of windows
    stats = AttentionStats()
    with torch.no_grad(), attention_probe(model, stats):
        for _ in range(3):
            model(torch.randint(3, 128, (1, 32)))
    size = sum(t.numel() for d in stats.sums.values() for t in d.values())
    with torch.no_grad(), attention_probe(model, stats):
        for _ in range(3):
            model(torch.randint(3, 128, (1, 32)))
    assert sum(t.numel() for d in stats.sums.values() for t in d.values()) == size
    assert stats.counts == {0: 6, 1: 6, 2: 6, 3: 6}


# ---- end-to-end on tiny models with known answers -----------------------------------------------------
@torch.no_grad()
def _gpt2_forced_sink():
    """GPT-2 whose every head attends (almost) only to position 0: the residual stream is the embeddings
    (attention and MLP outputs zeroed), position 0 carries a huge channel 0, queries are a constant
    vector and keys read channel 0."""
    model = tiny_model("gpt2", attn_implementation="sdpa")
    d = model.config.n_embd
    model.transformer.wte.weight[:, 0] = 0.0
    model.transformer.wpe.weight[:, 0] = 0.0
    model.transformer.wpe.weight[0, 0] = 1000.0
    for block in model.transformer.h:
        block.attn.c_proj.weight.zero_(), block.attn.c_proj.bias.zero_()
        block.mlp.c_proj.weight.zero_(), block.mlp.c_proj.bias.zero_()
        w, b = block.attn.c_attn.weight, block.attn.c_attn.bias  # Conv1D: [d, 3d]
        w[:, :d] = 0.0
        b[:d] = 1.0  # q = 1
        w[:, d:2 * d] = 0.0
        w[0, d:2 * d] = 20.0  # k = 20 * ln(x)[0]
        b[d:2 * d] = 0.0
    return model


def test_forced_sink_model_has_100_percent_sink_rate():
    model = _gpt2_forced_sink()
    ids = torch.randint(3, 128, (64,))
    r = diagnose(model, eval_ids=ids, settings=DiagnosticsSettings(w8a8=False, **FAST))
    assert r["sink_rate"] == 100.0
    assert r["summary"]["first_token_attention"] > 0.99
    assert r["max_key_attention"]["position"] == [[0] * 4, [0] * 4]
    assert r["max_inf_norm"] == pytest.approx(1000.0, rel=1e-3)  # the planted activation on position 0
    assert r["max_inf_norm_position"] == [0, 0]
    assert r["max_inf_norm_excl_first"] < 10


@pytest.mark.parametrize("window, expect_sink", [(4, True), (16, False)])
def test_uniform_attention_model_expected_first_token_attention(window, expect_sink):
    model = tiny_model("llama", attn_implementation="sdpa")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.zero_()  # scores 0: a_ij = 1 / (i + 1)
    ids = torch.randint(3, 128, (4 * window,))
    settings = DiagnosticsSettings(w8a8=False, progress=False, window=window, stride=window, max_windows=4)
    r = diagnose(model, eval_ids=ids, settings=settings)
    expected = sum(1.0 / (i + 1) for i in range(1, window)) / (window - 1)
    for row in r["first_token_attention"]:
        assert row == pytest.approx([expected] * 4, rel=1e-5)
    assert r["sink_rate"] == (100.0 if expect_sink else 0.0)
    assert harmonic(window) / window > 0.3 if expect_sink else harmonic(window) / window < 0.3


def test_perplexity_matches_model_loss_and_strides():
    model = tiny_model("llama")
    ids = torch.randint(3, 128, (48,))
    r = diagnose(model, eval_ids=ids, settings=DiagnosticsSettings(w8a8=False, attention=False, progress=False,
                                                                    window=48, stride=48, max_windows=None))
    with torch.no_grad():
        loss = model(ids[None], labels=ids[None]).loss.item()
    assert r["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert r["settings"]["scored_tokens"] == 47
    r2 = diagnose(model, eval_ids=ids, settings=DiagnosticsSettings(w8a8=False, attention=False, progress=False,
                                                                     window=16, stride=8, max_windows=None))
    assert r2["settings"]["scored_tokens"] == 47  # every target scored once, with overlapping context
    assert r2["settings"]["window"] == 16 and r2["settings"]["stride"] == 8


def test_value_drain_and_gates_on_patched_model():
    model = tiny_model("llama")
    ids = torch.randint(3, 128, (48,))
    settings = DiagnosticsSettings(w8a8=False, **FAST)
    plain = diagnose(model, eval_ids=ids, settings=settings)
    assert plain["gates"] is None and plain["value_drain"]["gated"] == plain["value_drain"]["ungated"]
    # drain ratio by hand for layer 0 / kv head 1, window 0
    v = []
    h = model.model.layers[0].self_attn.v_proj.register_forward_hook(lambda m, a, o: v.append(o.detach()))
    with torch.no_grad():
        for w in range(3):
            model(ids[None, 16 * w:16 * (w + 1)])
    h.remove()
    ratios = []
    for out in v:
        n = out.view(16, 2, 16).norm(dim=-1)[:, 1]
        ratios.append((n[0] / n[1:].mean()).item())
    assert plain["value_drain"]["ungated"][0][1] == pytest.approx(sum(ratios) / 3, rel=1e-5)

    vga_hf.patch_model(model)
    gates = vga_hf.get_gates(model)
    with torch.no_grad():
        for gate in gates.values():
            gate.bias.fill_(-1.0)  # constant gate 2 * sigmoid(-1)
            gate.weight.normal_(0, 0.05)
    r = diagnose(model, eval_ids=ids, settings=settings)
    # layer 0 reads the same input: its ungated values are those of the unpatched model
    assert r["value_drain"]["ungated"][0] == pytest.approx(plain["value_drain"]["ungated"][0], rel=1e-5)
    for layer in (0, 1):
        assert r["value_drain"]["gated"][layer] != pytest.approx(r["value_drain"]["ungated"][layer], rel=1e-6)
    assert 0.3 < r["summary"]["gate_first"] < 0.8 and 0.3 < r["summary"]["gate_rest"] < 0.8
    hist = r["gates"]["histogram"]
    assert sum(hist["first"]) == 3 * 2 * 2  # windows x layers x kv heads
    assert sum(hist["rest"]) == 3 * 15 * 2 * 2
    assert all(g.record is False and g.last_value is None for g in gates.values())


# ---- reports, plots, compare, CLI ------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_reports():
    ids = torch.randint(3, 128, (64,), generator=torch.Generator().manual_seed(0))
    calib = torch.randint(3, 128, (64,), generator=torch.Generator().manual_seed(1))
    settings = DiagnosticsSettings(**FAST)
    before = diagnose(tiny_model("llama"), eval_ids=ids, calib_ids=calib, settings=settings, name="tiny")
    patched = vga_hf.patch_model(tiny_model("llama"))
    after = diagnose(patched, eval_ids=ids, calib_ids=calib, settings=settings, name="tiny+vga")
    return {"before": before, "after": after}


REQUIRED_KEYS = ["schema_version", "sink_rate", "first_token_attention", "value_drain", "kurtosis", "max_inf_norm",
                 "perplexity", "w8a8_perplexity", "settings", "max_key_attention", "max_inf_norm_excl_first",
                 "second_token_attention", "gates", "summary"]


def test_report_schema_and_json(two_reports):
    for r in two_reports.values():
        assert set(REQUIRED_KEYS) <= set(r)
        assert len(r["first_token_attention"]) == 2 and len(r["first_token_attention"][0]) == 4
        assert len(r["value_drain"]["gated"][0]) == 2  # kv heads
        assert set(r["summary"]) >= {"perplexity", "sink_rate", "first_token_attention", "max_key_attention",
                                     "value_drain", "kurtosis", "max_inf_norm", "max_inf_norm_excl_first",
                                     "w8a8_gap", "gate_first", "gate_rest"}
        json.dumps(r)  # JSON-able as returned
    assert two_reports["after"]["summary"]["gate_first"] == 1.0  # identity at init
    # a patched identity-initialised model measures exactly what the original did
    assert two_reports["after"]["perplexity"] == pytest.approx(two_reports["before"]["perplexity"], rel=1e-6)


def test_write_report_compare_side_by_side(two_reports, tmp_path):
    paths = write_report(two_reports, tmp_path)
    for name in ("report.json", "summary.md", "first_token_attention.png", "first_token_attention_heatmap.png",
                 "value_drain.png", "gate_distribution.png"):
        assert (tmp_path / name).exists() and (tmp_path / name).stat().st_size > 0, name
    assert set(paths) >= {"json", "markdown", "heatmap", "gates"}
    md = (tmp_path / "summary.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| metric"))
    assert "| before | after |" in header
    assert "sink rate" in md and "gate_distribution.png" in md
    loaded = load_reports(tmp_path / "report.json")
    assert list(loaded) == ["before", "after"] and loaded["after"]["schema_version"] == 1
    # a single report is accepted too
    write_report(two_reports["before"], tmp_path / "single", plots=False)
    assert (tmp_path / "single" / "summary.md").exists()


def test_load_reports_rejects_newer_schema(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"schema_version": 99, "reports": {}}))
    with pytest.raises(ValueError, match="schema version"):
        load_reports(tmp_path / "r.json")


def test_diagnose_with_tokenizer_and_text():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    text = "To be, or not to be, that is the question. " * 4
    calib = "Fair is foul, and foul is fair: hover through the fog and filthy air. " * 2
    r = diagnose(model, tok, text, calib, DiagnosticsSettings(**FAST))
    assert r["settings"]["eval_tokens"] == len(text) + 1  # characters + BOS
    assert r["w8a8_perplexity"] is not None and r["settings"]["calibration"]["windows"] == 2


def test_settings_validation():
    assert DiagnosticsSettings(window=16).stride == 16  # stride defaults to the window
    with pytest.raises(ValueError, match="stride"):
        DiagnosticsSettings(window=16, stride=32)
    with pytest.raises(ValueError, match="calib_windows"):
        DiagnosticsSettings(calib_windows=0)


def test_cli_diagnose_compare(tmp_path, capsys):
    from vga_hf.cli import build_parser, main

    a = save_tiny_checkpoint(tmp_path / "a", seed=0)
    patched = vga_hf.patch_model(tiny_model("llama", seed=0))  # "after a retrofit": a VGA checkpoint
    with torch.no_grad():
        for gate in vga_hf.get_gates(patched).values():
            gate.bias.fill_(-1.0)
    b = str(vga_hf.save_checkpoint(patched, tmp_path / "b", tokenizer=tiny_tokenizer()))
    text = tmp_path / "t.txt"
    text.write_text("Now is the winter of our discontent made glorious summer by this sun of York. " * 3)
    out = tmp_path / "out"
    rc = main(["diagnose", a, "--compare", b, "--label", "A", "--compare-label", "B", "--data", str(text),
               "--window", "24", "--max-windows", "2", "--calib-windows", "1", "--out", str(out), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| metric | A | B |" in printed
    reports = load_reports(out / "report.json")
    assert list(reports) == ["A", "B"] and reports["A"]["settings"]["stride"] == 24
    assert (out / "first_token_attention.png").exists() and (out / "gate_distribution.png").exists()
    assert not reports["A"]["model"]["patched"] and reports["B"]["model"]["patched"]  # loaded with its gates
    assert reports["B"]["summary"]["gate_first"] == pytest.approx(2 / (1 + math.exp(1)), rel=1e-5)
    # every option is documented
    sub = build_parser()._subparsers._group_actions[0].choices["diagnose"]
    for action in sub._actions:
        assert action.help, action.dest
    assert main(["diagnose", str(tmp_path / "missing"), "--out", str(out)]) == 2


@pytest.mark.slow
def test_smollm2_has_sinks_and_drained_first_values():
    from vga_hf.assets import load_smollm2

    model, tok = load_smollm2(attn_implementation="sdpa")
    settings = DiagnosticsSettings(window=64, stride=64, max_windows=2, w8a8=False, progress=False)
    r = diagnose(model, tok, settings=settings)
    assert r["sink_rate"] > 30.0
    middle = r["value_drain"]["gated"][5:25]
    assert sum(sum(row) / len(row) for row in middle) / len(middle) < 0.5
    assert r["max_inf_norm"] > 1000  # massive activations (24.9k in the default run)
    assert r["max_inf_norm_position"][15] == 0  # ... on the sink token
