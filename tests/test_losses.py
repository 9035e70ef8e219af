"""Sink penalty and distillation (issue 7)."""

import copy

import pytest
import torch

import vga_hf
from vga_hf.testing import tiny_model
from vga_hf.training.losses import SinkPenalty, distillation_loss, sink_score

T = 16


def _causal(probs):
    return probs.tril() / probs.tril().sum(-1, keepdim=True)


@pytest.mark.parametrize("pattern,low,high", [
    ("all_on_first", 0.95, 1.0),      # every query parks on key 0: a sink
    ("all_on_key_3", 0.95, 1.0),      # a sink elsewhere counts too
    ("copy_previous", 0.0, 0.2),      # sharp, but a different key per query: not a sink
    ("diagonal", 0.0, 0.2),           # attend to self
    ("uniform", 0.0, 0.4),            # spread out
])
def test_sink_score_table(pattern, low, high):
    probs = torch.zeros(1, 1, T, T)
    for i in range(T):
        if pattern == "all_on_first":
            probs[0, 0, i, 0] = 1
        elif pattern == "all_on_key_3":
            probs[0, 0, i, min(i, 3)] = 1
        elif pattern == "copy_previous":
            probs[0, 0, i, max(i - 1, 0)] = 1
        elif pattern == "diagonal":
            probs[0, 0, i, i] = 1
        else:
            probs[0, 0, i, : i + 1] = 1 / (i + 1)
    score = float(sink_score(probs))
    assert low <= score <= high, (pattern, score)


def test_sink_score_is_highest_when_all_queries_share_one_key():
    sharp_distinct = torch.eye(T)[None, None]
    one_key = torch.zeros(1, 1, T, T)
    one_key[..., 0] = 1
    assert float(sink_score(one_key)) > 3 * float(sink_score(sharp_distinct))


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_sink_penalty_gradient_reaches_query_and_key_projections(backend):
    model = vga_hf.patch_model(tiny_model("llama", attn_implementation=backend))
    x = torch.randint(3, 128, (2, T))
    penalty = SinkPenalty(model)
    with penalty.capture():
        model(x)
    value = penalty.value()
    assert 0 < float(value.detach()) <= 1
    value.backward()
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.weight.grad is not None and attn.q_proj.weight.grad.abs().sum() > 0
    assert attn.k_proj.weight.grad is not None and attn.k_proj.weight.grad.abs().sum() > 0
    assert model.config._attn_implementation == backend  # the backend is restored afterwards


def test_sink_penalty_leaves_the_forward_unchanged():
    model = tiny_model("llama", attn_implementation="sdpa")
    x = torch.randint(3, 128, (1, T))
    with torch.no_grad():
        ref = model(x).logits
        penalty = SinkPenalty(model)
        with penalty.capture():
            out = model(x).logits
    assert torch.equal(out, ref)


def test_sink_penalty_without_capture_is_an_error():
    with pytest.raises(RuntimeError, match="capture"):
        SinkPenalty(tiny_model("llama")).value()


def test_distillation_is_exactly_zero_for_a_freshly_patched_model():
    teacher = tiny_model("llama")
    student = vga_hf.patch_model(copy.deepcopy(teacher))
    x = torch.randint(3, 128, (2, T))
    with torch.no_grad():
        t = teacher(x).logits
    loss = distillation_loss(student(x).logits, t)
    assert float(loss) == 0.0
    with torch.no_grad():
        for p in vga_hf.gate_parameters(student):
            p.normal_(0, 0.5)
    moved = distillation_loss(student(x).logits, t)
    assert float(moved) > 0
    moved.backward()
    assert all(p.grad is not None for p in vga_hf.gate_parameters(student))


def test_distillation_matches_torch_kl_div():
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    ref = torch.nn.functional.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True,
                                     reduction="none").sum(-1).mean()
    torch.testing.assert_close(distillation_loss(s, t), ref)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float)
    full = torch.nn.functional.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(distillation_loss(s, t, mask), (full * mask).sum() / 3)
