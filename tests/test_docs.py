"""Docs that cannot rot: README.md and docs/*.md are checked against the code they describe.

(a) every relative link resolves to a file or folder of the repository;
(b) every `brims-rl ...` (or `python -m brims_rl ...`) command in a ```bash block parses with today's CLI;
(c) every field of Config and of its nested dataclasses is named in docs/configuration.md;
(d) the README's ```python block and the Python API example of docs/getting-started.md run (on the memory task,
    shortened: see SNIPPETS), with br.evaluate and a callback that stops training;
(e) every repository path named in backticks (`brims_rl/...`, `tests/...py`, `scripts/...`, ...) exists, and every
    `tests/FILE.py::test_name` names a test function of that file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
PAGE_IDS = [str(p.relative_to(ROOT)) for p in PAGES]

# (d): the pages whose ```python block runs, the block's index, and its strings the test replaces (a shorter run, a
# folder in tmp_path (None), a threshold every return passes); keep these strings in the blocks (or change them here).
SNIPPETS = {
    "README.md": (0, {"total_steps=20_000": "total_steps=2_048", '"runs/quickstart"': None}),
    "docs/getting-started.md": (0, {"total_steps=20_000": "total_steps=2_048", "= 30_000": "= 3_072",
                                    '"runs/api-quickstart"': None, "> 0.9": "> -2.0"}),
}


def blocks(text: str, language: str) -> list[str]:
    """The bodies of the fenced code blocks of `language` (```bash ... ```)."""
    return re.findall(rf"^```{language}[ \t]*\n(.*?)^```", text, flags=re.S | re.M)


def without_code(text: str) -> str:
    """The text with fenced blocks removed (links and paths in code blocks are examples, not references)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


# ---- (a) links ---------------------------------------------------------------------------------------------------
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    anchors = set()
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t]*$", without_code(markdown), flags=re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


def test_heading_anchors_follow_githubs_rule():
    text = "# Results\n## POPGym memory suite on CPU\n### Agent presets (`agents/*.toml`)\n```\n# not a heading\n```\n"
    assert heading_anchors(text) == {"results", "popgym-memory-suite-on-cpu", "agent-presets-agentstoml"}


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(without_code(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http(s), mailto
            continue
        path, _, anchor = target.partition("#")
        linked = page.parent / path if path else page
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text()):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to missing files or headings: {broken}"


def test_docs_pages_exist_and_are_linked_from_the_readme():
    expected = {"getting-started", "configuration", "cores", "ppo", "evaluate-compare", "results", "failures",
                "development", "design"}
    assert expected <= {p.stem for p in DOCS}
    readme = (ROOT / "README.md").read_text()
    assert not [name for name in expected if f"(docs/{name}.md" not in readme]


# ---- (b) commands ------------------------------------------------------------------------------------------------
def commands(text: str) -> list[str]:
    """The `brims-rl` command lines of a page's ```bash blocks (continuations joined), as argument strings."""
    found = []
    for block in blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            try:
                words = shlex.split(line, comments=True)
            except ValueError as exc:
                raise AssertionError(f"cannot split {line!r}: {exc}") from None
            while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):  # VAR=value prefixes
                words = words[1:]
            for i, word in enumerate(words):
                if word == "brims-rl" and i == 0:
                    found.append(words[1:])
                    break
                if word == "brims_rl" and i > 0 and words[i - 1] == "-m":  # python -m / torchrun -m
                    found.append(words[i + 1:])
                    break
    return [" ".join(shlex.quote(w) for w in args) for args in found]


def placeholders(args: list[str], tmp: Path) -> list[str]:
    """Dummy values for placeholders such as runs/<run>, RUN_DIR or `...`."""
    out = []
    for word in args:
        if word in ("...", "…"):
            continue
        if "<" in word or re.fullmatch(r"[A-Z][A-Z_]*(\.\w+)?", word) or word.endswith("..."):
            word = str(tmp / "run")
        out.append(word)
    return out


def build_parser():
    from brims_rl import cli

    for name in ("build_parser", "make_parser", "parser"):
        factory = getattr(cli, name, None)
        if callable(factory):
            return factory()
    raise AssertionError("brims_rl.cli has no function returning the top-level argparse parser")


ALL_COMMANDS = [(page, line) for page in PAGES for line in commands(page.read_text())]


def test_the_readme_and_docs_show_commands():
    assert len(ALL_COMMANDS) >= 10
    first = blocks((ROOT / "README.md").read_text(), "bash")[0]
    assert first.splitlines()[:3] == [
        "python3 -m venv .venv && . .venv/bin/activate",
        'pip install torch==2.13.0 -e ".[dev]"   # set-up (CPU torch wheel; on a GPU machine: pip install -e ".[dev]")',
        "python -m pytest                        # tests",
    ]
    assert (ROOT / "README.md").read_text().lstrip().startswith("# brims-rl\n\n```bash\n")


@pytest.mark.parametrize("page,line", ALL_COMMANDS,
                         ids=[f"{p.relative_to(ROOT)}:{line[:60]}" for p, line in ALL_COMMANDS])
