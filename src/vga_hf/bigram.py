"""Bigram-Backcopy (Guo et al. 2024, arXiv 2410.13835; spec section 4): data, oracle and metrics.

Task. Vocabulary: the characters of a text plus a start token `<s>` (id 0). Bigram table: the
character bigram frequencies of that text. Triggers: the k most frequent characters. A sequence
starts with `<s>`; x1 is drawn from the unigram distribution with the triggers removed; then for
t >= 2: if x_{t-1} is a trigger, x_t = x_{t-2} (copy back), else x_t ~ P(. | x_{t-1}).

A one-layer transformer solves the copy with its attention head (query at a trigger looks at the
previous token) and the bigram with its MLP; at non-trigger positions the head has nothing to do.
Vanilla softmax attention then parks those queries on `<s>` and drains its value (the sink).

Metrics (all functions below are pure tensor functions, testable on hand-made inputs):
- backcopy risk / bigram risk: cross-entropy `-sum_y p*(y) log q(y)` of the model's next-token
  distribution q against the oracle p*, averaged over trigger / non-trigger query positions.
  (The bigram oracle is not deterministic: its entropy, the floor of the bigram risk, is reported.)
- attention on `<s>`: mean of `a_i0` over non-trigger queries i >= 1.
- value-state norm of `<s>`: `|v_0|` (and its ratio to the mean `|v_j|` of the other tokens), both
  of the value state itself (`raw_value_*`: the value projection's output) and of what attention
  mixes (`value_*`: `g_0 * v_0` where the gate acts on values, i.e. IGA and VGA; `v_0` otherwise).
- logit gap of `<s>`: attention logit of key 0 minus the mean logit of the other visible keys,
  averaged over non-trigger queries. Computed from the attention probabilities:
  `s_i0 - mean_j s_ij = log a_i0 - mean_j log a_ij` exactly (softmax is shift invariant), with
  probabilities clamped at 1e-30 against underflow.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

BOS = "<s>"
LOG_CLAMP = 1e-30


@dataclass
class BigramBackcopy:
    """The Bigram-Backcopy source built from one text's character statistics.

    Attributes: `chars` (vocabulary without `<s>`; token id = index + 1), `unigram` [V] (over the
    full vocabulary, `<s>` has 0), `bigram` [V, V] row-stochastic `P(next | current)`,
    `triggers` (token ids), `first` [V] distribution of x1 (unigram without triggers).
    """

    chars: list[str]
    unigram: torch.Tensor
    bigram: torch.Tensor
    triggers: list[int]
    first: torch.Tensor

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_text(cls, text: str, k: int = 3) -> "BigramBackcopy":
        """Vocabulary, unigram, bigram table and the k most frequent characters as triggers."""
        if len(text) < 2:
            raise ValueError("Bigram-Backcopy needs a text of at least two characters.")
        counts = Counter(text)
        chars = sorted(counts)
        if k < 0 or k >= len(chars):
            raise ValueError(f"k={k} triggers, but the text has only {len(chars)} distinct characters.")
        index = {c: i + 1 for i, c in enumerate(chars)}
        vocab = len(chars) + 1
        ids = np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text))
        pair = np.bincount(ids[:-1] * vocab + ids[1:], minlength=vocab * vocab).reshape(vocab, vocab)
        pair = torch.tensor(pair, dtype=torch.float64)
        unigram = torch.tensor(np.bincount(ids, minlength=vocab), dtype=torch.float64)
        unigram = unigram / unigram.sum()
        rows = pair.sum(1, keepdim=True)
        # a character never followed by anything (the last one of the text): fall back to the unigram
        bigram = torch.where(rows > 0, pair / rows.clamp_min(1), unigram.expand_as(pair))
        bigram[0] = 0.0  # <s> never precedes a bigram step (x1 has its own rule)
        # triggers: k most frequent characters; ties broken by character order (deterministic)
        order = sorted(range(1, vocab), key=lambda i: (-unigram[i].item(), i))
        triggers = sorted(order[:k])
        first = unigram.clone()
        first[triggers] = 0.0
        first = first / first.sum()
        return cls(chars=chars, unigram=unigram.float(), bigram=bigram.float(), triggers=triggers,
                   first=first.float())

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    @property
    def vocab(self) -> list[str]:
        return [BOS, *self.chars]

    def trigger_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """Boolean tensor: which tokens are triggers."""
        table = torch.zeros(self.vocab_size, dtype=torch.bool, device=tokens.device)
        table[self.triggers] = True
        return table[tokens]

    def decode(self, tokens) -> str:
        vocab = self.vocab
        return "".join(vocab[int(t)] if int(t) else "|" for t in tokens)

    # ---- sampling ----------------------------------------------------------------------------
    def sample(self, batch: int, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """[batch, length] token ids: `<s>` then `length - 1` characters following the rules."""
        if length < 2:
            raise ValueError("length must be >= 2 (<s> and at least one character).")
        x = torch.zeros(batch, length, dtype=torch.long)
        x[:, 1] = torch.multinomial(self.first.expand(batch, -1), 1, generator=generator)[:, 0]
        cdf = self.bigram.double().cumsum(1)
        cdf[:, -1] = 1.0 + 1e-9
        is_trig = torch.zeros(self.vocab_size, dtype=torch.bool)
        is_trig[self.triggers] = True
        # pre-draw uniforms: one inverse-CDF lookup per position (fast, reproducible)
        u = torch.rand(batch, length, generator=generator, dtype=torch.float64)
        for t in range(2, length):
            prev = x[:, t - 1]
            draw = torch.searchsorted(cdf[prev], u[:, t:t + 1].contiguous())[:, 0].clamp_max(self.vocab_size - 1)
            x[:, t] = torch.where(is_trig[prev], x[:, t - 2], draw)
        return x

    # ---- oracle ------------------------------------------------------------------------------
    def oracle(self, tokens: torch.Tensor) -> torch.Tensor:
        """[..., T, V]: the true distribution of the token after each position of `tokens`.

        Position t (t <= T-1) predicts x_{t+1}: after `<s>` the x1 distribution; after a trigger a
        point mass on x_{t-1} (copy back); otherwise the bigram row of x_t.
        """
        p = self.bigram.to(tokens.device)[tokens].clone()
        p[tokens == 0] = self.first.to(tokens.device)
        trig = self.trigger_mask(tokens)
        trig[..., 0] = False
        prev = torch.roll(tokens, 1, dims=-1)
        copy = torch.nn.functional.one_hot(prev, self.vocab_size).to(p.dtype)
        return torch.where(trig[..., None], copy, p)

    def bigram_entropy(self, tokens: torch.Tensor) -> float:
        """Mean oracle entropy over the non-trigger character positions of `tokens` (bigram floor)."""
        p = self.oracle(tokens)
        h = -(p * p.clamp_min(LOG_CLAMP).log()).sum(-1)
        mask = query_masks(tokens, self)[1]
        return float(h[mask].mean())


# ---- metrics ---------------------------------------------------------------------------------
def query_masks(tokens: torch.Tensor, task: BigramBackcopy) -> tuple[torch.Tensor, torch.Tensor]:
    """(trigger, non-trigger) boolean masks [..., T] over query positions i >= 1 (not `<s>`)."""
    trig = task.trigger_mask(tokens)
    real = tokens != 0
    real[..., 0] = False
    return trig & real, ~trig & real


def oracle_risk(logits: torch.Tensor, oracle: torch.Tensor, mask: torch.Tensor) -> float:
    """Cross-entropy `-sum_y p*(y) log softmax(logits)(y)`, averaged over the positions in `mask`."""
    logq = torch.log_softmax(logits.float(), dim=-1)
    ce = -(oracle.float() * logq).sum(-1)
    if not mask.any():
        return float("nan")
    return float(ce[mask].mean())


def attention_on_bos(attn: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
    """Mean attention `a_i0` of the masked queries, per head.

    attn: [B, H, T, T] attention probabilities; query_mask: [B, T]. Returns [H].
    """
    a0 = attn[..., 0].float()  # [B, H, T]
    m = query_mask[:, None, :].expand_as(a0)
    return (a0 * m).sum((0, 2)) / m.sum((0, 2)).clamp_min(1)


def bos_logit_gap(attn: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked queries i >= 1 of `s_i0 - mean_{1<=j<=i} s_ij`, per head ([H]).

    Recovered from causal attention probabilities (`log a_ij` differs from `s_ij` by a per-row
    constant); probabilities are clamped at 1e-30.
    """
    T = attn.shape[-1]
    loga = attn.float().clamp_min(LOG_CLAMP).log()  # [B, H, T, T]
    causal = torch.ones(T, T, dtype=torch.bool, device=attn.device).tril()
    causal[:, 0] = False  # other keys: 1..i
    n_other = causal.sum(-1).clamp_min(1)  # [T]
    mean_other = (loga * causal).sum(-1) / n_other  # [B, H, T]
    gap = loga[..., 0] - mean_other
    m = query_mask.clone()
    m[..., 0] = False
    m = m[:, None, :].expand_as(gap)
    return (gap * m).sum((0, 2)) / m.sum((0, 2)).clamp_min(1)


