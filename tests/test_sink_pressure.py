"""Issue 7 recipe options: sink_penalty and distill combine with every training mode, --no-vga included."""

from __future__ import annotations

import json

import pytest

from test_retrofit import assets, base_args, recipe, run  # noqa: F401  (fixture + helpers)


@pytest.mark.parametrize("mode,vga", [("gates", True), ("gates+lora", True), ("gates+lora", False),
                                      ("full", True), ("full", False)])
def test_sink_penalty_and_distill_in_every_mode(assets, tmp_path, mode, vga):  # noqa: F811
    out = tmp_path / "run"
    argv = base_args(assets, out, mode=mode, sink_penalty=1.0, distill=1.0, max_steps=2, eval_every=0,
                     run_diagnostics=False)
    if not vga:
        argv.append("--no-vga")
    assert run(argv) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss/lm" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(0 < r["loss/sink"] <= 1 for r in steps)
    assert steps[0]["loss/distill"] == 0.0  # the student equals its teacher at step 0
    if mode != "gates" or vga:
        assert steps[1]["loss/distill"] > 0  # ... and no longer after one update


@pytest.mark.parametrize("extra,match", [
    (dict(sink_penalty=-1.0), "sink_penalty must be >= 0"),
    (dict(distill=-0.5), "distill must be >= 0"),
    (dict(sink_penalty=1.0, gradient_checkpointing=True), "gradient_checkpointing=false"),
])
def test_bad_loss_options_are_refused(assets, tmp_path, extra, match, capsys):  # noqa: F811
    assert run(base_args(assets, tmp_path / "run", **extra)) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_options_are_documented():
    help_text = recipe.build_parser().format_help()
    assert "--sink-penalty" in help_text and "--distill" in help_text and "KL(original" in help_text


def test_flags_and_key_values_mix_in_any_order():
    cfg = recipe.parse_config(["max_steps=3", "--no-vga", "sink_penalty=1.5", "distill=2", "mode=full"])
    assert (cfg.vga, cfg.sink_penalty, cfg.distill, cfg.max_steps, cfg.mode) == (False, 1.5, 2.0, 3, "full")
