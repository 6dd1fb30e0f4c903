"""User cores: the registry, the contract checker (brims_rl.cores.contract) and `--core module:factory` from the CLI,
with the worked example docs/examples/my_core.py trained, resumed, evaluated and compared from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import brims_rl as br
import user_cores
from brims_rl import cores
from brims_rl.user_code import FactoryRegistry
from cli_refusal import refused

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
EXAMPLES = ROOT / "docs" / "examples"
TINY = ["--num-envs", "4", "--set", "ppo.num_steps=64", "--set", "ppo.num_minibatches=2", "--set",
        "ppo.update_epochs=2", "--set", "latest_every_s=0"]


# ---- the registry --------------------------------------------------------------------------------------------------
def test_register_core_adds_a_name_and_refuses_a_clash_unless_overwrite():
    br.register_core("elman-test", user_cores.Elman)
    assert "elman-test" in br.core_names() and br.core_names()[:5] == ["ff", "lstm", "gru", "rims", "brims"]
    core = br.make_core("elman-test", 6, hidden_size=4)
    assert isinstance(core, user_cores.Elman) and core.output_size == 4
    with pytest.raises(ValueError, match="already registered"):
        br.register_core("elman-test", user_cores.Elman)
    with pytest.raises(ValueError, match="already registered"):
        br.register_core("lstm", user_cores.Elman)
    br.register_core("elman-test", user_cores.IgnoresStarts, overwrite=True)
    with pytest.raises(br.UserError, match=r"core 'elman-test' breaks the core contract \(episode start: "):
        br.make_core("elman-test", 6)  # a registered core is checked whenever it is made


def test_a_registered_core_trains_through_the_config(tmp_path):
    br.register_core("elman-test", user_cores.Elman)
    config = br.make_config(core="elman-test", num_envs=2, total_steps=128,
                            overrides=["ppo.num_steps=64", "ppo.num_minibatches=2", "core.options.hidden_size=6"])
    result = br.train(config, tmp_path / "run")
    assert result.step == 128
    # recorded by the factory's importable name, so that another process rebuilds it
    assert json.loads((tmp_path / "run" / "config.json").read_text())["core"] == {
        "name": "user_cores:Elman", "options": {"hidden_size": 6}}


def test_an_agent_preset_may_name_a_user_core(tmp_path):
    preset = tmp_path / "elman.toml"
    preset.write_text('[core]\nname = "user_cores:elman"\noptions = { hidden_size = 5 }\n')
    config = br.make_config(agent=str(preset))
    assert (config.core.name, config.core.options) == ("user_cores:elman", {"hidden_size": 5})
    assert "user_cores:elman" in br.core_names()  # imported and registered under the full name
    assert br.make_core(config.core.name, 4, **config.core.options).output_size == 5


# ---- the contract checker ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ff", "lstm", "gru", "rims", "brims"])
def test_built_in_cores_keep_the_contract(name):
    br.check_core(br.make_core(name, 10), 10)


# One core per rule of check_core, each breaking only that rule (the cores: tests/user_cores.py).
BROKEN = [
    (user_cores.StringOutputSize, "output_size", "must be a positive int"),
    (user_cores.NonZeroInitialState, "initial state", "must be all zeros"),
    (user_cores.TimeFirstState, "initial state", "batch-first"),
    (user_cores.WrongOutputSize, "output shape", "y must be [T, B, output_size]"),
    (user_cores.SequenceDiffers, "sequence = steps", "one call over 5 steps differs from 5 one-step calls"),
    (user_cores.IgnoresStarts, "episode start", "differs from a fresh state"),
    (user_cores.ResetsEveryRow, "other rows", "changed other rows"),
    (user_cores.ResetsAfterReading, "reset before input", "the reset must apply before x[t] is read"),
    (user_cores.ResetLetsGradientThrough, "reset stops gradients", "reaches row 0's state from before the start"),
    (user_cores.StateInOtherDtype, "state device and dtype", "build the state in the parameters' dtype"),
    (user_cores.StateIgnoresDevice, "state device and dtype", "build the state on the device given"),
    (user_cores.StateChangesDtype, "state device and dtype", "comes back as torch.float64"),
]


@pytest.mark.parametrize("cls,rule,words", BROKEN, ids=[b[0].__name__ for b in BROKEN])
def test_each_broken_rule_is_named(cls, rule, words):
    with pytest.raises(br.CoreContractError) as raised:
        br.check_core(cls(5), 5)
    assert raised.value.rule == rule and str(raised.value).startswith(f"{rule}: ") and words in str(raised.value)


def test_the_tolerance_follows_the_float_type_not_a_constant():
    """A core that differs between a sequence and its steps by one float32 rounding passes in float32 and fails
    in float64, whose eps is 2**29 times smaller."""

    class Rounding(user_cores.Elman):
        def forward(self, x, state, episode_starts):
            y, new = super().forward(x, state, episode_starts)
            return (y * (1 + 2e-7) if x.shape[0] > 1 else y), new

    br.check_core(Rounding(5), 5)
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # weights, state and the checker's inputs in float64
    try:
        with pytest.raises(br.CoreContractError, match="sequence = steps"):
            br.check_core(Rounding(5), 5)
    finally:
        torch.set_default_dtype(dtype)


def test_the_example_core_keeps_the_contract():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import my_core
    finally:
        sys.path.remove(str(EXAMPLES))
    br.check_core(my_core.make_elman(7), 7)
    br.check_core(my_core.make_elman(7, hidden_size=3), 7, batch_size=4, steps=9)


# ---- --core module:factory -----------------------------------------------------------------------------------------
BAD_CORES = [
    ("nosuchmodule_xyz:make", "cannot import module 'nosuchmodule_xyz' for core 'nosuchmodule_xyz:make'"),
    ("user_cores:make_nothing", "module 'user_cores' has no attribute 'make_nothing'"),
    ("user_cores:make_ignores_starts", "core 'user_cores:make_ignores_starts' breaks the core contract "
                                       "(episode start: "),
    ("user_cores:make_not_a_module", "must return a torch.nn.Module"),
    ("user_cores:", "must have the form module:factory"),
    ("user_cores:make_fails_inside", "core 'user_cores:make_fails_inside' failed to build: TypeError: "),
]


@pytest.mark.parametrize("core,message", BAD_CORES, ids=[c for c, _ in BAD_CORES])
def test_a_bad_user_core_is_one_line_and_exit_2(core, message, tmp_path, capsys):
    run = tmp_path / "run"
    err = refused(["train", "--env", "CueMemory-v0", "--core", core, "--total-steps", "64", "--run-dir", str(run), *TINY],
                  run, capsys)
    assert message in err, err


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "brims_rl", *args], capture_output=True, text=True, timeout=600,
                            env=env, cwd=cwd)
    assert result.returncode == 0, f"brims-rl {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def test_the_example_core_trains_resumes_evaluates_and_compares_from_the_cli(tmp_path):
    out = tmp_path / "grid"
    run = out / "CueMemory-v0__my_core-make_elman__s1"  # the folder compare's grid gives this run
    cli("train", "--env", "CueMemory-v0", "--core", "my_core:make_elman", "--seed", "1", "--total-steps", "2048",
        "--run-dir", str(run), *TINY, "--set", "core.options.hidden_size=16")
    config = json.loads((run / "config.json").read_text())
    assert config["core"] == {"name": "my_core:make_elman", "options": {"hidden_size": 16}}

    cli("train", "--resume", str(run), "--total-steps", "3072")
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert state["global_step"] == 3072 and state["model"]["core.recurrent.weight"].shape == (16, 16)

    evaluated = cli("evaluate", str(run), "--episodes", "4", "--num-envs", "2")
    assert "core my_core:make_elman" in evaluated.stdout
    assert json.loads((run / "eval.json").read_text())["core"] == "my_core:make_elman"

    # compare's grid finds the run done (it resumes it to the same step), then reads and tabulates it
    compared = cli("compare", "--env", "CueMemory-v0", "--cores", "my_core:make_elman", "--seeds", "1",
                   "--total-steps", "3072", "--out", str(out), "--bootstrap-reps", "50")
    assert "my_core:make_elman" in compared.stdout and (out / "compare.csv").is_file()
    assert json.loads((run / "config.json").read_text())["total_steps"] == 3072
    cli("compare", str(run), "--out", str(tmp_path / "table"), "--bootstrap-reps", "50")
    assert "my_core:make_elman" in (tmp_path / "table" / "compare.md").read_text()



@pytest.mark.parametrize("core,options,message", [
    ("rims", ["core.options.foo=3"], "core 'rims' has no option 'foo'; its options are: num_modules, top_k, "),
    ("lstm", ["core.options.size=3", "core.options.layers=2"],
     "core 'lstm' has no options 'size', 'layers'; its options are: hidden_size, num_layers"),
    ("user_cores:Elman", ["core.options.width=3"], "core 'user_cores:Elman' has no option 'width'; its options are: "
                                                   "hidden_size"),
])
def test_an_option_a_core_does_not_take_is_named_with_those_it_does(core, options, message, tmp_path, capsys):
    run = tmp_path / "run"
    sets = [word for option in options for word in ("--set", option)]
    err = refused(["train", "--env", "CueMemory-v0", "--core", core, "--total-steps", "64", "--run-dir", str(run),
                   *TINY, *sets], run, capsys)
    assert message in err, err


def test_options_are_read_from_the_factorys_signature_whatever_its_form():
    registry = FactoryRegistry("core", {}, "factory(input_size, **options) -> nn.Module")
    registry.register("keyword_only", lambda input_size, *, width=3: None)
    registry.register("any_keywords", lambda input_size, **options: None)
    registry.register("positional_only", lambda *sizes: None)
    registry.register("no_signature", max)
    for name, options in [("keyword_only", {"width": 4}), ("keyword_only", {}), ("any_keywords", {"depth": 2}),
                          ("positional_only", {}), ("no_signature", {"key": 1})]:
        registry.check_options(name, options)  # they fit, or the signature cannot tell
    with pytest.raises(br.UserError, match="^core 'keyword_only' has no option 'depth'; its options are: width$"):
        registry.check_options("keyword_only", {"depth": 2, "width": 1})
    with pytest.raises(br.UserError, match="^core 'positional_only' has no option 'width'; it takes none$"):
        registry.check_options("positional_only", {"width": 1})
