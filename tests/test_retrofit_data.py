"""Data pieces the retrofit recipe relies on: disjoint held-out text, a resumable block order, and the
shared training helpers (param groups, lr schedule, summary table)."""

import pytest
import torch

import vga_hf
from vga_hf import data, training
from vga_hf.testing import tiny_model


def test_read_splits_of_a_local_file_are_disjoint(tmp_path):
    lines = [f"line {i} of the corpus" for i in range(1000)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    parts = data.read_splits(str(path), holdout_fraction=0.05)
    assert parts["train"] + parts["calib"] + parts["eval"] == path.read_text()
    seen = [set(parts[k].splitlines()) for k in ("train", "calib", "eval")]
    assert not (seen[0] & seen[2]) and not (seen[1] & seen[2]) and not (seen[0] & seen[1])
    assert 30 < len(seen[2]) < 70


def test_read_splits_with_separate_eval_source(tmp_path):
    (tmp_path / "a.txt").write_text("train text\n" * 100)
    (tmp_path / "b.txt").write_text("".join(f"held {i}\n" for i in range(100)))
    parts = data.read_splits(str(tmp_path / "a.txt"), eval_source=str(tmp_path / "b.txt"))
    assert "held" not in parts["train"] and "held 99" in parts["eval"] and "held 0" in parts["calib"]


def test_block_order_is_a_pure_function_visiting_every_block_per_epoch():
    n = 10
    whole = data.block_order(n, seed=3, start=0, count=3 * n)
    for epoch in range(3):
        assert sorted(whole[epoch * n:(epoch + 1) * n]) == list(range(n))
    assert whole[:n] != whole[n:2 * n]  # a fresh order per epoch
    # any window of the stream is the same when asked for on its own (exact resume)
    assert data.block_order(n, seed=3, start=7, count=9) == whole[7:16]
    assert data.block_order(n, seed=4, start=0, count=n) != whole[:n]


def test_param_groups_give_gates_their_own_lr():
    model = vga_hf.patch_model(tiny_model("llama"))
    training.setup_trainable(model, "full")
    groups = {g["name"]: g for g in training.optimizer_param_groups(model, lr=1e-5, gate_lr=1e-3, weight_decay=0.1)}
    assert groups["gates"]["lr"] == 1e-3 and groups["gates"]["weight_decay"] == 0.0
    assert groups["decay"]["lr"] == 1e-5 and groups["decay"]["weight_decay"] == 0.1
    assert groups["no_decay"]["weight_decay"] == 0.0
    n_gate = sum(p.numel() for p in vga_hf.gate_parameters(model))
    assert sum(p.numel() for p in groups["gates"]["params"]) == n_gate


def test_setup_trainable_modes():
    model = vga_hf.patch_model(tiny_model("llama"))
    training.setup_trainable(model, "gates")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n, _ in vga_hf.gate_named_parameters(model)}
    peft_model = training.setup_trainable(vga_hf.patch_model(tiny_model("llama")), "gates+lora")
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in names) and any(".vga_gate." in n for n in names)
    assert all("lora_" in n or ".vga_gate." in n for n in names)
    with pytest.raises(ValueError, match="nothing to train"):
        training.setup_trainable(tiny_model("llama"), "gates", vga=False)


def test_lr_multiplier_and_summary_table():
    assert [training.lr_multiplier(s, 4, 10) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert training.lr_multiplier(9, 0, 10, "linear") == pytest.approx(0.1)
    assert training.lr_multiplier(10, 0, 10, "cosine") == pytest.approx(0.0)
    table = training.summary_table({"before": {"ppl": 10.0, "x": 1}, "after": {"ppl": 8.0}})
    assert "| ppl | 10 | 8 | -2 |" in table and "| x | 1 | - |  |" in table


def test_gate_stats_identity_then_moved():
    model = vga_hf.patch_model(tiny_model("llama"))
    blocks = [torch.randint(3, 100, (2, 16))]
    stats = training.gate_stats(model, blocks)
    assert stats["gate_mean_abs_shift"] == 0 and stats["gate_mean_first_token"] == 1.0
    with torch.no_grad():
        for gate in vga_hf.get_gates(model).values():
            gate.bias.fill_(1.0)
    moved = training.gate_stats(model, blocks)
    assert moved["gate_max_abs_shift"] == pytest.approx(2 * torch.sigmoid(torch.tensor(1.0)).item() - 1, rel=1e-5)
    assert training.gate_stats(tiny_model("llama")) == {}
