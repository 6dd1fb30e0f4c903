"""Imports run one way: the import graph of brims_rl (module-level and function-level imports, and module names
given to importlib as strings) has no cycle, and every module imports only from its own layer or those below.

Layers, bottom first (docs/development.md draws the same picture):
    0  errors, atomic, user_code, progress            no brims_rl imports beyond this layer
    1  config, presets, distributed, runtime, tracking, run_folder   run_folder: the run folder's names
    2  cores/*                                        the core contract, registry, built-in cores, torch.compile
    3  environments/*
    4  action_heads, encoders, agent                  action distributions; encoders; encoder -> core -> heads
    5  policy_graph, minibatch_graph, rollout         the rollout (storage, collector) and the captured CUDA graphs
    6  ppo, learner, speedups                         GAE and the clipped update; its wrappers; acting's speed-ups
    7  configure, checkpoint, assembly                composing a Config; the checkpoint format; a run's parts
    8  trainer, policy, bench_shape, evaluation/{play,video,module_views}, compare/{runs,tables,...}
    9  api, train_cli, bench, evaluation/cli, compare/cli, compare/grid   the commands and the Python API
    10 brims_rl, evaluation, compare (packages), cli, __main__
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "brims_rl"

LAYERS = [
    ["errors", "atomic", "user_code", "progress"],
    ["config", "presets", "distributed", "runtime", "tracking", "run_folder"],
    ["cores", "cores.*"],
    ["environments", "environments.*"],
    ["action_heads", "encoders", "agent"],
    ["policy_graph", "minibatch_graph", "rollout"],
    ["ppo", "learner", "speedups"],
    ["configure", "checkpoint", "assembly"],
    ["trainer", "policy", "bench_shape", "evaluation.play", "evaluation.video", "evaluation.module_views", "compare.*"],
    ["api", "train_cli", "bench", "evaluation.cli", "compare.cli", "compare.grid"],
    ["", "evaluation", "compare", "cli", "__main__"],
]


def module_names() -> dict[str, Path]:
    """'brims_rl.x.y' -> file, packages by their __init__.py."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The brims_rl modules `name` imports anywhere in its file (`from pkg import sub` counts as importing sub)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    resource_args = {id(arg) for node in ast.walk(tree) if isinstance(node, ast.Call)
                     and getattr(node.func, "attr", None) == "files" for arg in node.args}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules \
                and "." in node.value and id(node) not in resource_args:  # not `python -m brims_rl`
            found.add(node.value)  # importlib.import_module("brims_rl.x"), cli.py's command table
    return {m for m in found if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def layer_of(name: str) -> int:
    short = name.removeprefix("brims_rl").removeprefix(".")
    for rank, patterns in enumerate(LAYERS):  # a module named exactly wins over a pattern
        if short in patterns:
            return rank
    for rank, patterns in enumerate(LAYERS):
        if any(p.endswith(".*") and short.startswith(p[:-1]) for p in patterns):
            return rank
    raise AssertionError(f"{name} has no layer in tests/test_imports.py: add it to LAYERS")


def test_the_graph_sees_function_level_and_string_imports():
    edges = graph()
    assert "brims_rl.cores.contract" in edges["brims_rl.cores"]
    assert "brims_rl.train_cli" in edges["brims_rl.cli"]  # by name, through importlib
    assert "brims_rl.evaluation.video" in edges["brims_rl.evaluation.cli"]  # imported inside a function
    assert "brims_rl.checkpoint" in edges["brims_rl.trainer"]  # `from brims_rl import checkpoint`


def test_no_module_imports_itself_through_others():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for child in sorted(edges[node]):
            if state.get(child) == 1:
                cycle = path[path.index(child):] + [child]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if child not in state:
                visit(child)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_every_module_imports_only_its_own_layer_or_lower():
    wrong = [f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
             for name, targets in graph().items() for target in sorted(targets) if layer_of(target) > layer_of(name)]
    assert not wrong, "\n".join(wrong)


def test_the_layers_that_matter_most():
    edges = graph()
    for name, targets in edges.items():
        if name.startswith("brims_rl.cores"):  # a core knows nothing of agents, PPO or training
            assert all(t.startswith("brims_rl.cores") or t in ("brims_rl.errors", "brims_rl.user_code")
                       for t in targets), (name, targets)
        if name == "brims_rl.ppo":
            assert not targets & {"brims_rl.trainer", "brims_rl.train_cli", "brims_rl.evaluation", "brims_rl.compare",
                                  "brims_rl.checkpoint", "brims_rl.api"}, targets
        commands = {"brims_rl.cli", "brims_rl.train_cli", "brims_rl.bench", "brims_rl.evaluation.cli",
                    "brims_rl.compare.cli"}
        if name not in ("brims_rl.cli", "brims_rl.__main__", "brims_rl.evaluation", "brims_rl.compare"):
            assert not targets & commands, f"{name} imports a command module: {targets & commands}"


def test_no_module_is_named_like_an_api_name():
    """Importing brims_rl.X sets the package attribute X, which would hide the API's br.X."""
    import brims_rl

    clashes = {name.rpartition(".")[2] for name in module_names()} & set(brims_rl.__all__)
    assert not clashes, clashes
