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


def tiny_tokenizer(vocab_size: int = TINY_VOCAB):
    """A character-level `PreTrainedTokenizerFast` built in code (no Hub): ids 0-3 are
    <pad>, <s>, </s>, <unk> (matching `tiny_config`), then newline, tab and printable ASCII."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = ["\n", "\t"] + [chr(c) for c in range(32, 127)]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    if len(vocab) > vocab_size:
        raise ValueError(f"the character tokenizer needs {len(vocab)} ids, more than vocab_size={vocab_size}")
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def save_tiny_checkpoint(folder, model_type: str = "llama", seed: int = 0, **overrides):
    """Write a tiny random model of `model_type` plus `tiny_tokenizer()` to `folder` (an HF folder that
    recipes and commands can load offline). Returns the folder as a string."""
    from pathlib import Path

    folder = Path(folder)
    tiny_model(model_type, seed=seed, **overrides).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)