def value_norms(values: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Per-token, per-head L2 norm of value states: [B, T, H*hd] -> [B, T, H]."""
    B, T, D = values.shape
    return values.float().reshape(B, T, num_heads, D // num_heads).norm(dim=-1)


def bos_value_stats(values: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(`|v_0|` per head, `|v_0| / mean_{j>=1} |v_j|` per head), averaged over the batch."""
    n = value_norms(values, num_heads)  # [B, T, H]
    first = n[:, 0].mean(0)
    rest = n[:, 1:].mean((0, 1))
    return first, first / rest.clamp_min(1e-12)


# ---- models and training -----------------------------------------------------------------------
#: The four variants of the experiment: name -> VGAConfig overrides (None: vanilla, no gate).
#: All gated variants use the paper's from-scratch gate form (scale 1, bias 0: g = 0.5 at init).
VARIANTS: dict[str, dict | None] = {
    "vanilla": None,
    "iga": {"gate_input": "input"},
    "vga": {},
    "vga_output": {"position": "output"},
}
VARIANT_LABELS = {
    "vanilla": "vanilla",
    "iga": "IGA (gate from layer input)",
    "vga": "VGA (gate from value)",
    "vga_output": "VGA, gate on head output",
}


def variant_config(variant: str, scale: float = 1.0, bias_init: float = 0.0):
    """The `VGAConfig` of a variant (None for vanilla)."""
    from .config import VGAConfig

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    overrides = VARIANTS[variant]
    if overrides is None:
        return None
    return VGAConfig(scale=scale, bias_init=bias_init, **overrides)


def build_model(vocab_size: int, seq_len: int, arch: str = "llama", layers: int = 1, heads: int = 1,
                hidden: int = 64, mlp_ratio: int = 4, seed: int = 0):
    """A small decoder from a transformers config, eager attention (attention maps available).

    `arch="llama"`: pre-norm Llama (RMSNorm, RoPE, SwiGLU MLP); `arch="gpt2"`: GPT-2 (LayerNorm,
    learned positions, GELU MLP). Initialised from `seed`, so every variant of a seed starts from
    the same base weights (the gates are added after, deterministically).
    """
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=mlp_ratio * hidden,
                          num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                          max_position_embeddings=seq_len, bos_token_id=0, eos_token_id=0, pad_token_id=None,
                          tie_word_embeddings=False)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_inner=mlp_ratio * hidden, n_layer=layers,
                         n_head=heads, n_positions=seq_len, bos_token_id=0, eos_token_id=0,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False)
    else:
        raise ValueError(f"arch must be 'llama' or 'gpt2', got {arch!r}")
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")


