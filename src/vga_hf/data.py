"""Text in, token blocks out: shared by the diagnostics and the recipes.

Sources (`read_text(source, split)`):
- None or "shakespeare": the default corpus (spec section 6). split "train" = every play but
  Hamlet, "eval" = Hamlet, "calib" = a different held-out play (for W8A8 calibration). Disjoint.
- a local `.txt`/`.md` file, or a folder of them (sorted, concatenated);
- a local `.jsonl`/`.json` file with a text column (`text_column`, default "text");
- "hf:NAME[:CONFIG][:SPLIT]": a Hugging Face dataset (online, or from the local datasets cache).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import assets

DEFAULT_SOURCE = "shakespeare"
CALIB_PLAY = "macbeth"  # held out of "train", disjoint from "eval" (Hamlet)
SPLITS = ("train", "eval", "calib")


def read_text(source: str | None = None, split: str = "eval", text_column: str = "text") -> str:
    """The text of `source` (see module docstring). Raises ValueError with the fix on bad input."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if source is None or source == DEFAULT_SOURCE:
        texts = assets.shakespeare_texts()
        if split == "eval":
            text = texts[assets.EVAL_PLAY]
        elif split == "calib":
            text = texts[CALIB_PLAY]
        else:
            text = "\n\n".join(t for k, t in texts.items() if k not in (assets.EVAL_PLAY, CALIB_PLAY))
    elif source.startswith("hf:"):
        text = _read_hf(source[3:], split, text_column)
    else:
        text = _read_local(Path(source), text_column)
    if not text.strip():
        raise ValueError(f"the data source {source!r} (split {split!r}) contains no text.")
    return text


def _read_local(path: Path, text_column: str) -> str:
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist (give a .txt/.jsonl file, a folder of "
                                "them, 'shakespeare', or hf:NAME[:CONFIG][:SPLIT]).")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".txt", ".md", ".jsonl", ".json"))
        if not files:
            raise ValueError(f"folder {path} has no .txt/.md/.jsonl/.json files.")
        return "\n\n".join(_read_local(p, text_column) for p in files)
    if path.suffix in (".jsonl", ".json"):
        rows = _json_rows(path)
        return "\n\n".join(_column(rows, text_column, str(path)))
    return path.read_text(encoding="utf-8", errors="replace")


def _json_rows(path: Path) -> list[dict]:
    raw = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
        else:
            rows = json.loads(raw)
            rows = rows if isinstance(rows, list) else rows.get("data", [rows])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON{' lines' if path.suffix == '.jsonl' else ''}: {err}") from err
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: every record must be a JSON object with a text field.")
    return rows


def _column(rows: list[dict], column: str, where: str) -> list[str]:
    if not rows:
        raise ValueError(f"{where} has no records.")
    if column not in rows[0]:
        raise ValueError(f"{where} has no text column {column!r}; its columns are {sorted(rows[0])}. "
                         "Pass text_column=<name> (recipe: text_column=<name>).")
    return [str(r[column]) for r in rows if r.get(column)]


def _read_hf(spec: str, split: str, text_column: str) -> str:
    import datasets

    parts = spec.split(":")
    name, config = parts[0], (parts[1] or None) if len(parts) > 1 else None
    hf_split = parts[2] if len(parts) > 2 else {"train": "train", "eval": "validation", "calib": "train"}[split]
    try:
        ds = datasets.load_dataset(name, config, split=hf_split)
    except Exception as err:  # offline, unknown name, missing split
        raise ValueError(f"could not load HF dataset {name!r} (config {config!r}, split {hf_split!r}): {err}. "
                         "Without internet use a local .txt/.jsonl file or the default 'shakespeare'.") from err
    if text_column not in ds.column_names:
        raise ValueError(f"HF dataset {name!r} has no text column {text_column!r}; its columns are "
                         f"{ds.column_names}. Pass text_column=<name>.")
    return "\n\n".join(t for t in ds[text_column] if t)


