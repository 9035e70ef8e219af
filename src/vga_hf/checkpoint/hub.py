"""`push_to_hub`: save a checkpoint (weights, code, tokenizer, model card) and upload the folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from torch import nn

from .card import CARD_NAME
from .files import check_safetensors_folder
from .save import save_checkpoint


def push_to_hub(model: nn.Module | str | os.PathLike, repo_id: str, tokenizer=None, metrics: dict | None = None,
                base_model: str | None = None, *, private: bool | None = None, token: str | None = None,
                commit_message: str | None = None, revision: str | None = None, create_pr: bool = False,
                max_shard_size=None):
    """Upload to the Hub repository `repo_id` (created if needed); returns huggingface_hub's commit info.
    Needs network access and a write token.

    `model` is a model (saved first with `save_checkpoint`: weights, code, tokenizer, model card with
    `metrics`) or the folder of a checkpoint already saved by `save_checkpoint` (uploaded as it is)."""
    if isinstance(model, (str, os.PathLike)):
        folder = _checked_folder(model, tokenizer, metrics, base_model, max_shard_size)
        return _upload(folder, repo_id, private, token, commit_message, revision, create_pr)
    with tempfile.TemporaryDirectory(prefix="vga_hf-push-") as tmp:
        folder = save_checkpoint(model, Path(tmp) / "checkpoint", tokenizer=tokenizer, metrics=metrics,
                                 base_model=base_model, max_shard_size=max_shard_size)
        return _upload(folder, repo_id, private, token, commit_message, revision, create_pr)


def _checked_folder(folder, tokenizer, metrics, base_model, max_shard_size) -> Path:
    folder = Path(folder)
    if any(x is not None for x in (tokenizer, metrics, base_model, max_shard_size)):
        raise ValueError("push_to_hub(folder, ...) uploads the folder as saved; tokenizer, metrics, base_model and "
                         "max_shard_size apply when saving: pass them to save_checkpoint, or pass the model here.")
    if not (folder / "config.json").is_file() or not (folder / CARD_NAME).is_file():
        raise ValueError(f"{folder} is not a checkpoint saved by vga_hf.save_checkpoint (config.json and "
                         f"{CARD_NAME} are needed).")
    check_safetensors_folder(folder)
    return folder


def _upload(folder: Path, repo_id, private, token, commit_message, revision, create_pr):
    import huggingface_hub

    api = huggingface_hub.HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    return api.upload_folder(repo_id=getattr(repo, "repo_id", repo_id), folder_path=str(folder), repo_type="model",
                             revision=revision, create_pr=create_pr,
                             commit_message=commit_message or "Upload VGA checkpoint (vga_hf)")