class ValueRecorder:
    """Keeps the ungated value states of every decoder attention layer during a forward.

    Registered before `patch_model`, its hook runs before the gate's, so it sees the raw value
    projection output; `effective(layer)` multiplies in the gate where the gate acts on values.
    """

    def __init__(self, model) -> None:
        from .architectures import find_value_sites, model_type_of

        self.sites = find_value_sites(model, model_type_of(model.config))
        self.values: dict[int, torch.Tensor] = {}
        self.active = False
        self.handles = []
        for layer, (_, attn, site) in enumerate(self.sites):
            module = getattr(attn, site.value_attr)
            self.handles.append(module.register_forward_hook(self._hook(layer, site)))

    @property
    def num_kv_heads(self) -> int:
        return self.sites[0][2].num_kv_heads

    def _hook(self, layer, site):
        def hook(module, args, output):
            if not self.active:
                return None
            if site.heads_layout:
                v = output.reshape(*output.shape[:-2], -1)
            else:
                v = output[..., site.start:site.stop]
            self.values[layer] = v.detach()
            return None
        return hook

    def effective(self, model, layer: int) -> torch.Tensor:
        """Value states that attention mixes: `g * v` for value-position gates, `v` otherwise."""
        from .patch import get_gates

        v = self.values[layer]
        gate = get_gates(model).get(layer)
        if gate is None or gate.position != "value" or gate.last_gate is None:
            return v
        n_kv = gate.num_kv_heads
        return (v.reshape(*v.shape[:-1], n_kv, -1) * gate.last_gate).reshape(v.shape)


