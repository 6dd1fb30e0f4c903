"""Module views: the modular cores' trace hook, modules.png from `evaluate` of a BRIMs run (none for LSTM), and the
video's module panel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from brims_rl.evaluation import module_views
from brims_rl.cli import main
from brims_rl.cores import make_core
from brims_rl.evaluation.module_views import LAYER_COLORS, ModulePanel

IN = 10
SMALL = dict(num_modules=5, top_k=3, module_size=8, input_key_size=8, input_value_size=8, comm_key_size=4,
             comm_value_size=4)
MEMORY = "brims_rl.environments.memory:CueMemory-v0"
TINY = ["--num-envs", "2", "--total-steps", "128", "--set", "ppo.num_steps=32", "--set", "ppo.num_minibatches=2",
        "--set", "ppo.update_epochs=1"]
EAGER = ["--set", "core.options.compile=false"]


def split_layers(core, state):
    out, i = [], 0
    for layer in core.layers:
        width = 2 if layer.cell == "lstm" else 1
        out.append(state[i : i + width])
        i += width
    return out


# ---- the hook --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rims", "brims"])
def test_trace_records_exactly_the_modules_that_stepped_and_agrees_with_diagnostics(name):
    torch.manual_seed(0)
    core = make_core(name, IN, **SMALL)
    B, T = 4, 6
    x, starts = torch.randn(T, B, IN), torch.zeros(T, B, dtype=torch.bool)
    starts[3, 1] = True
    state = tuple(torch.randn_like(s) for s in core.initial_state(B))
    with torch.no_grad():
        y_plain, _ = core(x, state, starts)
        core.diagnostics()  # clear
        core.trace_modules()
        y, _ = core(x, state, starts)
        trace = core.module_trace()
        stats = core.diagnostics()
    torch.testing.assert_close(y, y_plain, rtol=0, atol=0)  # tracing changes nothing
    assert len(trace) == len(core.layers)
    for l, (layer, record) in enumerate(zip(core.layers, trace)):
        active = record["active"]
        assert active.shape == (T, B, layer.num_modules) and active.dtype == torch.bool
        assert (active.sum(-1) == layer.top_k).all()
        for k in range(layer.num_modules):
            assert stats[f"layer{l}/module{k}_active"] == pytest.approx(active[..., k].float().mean().item())
        if name == "brims" and l == 0:
            share = record["to_higher"]
            assert share.shape == (T, B, layer.num_modules) and ((share >= 0) & (share <= 1)).all()
            assert stats["layer0/attention_to_higher"] == pytest.approx(share.mean().item(), rel=1e-5)
        else:
            assert record["to_higher"] is None
    # step by step: a traced-inactive module keeps h exactly, a traced-active one moves
    with torch.no_grad():
        s = state
        for t in range(T):
            _, new = core(x[t : t + 1], s, starts[t : t + 1])
            step = core.module_trace()
            for l, (before, after) in enumerate(zip(split_layers(core, s), split_layers(core, new))):
                if t == 3:  # row 1 was reset: compare from zeros
                    before = tuple(torch.where(starts[t].view(-1, 1, 1), torch.zeros_like(b), b) for b in before)
                moved = (after[0] != before[0]).any(-1)  # [B, n]
                assert torch.equal(moved, step[l]["active"][0])
            s = new
    assert core.module_trace()[0]["active"].shape[0] == 0  # read and cleared
    core.trace_modules(False)
    with pytest.raises(RuntimeError, match="trace_modules"):
        core.module_trace()


def test_trace_is_empty_while_training():
    core = make_core("brims", IN, **SMALL)
    core.trace_modules()
    y, _ = core(torch.randn(3, 2, IN), core.initial_state(2), torch.zeros(3, 2, dtype=torch.bool))
    y.sum().backward()  # grad enabled: the PPO update's replay, not acting
    assert all(record["active"].shape[0] == 0 for record in core.module_trace())


def test_lstm_gru_and_ff_have_no_module_trace():
    for name in ("lstm", "gru", "ff"):
        assert module_views.FirstGameTrace.for_core(make_core(name, IN)) is None


# ---- the panel -------------------------------------------------------------------------------------------------
def test_panel_lights_the_active_squares_of_every_layer():
    panel = ModulePanel([6, 4])
    dark = panel.render(210, None)
    assert dark.shape == (210, ModulePanel.WIDTH, 3) and dark.dtype == np.uint8
    masks = [np.array([1, 0, 1, 1, 0, 1], bool), np.array([0, 1, 1, 0], bool)]
    lit = panel.render(210, masks)
    for l, mask in enumerate(masks):
        colour = (lit == np.array(LAYER_COLORS[l], np.uint8)).all(-1)
        assert not (dark == np.array(LAYER_COLORS[l], np.uint8)).all(-1).any()
        _, boxes = panel._layout(210)
        for on, (top, left, size) in zip(mask, boxes[l]):
            assert colour[top : top + size, left : left + size].all() == on
        assert colour.sum() == mask.sum() * boxes[l][0][2] ** 2
    many = ModulePanel([32, 32, 32]).render(120, [np.ones(32, bool)] * 3)  # squares shrink to fit
    assert many.shape == (120, ModulePanel.WIDTH, 3)


# ---- through evaluate ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("views")
    made = {}
    for core in ("brims", "lstm"):
        made[core] = root / core
        extra = EAGER if core == "brims" else []
        assert main(["train", "--env", MEMORY, "--core", core, "--run-dir", str(made[core]), *TINY, *extra]) == 0
    made["breakout"] = root / "breakout"
    assert main(["train", "--env", "Breakout", "--core", "brims", "--run-dir", str(made["breakout"]), *TINY,
                 *EAGER]) == 0
    return made


def test_evaluate_writes_modules_png_for_brims_and_none_for_lstm(runs, monkeypatch, capsys):
    seen = {}
    real = module_views.plot_modules

    def spy(active, to_higher, path, title):
        seen.update(active=active, to_higher=to_higher)
        real(active, to_higher, path, title)

    monkeypatch.setattr(module_views, "plot_modules", spy)
    assert main(["evaluate", str(runs["brims"]), "--episodes", "3", "--num-envs", "2", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    png = runs["brims"] / "modules.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {png}" in out
    record = json.loads((runs["brims"] / "eval.json").read_text())
    first_game = record["lengths"][0]  # episode 1 = env 0's first game
    config = json.loads((runs["brims"] / "config.json").read_text())["core"]["options"]
    assert len(seen["active"]) == 2  # two layers
    for active in seen["active"]:
        assert active.shape[0] == first_game
        assert (active.sum(1) == config.get("top_k", 4)).all()
    assert seen["to_higher"][0].shape == seen["active"][0].shape and seen["to_higher"][1] is None

    assert main(["evaluate", str(runs["lstm"]), "--episodes", "2", "--num-envs", "2"]) == 0
    assert "modules.png" not in capsys.readouterr().out
    assert not (runs["lstm"] / "modules.png").exists()


def test_video_of_a_brims_run_is_wider_than_the_game_with_the_module_panel(runs, tmp_path, capsys):
    import imageio

    video = tmp_path / "brims.mp4"
    assert main(["evaluate", str(runs["breakout"]), "--episodes", "1", "--num-envs", "1", "--seed", "2",
                 "--video", str(video), "--max-episode-steps", "20"]) == 0
    reader = imageio.get_reader(video, format="FFMPEG")
    frames = [frame for frame in reader]
    reader.close()
    assert len(frames) == 21
    assert all(frame.shape == (210, 160 + ModulePanel.WIDTH, 3) for frame in frames)
    panel_before, panel_after = frames[0][:, 160:].astype(int), frames[5][:, 160:].astype(int)
    assert np.abs(panel_after - panel_before).max() > 100  # squares lit after the first step, none before
    assert (runs["breakout"] / "modules.png").is_file()
