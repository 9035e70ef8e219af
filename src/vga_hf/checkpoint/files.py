"""Checks on the files of a checkpoint folder, before transformers reads them (bundled into the
self-contained `modeling_vga.py` too, so it may import only the standard library and safetensors)."""

from __future__ import annotations

import json
import os

SAFETENSORS_INDEX = "model.safetensors.index.json"


def check_safetensors_folder(folder: str | os.PathLike) -> list[str]:
    """Open the header of every `*.safetensors` file of `folder` (and the shards its index names);
    raise a ValueError naming the file when one is missing, corrupt or truncated. Returns the files."""
    folder = os.fspath(folder)
    names = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
    index = os.path.join(folder, SAFETENSORS_INDEX)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{index} is not a valid safetensors index ({err}); the checkpoint is damaged: "
                             "save it again or download it again.") from None
        absent = [s for s in shards if s not in names]
        if absent:
            raise ValueError(f"{folder} is incomplete: its index names the shard(s) {absent}, which are missing. "
                             "Copy or download the whole folder again.")
    for name in names:
        check_safetensors_file(os.path.join(folder, name))
    return names


def check_safetensors_file(path: str | os.PathLike) -> None:
    """Raise a ValueError that names `path` if it is not a complete safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            f.keys()
    except Exception as err:  # SafetensorError (a Rust exception type), OSError
        raise ValueError(
            f"{path} is not a readable safetensors file ({err}). It is corrupt or truncated (an interrupted "
            "save, copy or download?): save the checkpoint again, or copy/download it again."
        ) from None