def tokenize(tokenizer, text: str, add_bos: bool = True) -> torch.Tensor:
    """1-D LongTensor of token ids for `text` (one BOS at the start when the tokenizer has one)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    if add_bos and bos is not None:
        ids = [bos] + ids
    return torch.tensor(ids, dtype=torch.long)


def pack_blocks(ids: torch.Tensor, block_len: int, max_blocks: int | None = None) -> torch.Tensor:
    """[N] -> [n_blocks, block_len] consecutive non-overlapping blocks (the tail is dropped)."""
    if block_len < 2:
        raise ValueError(f"block_len must be >= 2, got {block_len}.")
    n = ids.numel() // block_len
    if n == 0:
        raise ValueError(f"the text has {ids.numel()} tokens, fewer than one block of {block_len}.")
    if max_blocks is not None:
        n = min(n, max_blocks)
    return ids[: n * block_len].view(n, block_len)


def strided_windows(ids: torch.Tensor, window: int, stride: int, max_windows: int | None = None):
    """Perplexity windows (HF's strided evaluation): yields (input_ids [window'], n_context) where the
    first `n_context` targets were already scored by the previous window and must be ignored."""
    if not 0 < stride <= window:
        raise ValueError(f"need 0 < stride <= window, got window={window}, stride={stride}.")
    count, prev_end = 0, 0
    for begin in range(0, max(ids.numel() - 1, 1), stride):
        end = min(begin + window, ids.numel())
        yield ids[begin:end], max(prev_end - begin, 0)
        prev_end = end
        count += 1
        if end == ids.numel() or (max_windows is not None and count >= max_windows):
            return


def read_splits(source: str | None = None, text_column: str = "text", eval_source: str | None = None,
                holdout_fraction: float = 0.05) -> dict[str, str]:
    """{"train", "eval", "calib"} texts of `source` for training, with "eval" disjoint from "train".

    Shakespeare and hf: sources have their own splits (`read_text`). A local file or folder has one
    text: its last `holdout_fraction` becomes "eval", the same amount before it "calib", the rest
    "train" (cuts at line ends). `eval_source`, when given, is read whole for "eval" and "calib" is
    taken from it the same way (its first part for calibration, the rest for evaluation).
    """
    if not 0 < holdout_fraction < 0.5:
        raise ValueError(f"holdout_fraction must be in (0, 0.5), got {holdout_fraction}.")
    local = source not in (None, DEFAULT_SOURCE) and not str(source).startswith("hf:")
    if local:
        text = read_text(source, "train", text_column)
        a, b = _cut(text, 1 - 2 * holdout_fraction), _cut(text, 1 - holdout_fraction)
        out = {"train": text[:a], "calib": text[a:b], "eval": text[b:]}
    else:
        out = {split: read_text(source, split, text_column) for split in SPLITS}
    if eval_source is not None:
        held = read_text(eval_source, "eval", text_column)
        cut = _cut(held, 0.5)
        out["calib"], out["eval"] = held[:cut], held[cut:]
    for split, text in out.items():
        if not text.strip():
            raise ValueError(f"the data source {source!r} is too short to hold out a non-empty {split!r} part; "
                             "give more text or a separate eval_data source.")
    return out


def _cut(text: str, fraction: float) -> int:
    """Index near `fraction` of `text`, moved to just after the next newline when there is one."""
    pos = int(len(text) * fraction)
    nl = text.find("\n", pos)
    return nl + 1 if nl != -1 and nl + 1 < len(text) else pos


def block_order(n_blocks: int, seed: int, start: int, count: int) -> list[int]:
    """Indices of blocks number `start` .. `start + count - 1` of an endless stream that visits all
    `n_blocks` blocks once per epoch, in a fresh random order per epoch (seeded by `seed` and the
    epoch). A pure function of its arguments: a resumed run gets exactly the same data order."""
    if n_blocks < 1:
        raise ValueError("no blocks to train on.")
    out, cache = [], {}
    for pos in range(start, start + count):
        epoch, i = divmod(pos, n_blocks)
        if epoch not in cache:
            gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch)
            cache[epoch] = torch.randperm(n_blocks, generator=gen).tolist()
        out.append(cache[epoch][i])
    return out