def _recorded_forward(model, tokens: torch.Tensor, recorder: ValueRecorder):
    """Forward with attention maps, raw values (recorder) and gates (gate.record) kept."""
    from .patch import get_gates

    gates = get_gates(model)
    for g in gates.values():
        g.record = True
    recorder.active = True
    try:
        out = model(input_ids=tokens, output_attentions=True)
    finally:
        recorder.active = False
        for g in gates.values():
            g.record = False
    return out, gates


@torch.no_grad()
def evaluate(model, task: BigramBackcopy, tokens: torch.Tensor, recorder: ValueRecorder,
             layer: int = -1) -> dict:
    """All metrics of the task on `tokens` ([B, T]); attention metrics of decoder layer `layer`.

    Per-layer lists are included (`*_per_layer`, mean over heads); the headline numbers are those
    of `layer`, averaged over heads.
    """
    was_training = model.training
    model.eval()
    out, gates = _recorded_forward(model, tokens, recorder)
    trig, non_trig = query_masks(tokens, task)
    oracle = task.oracle(tokens)
    per_layer = {"attn_bos": [], "logit_gap": [], "value_norm_bos": [], "value_ratio_bos": [],
                 "raw_value_norm_bos": [], "raw_value_ratio_bos": [], "gate_bos": [], "gate_rest": []}
    n_kv = recorder.num_kv_heads
    for li, attn in enumerate(out.attentions):
        per_layer["attn_bos"].append(float(attention_on_bos(attn, non_trig).mean()))
        per_layer["logit_gap"].append(float(bos_logit_gap(attn, non_trig).mean()))
        eff_first, eff_ratio = bos_value_stats(recorder.effective(model, li), n_kv)
        raw_first, raw_ratio = bos_value_stats(recorder.values[li], n_kv)
        per_layer["value_norm_bos"].append(float(eff_first.mean()))
        per_layer["value_ratio_bos"].append(float(eff_ratio.mean()))
        per_layer["raw_value_norm_bos"].append(float(raw_first.mean()))
        per_layer["raw_value_ratio_bos"].append(float(raw_ratio.mean()))
        gate = gates.get(li)
        if gate is not None and gate.last_gate is not None:
            g = gate.last_gate.float()  # [B, T, n_kv, per_head]
            per_layer["gate_bos"].append(float(g[:, 0].mean()))
            per_layer["gate_rest"].append(float(g[:, 1:].mean()))
        else:
            per_layer["gate_bos"].append(None)
            per_layer["gate_rest"].append(None)
    result = {
        "backcopy_risk": oracle_risk(out.logits, oracle, trig),
        "bigram_risk": oracle_risk(out.logits, oracle, non_trig),
    }
    li = layer % len(out.attentions)
    for key, values in per_layer.items():
        result[key] = values[li]
        result[key + "_per_layer"] = values
    if was_training:
        model.train()
    return result


