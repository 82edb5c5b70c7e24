"""The user docs stay true: README.md and docs/*.md against the code they describe.

* docs/options.md is what ``scripts/options_reference.py`` writes now, and names every option field;
* README.md is short, keeps the two set-up commands, and copies its result rows from the results page;
* every relative link (and its ``#anchor``) in README.md and the docs pages resolves;
* every flow name and every top-level config key is documented;
* the YAML examples are valid configs, the ``flowrl`` command lines parse and validate, and the Python
  examples compile (they are run by hand: they train agents).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import sys
import typing

import pytest
import yaml
from pydantic import BaseModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
README = os.path.join(ROOT, "README.md")
OPTIONS = os.path.join(DOCS, "options.md")
RESULTS = os.path.join(DOCS, "results", "reliability.md")
#: The pages written for users (docs/results/ holds generated records).
PAGES = [README] + [os.path.join(DOCS, name) for name in ("flows.md", "sb3.md", "novelty.md", "cli.md", "options.md")]
SETUP = ("make demo", "make test")



def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _generator():
    spec = importlib.util.spec_from_file_location("options_reference", os.path.join(ROOT, "scripts",
                                                                                     "options_reference.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a dataclass in it looks its module up there
    spec.loader.exec_module(module)
    return module


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M)


def _name(path: str) -> str:
    return os.path.relpath(path, ROOT)


# ------------------------------------------------------------------ options.md
def test_options_page_is_what_the_generator_writes_now():
    gen = _generator()
    assert _read(OPTIONS) == gen.render(), "docs/options.md is out of date: run python scripts/options_reference.py"
    assert gen.main(["--check"]) == 0


def test_options_check_fails_on_a_stale_page(tmp_path):
    gen = _generator()
    stale = tmp_path / "options.md"
    stale.write_text(gen.render().replace("| `seed` |", "| `seeds` |"))
    assert gen.main(["--check", "--out", str(stale)]) == 1
    assert gen.main(["--check", "--out", str(tmp_path / "missing.md")]) == 1


def _models(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _option_keys(model: type[BaseModel], prefix: str = "") -> list[tuple[str, type[BaseModel], str]]:
    """``(dotted key, model, field)`` of every field reachable from ``model``."""
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        out.append((key, model, name))
        for sub in _models(field.annotation):
            out += _option_keys(sub, key)
    return out


def test_options_page_names_every_option_field():
    from agents.config import AlgoConfig, EnvConfig, EvalConfig, RunConfig, TrainConfig
    from agents.novelty.options import (CriticOptions, FlowModelOptions, ImageOptions, NoveltyOptions,
                                        RNDModelOptions, WeightOptions)

    page = _read(OPTIONS)
    keys = _option_keys(TrainConfig)
    found = {model for _, model, _ in keys}
    expected = {TrainConfig, EnvConfig, AlgoConfig, RunConfig, EvalConfig, NoveltyOptions, FlowModelOptions,
                RNDModelOptions, ImageOptions, WeightOptions, CriticOptions}
    assert expected <= found, f"sections not reached from TrainConfig: {expected - found}"
    missing = [key for key, _, _ in keys if f"| `{key}` |" not in page]
    assert not missing, f"options missing from docs/options.md: {missing}"
    for model in expected:
        assert f"`{model.__module__}.{model.__name__}`" in page, model.__name__
        for name in model.model_fields:
            assert re.search(rf"\| `([\w.]+\.)?{re.escape(name)}` \|", page), f"{model.__name__}.{name}"


# ------------------------------------------------------------------ README
def test_readme_is_short_and_keeps_the_two_setup_commands():
    text = _read(README)
    lines = text.splitlines()
    assert len(lines) <= 160, f"README.md has {len(lines)} lines"
    for command in SETUP:
        assert command in text
    setup = [b for b in _blocks(text, "bash") if any(line.startswith(SETUP) for line in b.splitlines())]
    assert len(setup) == 1, "one block holds the set-up commands"
    commands = [line for line in setup[0].splitlines() if line.strip()]
    assert [c.split("#")[0].strip() for c in commands] == list(SETUP)
    assert "the main job" in commands[0] and "pytest" in commands[1], "the two commands keep their meaning"
    others = [line for block in _blocks(text, r"\w*") for line in block.splitlines()
              if line.startswith("make ") and not line.startswith(SETUP)]
    assert not others, f"README.md names other set-up commands: {others}"


def _table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|(\s*-+\s*\|)+", line):
            rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def test_readme_result_rows_are_copied_from_the_results_page():
    """The README's result table is the page's overview table, row for row (header included)."""
    readme, page = _read(README), _read(RESULTS)
    assert "docs/results/reliability.md" in readme
    rows = [r for r in _table_rows(readme) if len(r) > 3]
    assert len(rows) >= 2, "the README has a result table"
    page_lines = set(page.splitlines())
    for row in rows:
        line = "| " + " | ".join(row) + " |"
        assert line in page_lines, f"row not on the results page: {line}"
    pictures = re.findall(r"!\[[^\]]*\]\((docs/results/[^)]+\.png)\)", readme)
    assert pictures and all(os.path.exists(os.path.join(ROOT, p)) for p in pictures)


# ------------------------------------------------------------------ links
def _links(text: str) -> list[str]:
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # code blocks
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans
    return re.findall(r"\]\(([^)\s]+)\)", text)


def _slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: str) -> set[str]:
    text = re.sub(r"^```.*?^```", "", _read(path), flags=re.S | re.M)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_resolve(page):
    links = _links(_read(page))
    bad = []
    for link in links:
        if re.match(r"[a-z]+://|mailto:", link):
            continue
        target, _, anchor = link.partition("#")
        path = os.path.normpath(os.path.join(os.path.dirname(page), target)) if target else page
        if not os.path.exists(path):
            bad.append(f"{link}: no file {_name(path)}")
        elif anchor and path.endswith(".md") and anchor not in _anchors(path):
            bad.append(f"{link}: no heading #{anchor} in {_name(path)}")
    assert not bad, f"{_name(page)}: " + "; ".join(bad)


def test_link_checker_finds_broken_links(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n[ok](page.md#title) [gone](nothing.md) [anchor](#no-such) `[code](x.md)`\n")
    links = _links(page.read_text())
    assert links == ["page.md#title", "nothing.md", "#no-such"]
    assert "title" in _anchors(str(page)) and "no-such" not in _anchors(str(page))


# ------------------------------------------------------------------ content
def test_flows_page_names_every_registered_flow():
    import flowrl

    table = "\n".join(line for line in _read(os.path.join(DOCS, "flows.md")).splitlines() if line.startswith("| "))
    missing = [name for name in flowrl.available_flows() if f"`{name}`" not in table]
    assert not missing, f"flows missing from the families table of docs/flows.md: {missing}"


def test_cli_page_names_every_top_level_key():
    from agents.config import TrainConfig

    page = _read(os.path.join(DOCS, "cli.md"))
    missing = [key for key in [*TrainConfig.model_fields, "base"] if f"`{key}`" not in page]
    assert not missing, f"top-level keys missing from docs/cli.md: {missing}"


def _yaml_examples() -> list[tuple[str, dict]]:
    out = []
    for page in PAGES:
        for block in _blocks(_read(page), "yaml"):
            data = yaml.safe_load(block)
            if isinstance(data, dict):
                out.append((_name(page), data))
    return out


def test_yaml_examples_are_valid(tmp_path, monkeypatch):
    from agents.config import TrainConfig, config_from_dict, merge_configs, read_config
    from agents.novelty.options import NoveltyOptions
    from agents.sweep.spec import SweepSpec, load_sweep

    monkeypatch.chdir(ROOT)
    examples = _yaml_examples()
    assert len(examples) >= 4
    for where, data in examples:
        if set(data) <= set(SweepSpec.model_fields) and "seeds" in data:
            path = tmp_path / "sweep.yaml"
            path.write_text(yaml.safe_dump(data))
            load_sweep(str(path))
            continue
        assert set(data) <= {*TrainConfig.model_fields, "base"}, f"{where}: not a config: {sorted(data)}"
        if "base" in data:
            base = os.path.join(ROOT, "configs", data.pop("base"))
            data = merge_configs(read_config(base), data)
        if "env" not in data:
            data = {**data, "env": {"id": "flowrl/PointMaze-UMaze-v0"}}
        config_from_dict(data)
    novelty = [d for w, d in examples if w == "docs/novelty.md"]
    assert novelty and NoveltyOptions.model_validate(novelty[0]["novelty"]) == NoveltyOptions(), \
        "docs/novelty.md's first block is the default bonus"
    demo = [d for w, d in examples if w == "docs/cli.md" and d.get("novelty") == {} and "base" not in d]
    assert demo and demo[0] == read_config(os.path.join(ROOT, "configs", "demo.yaml")), \
        "docs/cli.md shows configs/demo.yaml as it is"


def _command_lines() -> list[tuple[str, list[str]]]:
    out = []
    for page in PAGES:
        for block in _blocks(_read(page), "bash"):
            for line in block.splitlines():
                words = shlex.split(line, comments=True)
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value before the command
                    words.pop(0)
                if words[:1] == ["flowrl"] and not any(re.search(r"[A-Z]{3,}", w) for w in words[1:]):
                    out.append((_name(page), words[1:]))
    return out


def test_cli_examples_parse_and_validate(monkeypatch):
    from agents.cli import build_parser
    from agents.config import load_config, parse_overrides
    from agents.sweep.spec import load_sweep

    monkeypatch.chdir(ROOT)
    lines = _command_lines()
    assert {words[0] for _, words in lines} >= {"train", "eval", "plot", "sweep", "report"}
    for where, words in lines:
        args = build_parser().parse_args(words)
        items = getattr(args, "items", None) or []
        if args.command == "train" and items and "=" not in items[0]:
            load_config(items[0], items[1:])
        elif args.command == "train":
            assert "resume" in parse_overrides(items), f"{where}: flowrl {' '.join(words)}"
        elif args.command == "sweep" and items:
            load_sweep(items[0], parse_overrides(items[1:]))


def test_python_examples_compile():
    blocks = [(page, b) for page in PAGES for b in _blocks(_read(page), "python")]
    assert len(blocks) >= 6
    for page, block in blocks:
        compile(block, _name(page), "exec")
