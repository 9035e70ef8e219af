"""`push_to_hub`: save a checkpoint (weights, code, tokenizer, model card) and upload the folder."""

from __future__ import annotations

import tempfile
from pathlib import Path

from torch import nn

from .save import save_checkpoint


def push_to_hub(model: nn.Module, repo_id: str, tokenizer=None, metrics: dict | None = None,
                base_model: str | None = None, *, private: bool | None = None, token: str | None = None,
                commit_message: str | None = None, revision: str | None = None, create_pr: bool = False,
                max_shard_size=None):
    """Upload `model` to the Hub repository `repo_id` (created if needed) as a VGA checkpoint with its
    model card; returns huggingface_hub's commit info. Needs network access and a write token."""
    import huggingface_hub

    with tempfile.TemporaryDirectory(prefix="vga_hf-push-") as tmp:
        folder = save_checkpoint(model, Path(tmp) / "checkpoint", tokenizer=tokenizer, metrics=metrics,
                                 base_model=base_model, max_shard_size=max_shard_size)
        api = huggingface_hub.HfApi(token=token)
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(repo_id=getattr(repo, "repo_id", repo_id), folder_path=str(folder),
                                 repo_type="model", revision=revision, create_pr=create_pr,
                                 commit_message=commit_message or "Upload VGA checkpoint (vga_hf)")