def train_variant(task: BigramBackcopy, variant: str, seed: int = 0, *, arch: str = "llama",
                  layers: int = 1, heads: int = 1, hidden: int = 64, mlp_ratio: int = 4,
                  seq_len: int = 64, batch: int = 32, steps: int = 500, lr: float = 2e-3,
                  weight_decay: float = 0.0, warmup: int = 20, grad_clip: float = 1.0,
                  eval_every: int = 25, eval_batch: int = 64, metric_layer: int = -1,
                  gate_scale: float = 1.0, gate_bias: float = 0.0, progress=None) -> dict:
    """Train one variant from scratch and return its metric history and final state.

    Data and model init depend only on `seed` (identical across variants). Returns
    `{"history": [{"step", metrics...}], "final": {...}, "sample": {...}, "model": model}`;
    `sample` holds the attention map of `metric_layer` and the per-token value norms on the first
    evaluation sequence (for the Figure 4 plot). `progress(n)` is called after each step.
    """
    from .patch import patch_model

    model = build_model(task.vocab_size, seq_len, arch, layers, heads, hidden, mlp_ratio, seed)
    recorder = ValueRecorder(model)
    vga = variant_config(variant, gate_scale, gate_bias)
    if vga is not None:
        patch_model(model, vga)
    data_gen = torch.Generator().manual_seed(10_000 + seed)
    eval_tokens = task.sample(eval_batch, seq_len, torch.Generator().manual_seed(20_000 + seed))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "vga_gate" not in name else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(warmup, 1)))
    history = []

    def record(step):
        m = evaluate(model, task, eval_tokens, recorder, metric_layer)
        m["step"] = step
        history.append(m)

    record(0)
    model.train()
    for step in range(1, steps + 1):
        x = task.sample(batch, seq_len, data_gen)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()
        if step % eval_every == 0 or step == steps:
            record(step)
            history[-1]["train_loss"] = float(loss.detach())
        if progress is not None:
            progress(1)
    sample = sample_maps(model, task, eval_tokens[:1], recorder, metric_layer)
    return {"history": history, "final": history[-1], "sample": sample, "model": model}


@torch.no_grad()
def sample_maps(model, task: BigramBackcopy, tokens: torch.Tensor, recorder: ValueRecorder,
                layer: int = -1) -> dict:
    """Attention map [T, T] (head 0 of `layer`) and per-token value norms [T] (raw and effective)."""
    model.eval()
    out, _ = _recorded_forward(model, tokens, recorder)
    li = layer % len(out.attentions)
    n_kv = recorder.num_kv_heads
    eff = value_norms(recorder.effective(model, li), n_kv)[0, :, 0]
    raw = value_norms(recorder.values[li], n_kv)[0, :, 0]
    return {"tokens": tokens[0].tolist(), "text": task.decode(tokens[0]),
            "triggers": task.trigger_mask(tokens[0]).tolist(),
            "attention": out.attentions[li][0, 0].float().tolist(),
            "value_norm": eff.tolist(), "raw_value_norm": raw.tolist(), "layer": li}