def test_commands_parse_with_todays_cli(page, line, tmp_path, capsys):
    args = placeholders(shlex.split(line), tmp_path)
    try:
        namespace = build_parser().parse_args(args)
    except SystemExit as exc:
        err = capsys.readouterr().err.strip()
        raise AssertionError(f"{page.relative_to(ROOT)}: `brims-rl {line}` does not parse: {err} (exit {exc.code})")
    assert namespace.command == args[0]


# ---- (c) configuration -------------------------------------------------------------------------------------------
def config_names() -> list[str]:
    from brims_rl.config import Config

    names = []
    for f in dataclasses.fields(Config):
        default = getattr(Config(), f.name)
        if dataclasses.is_dataclass(default):
            names += [f"{f.name}.{sub.name}" for sub in dataclasses.fields(default)]
        else:
            names.append(f.name)
    return names


def test_every_config_field_is_documented():
    text = (ROOT / "docs" / "configuration.md").read_text()
    named = set(re.findall(r"`([A-Za-z_][\w.]*)`", text))
    missing = [name for name in config_names() if name not in named]
    assert not missing, f"docs/configuration.md does not name: {missing}"


# ---- (d) the Python snippets ---------------------------------------------------------------------------------------
def run_snippet(page: str, tmp_path: Path, check: str) -> str:
    """Run the page's shortened ```python block and then `check`; return its stdout."""
    index, markers = SNIPPETS[page]
    code = blocks((ROOT / page).read_text(), "python")[index]
    for marker, replacement in markers.items():
        assert marker in code, f"the snippet of {page} must contain {marker} (tests/test_docs.py shortens it)"
        code = code.replace(marker, replacement if replacement else repr(str(tmp_path / "run")))
    script = tmp_path / "snippet.py"
    script.write_text(code + textwrap.dedent(check))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"the snippet of {page} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_the_readme_has_one_python_snippet():
    assert len(blocks((ROOT / "README.md").read_text(), "python")) == 1


@pytest.mark.slow
def test_readme_python_snippet_runs(tmp_path):
    out = run_snippet("README.md", tmp_path, """
        assert result.step >= 2_048 and not result.stopped, result
        assert policy.action_space.n == 2 and state is not None
        print("snippet ok", result.step)
        """)
    assert "snippet ok" in out


@pytest.mark.slow
def test_the_python_api_example_stops_by_callback_resumes_and_evaluates(tmp_path):
    out = run_snippet("docs/getting-started.md", tmp_path, """
        assert result.step == 3_072 and not result.stopped and len(scores.scores) == 20
        print("snippet ok", result.step)
        """)
    assert "stopped early: True at step 1024" in out and "snippet ok 3072" in out


def test_the_data_flow_in_design_md_names_code_that_exists():
    """Each name docs/design.md gives a step of a training iteration (`module.function`, `Class.method`, a field) is
    defined in brims_rl/, so a reader finds the step under that name."""
    text = (ROOT / "docs" / "design.md").read_text()
    section = text[text.index("## One training iteration"):text.index("## Runs and checkpoints")]
    source = "\n".join(path.read_text() for path in (ROOT / "brims_rl").rglob("*.py"))
    names = [n for n in re.findall(r"`([A-Za-z_][\w.]*)`", section) if not re.search(r"\.(json|pt|toml|md)$", n)]
    assert len(names) >= 40
    missing = [n for n in names if not re.search(rf"^\s*(def|class) {n.rpartition('.')[2]}\b|"
                                                 rf"^\s*{n.rpartition('.')[2]}\s*[:=]", source, flags=re.M)]
    assert not missing, f"docs/design.md names steps the code does not define: {missing}"


# ---- (e) paths named in backticks --------------------------------------------------------------------------------
PATH = re.compile(r"`((?:brims_rl|tests|scripts|examples|agents|envs|docs)/[^`\s]*)`")


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_named_paths_exist(page):
    missing = []
    for text in PATH.findall(page.read_text()):
        path, _, test = text.partition("::")
        if any(c in path for c in "*<>{}"):  # a pattern such as agents/*.toml
            continue
        if not (ROOT / path).exists():
            missing.append(path)
        elif test and not re.search(rf"^\s*def {re.escape(test)}\(", (ROOT / path).read_text(), flags=re.M):
            missing.append(text)
    assert not missing, f"{page.relative_to(ROOT)} names paths or tests that do not exist: {missing}"


def test_code_and_tests_point_only_at_the_projects_own_docs():
    """The design lives in docs/: no module, test or script refers to a design file outside the repository or to a
    bare `design.md` (the project's own is docs/design.md)."""
    outside = re.compile(r"\.\./shared|(?<![\w/])design\.md")
    offenders = []
    for folder in ("brims_rl", "tests", "scripts"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".py", ".sh", ".toml") and path.resolve() != Path(__file__).resolve():
                offenders += [f"{path.relative_to(ROOT)}:{n}" for n, line in enumerate(path.read_text().splitlines(), 1)
                              if outside.search(line)]
    assert not offenders, f"point at docs/ instead: {offenders}"
