"""Agent presets have the documented sizes: option values, module shapes and core parameter counts.

Parameter counts are computed here from the published sizes with the textbook formulas (torch's GRU/LSTM; the
modular layer's projections as README.md describes them), independently of the core's code.
"""

from __future__ import annotations

import pytest

from brims_rl.cores import make_core
from brims_rl.presets import load_preset, preset_dir, preset_names

ENCODER = 512  # Nature CNN features: the core's input

# The authors' public Atari RIMs (anirudh9119/RIMs blocks_atari): 6 x 85 GRU modules, 4 active, input attention
# 1 head (key 64, value 4 x 85 = 340), communication 4 heads of key 32 and value 32 each.
PAPER_RIMS = dict(num_modules=6, top_k=4, module_size=85, cell="gru", heads=1, input_key_size=64,
                  input_value_size=340, communication=True, comm_heads=4, comm_key_size=32, comm_value_size=32)


def rnn_parameters(gates: int, inputs: int, hidden: int) -> int:
    """torch.nn.LSTM (4 gates) / GRU (3 gates), one layer: W_ih, W_hh, b_ih, b_hh."""
    return gates * (inputs * hidden + hidden * hidden + 2 * hidden)


def modular_layer_parameters(lower: int, higher: int, n: int, H: int, cell: str, heads: int, key: int, value: int,
                             comm_heads: int, comm_key: int, comm_value: int) -> int:
    gates = {"lstm": 4, "gru": 3}[cell] * H
    slot = heads * (key + value)
    attention = (lower + higher) * slot + n * (H + 1) * heads * key  # shared key/value maps, per-module queries
    cell_weights = n * (heads * value * gates + H * gates + gates) + (n * gates if cell == "gru" else 0)
    width = comm_heads * (2 * comm_key + comm_value) + H  # per-module query, key, value and gate of h
    communication = n * ((H + 1) * width + comm_heads * comm_value * H)
    return attention + cell_weights + communication


def paper_layer(lower: int, higher: int = 0) -> int:
    o = PAPER_RIMS
    return modular_layer_parameters(lower, higher, o["num_modules"], o["module_size"], o["cell"], o["heads"],
                                    o["input_key_size"], o["input_value_size"], o["comm_heads"],
                                    o["comm_key_size"], o["comm_value_size"])


def build(name: str, **extra):
    preset = load_preset("agent", name)
    return preset, make_core(preset["core"]["name"], ENCODER, **{**preset["core"]["options"], **extra})


def core_parameters(core) -> int:
    return sum(p.numel() for p in core.parameters())


def test_rims_paper_has_the_published_sizes():
    preset, core = build("rims-paper")
    assert preset["core"]["name"] == "rims"
    assert {k: preset["core"]["options"][k] for k in PAPER_RIMS} == PAPER_RIMS
    assert [s.shape for s in core.initial_state(2)] == [(2, 6, 85)]  # GRU: h only
    assert core.output_size == 510
    assert core_parameters(core) == paper_layer(ENCODER) == 1_200_466


@pytest.mark.parametrize("slots,higher", [("modules", 85), ("layer", 6 * 85)])
def test_brims_paper_is_two_rims_paper_layers(slots, higher):
    preset, core = build("brims-paper", top_down_slots=slots)
    options = preset["core"]["options"]
    assert preset["core"]["name"] == "brims" and options["num_layers"] == 2 and options["top_down"] is True
    assert {k: options[k] for k in PAPER_RIMS} == PAPER_RIMS
    assert [s.shape for s in core.initial_state(2)] == [(2, 6, 85), (2, 6, 85)]
    assert core.output_size == 2 * 510
    # layer 0 reads the CNN features and (top-down) layer 1; layer 1 reads layer 0's modules (85 each)
    assert core_parameters(core) == paper_layer(ENCODER, higher) + paper_layer(85)


@pytest.mark.parametrize("name,kind,hidden", [("gru-512", "gru", 512), ("lstm-512", "lstm", 512),
                                              ("lstm", "lstm", 128), ("gru", "gru", 128)])
def test_recurrent_baselines(name, kind, hidden):
    preset, core = build(name)
    assert preset["core"] == {"name": kind, "options": {"hidden_size": hidden}}
    assert core.output_size == hidden
    assert core_parameters(core) == rnn_parameters(4 if kind == "lstm" else 3, ENCODER, hidden)


def test_every_shipped_preset_says_where_its_sizes_come_from():
    for name in preset_names("agent"):
        text = (preset_dir("agent") / f"{name}.toml").read_text()
        assert text.startswith("#"), f"{name}.toml starts without a comment on its sizes"
        assert "description = " in text
    lstm = (preset_dir("agent") / "lstm.toml").read_text()
    assert "ppo_atari_lstm defaults" not in lstm  # it stacks frames, CleanRL's LSTM does not
    assert "our choice" in (preset_dir("agent") / "brims-paper.toml").read_text().lower()
