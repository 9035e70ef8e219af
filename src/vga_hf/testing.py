"""Small random models built in code (no Hub), for tests, benchmarks and examples."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

# Tiny configurations per model type: 2 layers, GQA where the architecture has it.
TINY_CONFIGS: dict[str, dict] = {
    "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16),
    "mistral": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, sliding_window=None),
    "qwen2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
    "qwen3": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16),
    "gemma": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=1, head_dim=16),
    "phi3": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=128),
}
TINY_VOCAB = 128


def tiny_config(model_type: str = "llama", **overrides):
    if model_type not in TINY_CONFIGS:
        raise ValueError(f"no tiny config for {model_type!r}; known: {sorted(TINY_CONFIGS)}")
    kwargs = dict(vocab_size=TINY_VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0, **TINY_CONFIGS[model_type])
    if model_type != "gpt2":
        kwargs.setdefault("max_position_embeddings", 256)
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_model(model_type: str = "llama", seed: int = 0, attn_implementation: str = "eager", **overrides):
    """A randomly initialised 2-layer causal LM of `model_type`, float32, eval mode."""
    torch.manual_seed(seed)
    config = tiny_config(model_type, **overrides)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    return model.eval()


def smollm2_config(num_hidden_layers: int = 30, **overrides):
    """The shape of SmolLM2-135M (Llama: 9 heads, 3 kv heads, head_dim 64, hidden 576)."""
    kwargs = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=num_hidden_layers,
                  num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                  rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)
    kwargs.update(overrides)
    return AutoConfig.for_model("llama", **kwargs)
