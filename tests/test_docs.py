"""The docs hold no spec that batchrun would refuse, and the README stays short enough to read to the end.

The rule for ```yaml blocks in README.md and docs/*.md: every one is a job spec or a part of one, and batchrun's own
parser must take it.

- A block with `model:` at the top level is a whole spec, parsed as it is.
- Any other block is a fragment (`limits:`, `cache:`, `provider:` and `batch:` ...): its top-level keys are laid
  over a minimal spec (`BASE`) and the result is parsed, so a fragment is judged as the user would paste it.
- A block that is YAML but not a job spec at all starts with the comment `# not a job spec` and is skipped.

There is no other way out: a block that is not a mapping, a key the spec does not know, a wrong type, a template
that does not parse, all fail the test with batchrun's own one-line error naming the file and the block's line.
Files a spec names (its input, `output.schema_file`, `provider.ca_bundle`) are made as stubs in a temporary
folder, since parsing checks they exist: the docs' examples are about the spec, not this machine's files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click import Group

from batchrun.cli import main as cli
from batchrun.errors import BatchrunError
from batchrun.spec.parse import parse_spec
from batchrun.spec.yamlfile import parse_yaml

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(yaml|yml)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
NOT_A_SPEC = "# not a job spec"
# What a fragment is laid over: the smallest spec that runs, on the simulated provider.
BASE: dict[str, Any] = {"model": "sim-small", "provider": {"name": "simulated"}, "input": "input.jsonl"}
README_MAX_LINES = 250


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def yaml_blocks(pages: list[Path]) -> list[Block]:
    blocks = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            blocks.append(Block(page, line, match.group(2)))
    return blocks


def _stub(path: Path, content: str, root: Path) -> None:
    """A file the spec names, made inside `root` only (an absolute path elsewhere is left as it is)."""
    if path.resolve().is_relative_to(root) and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")


def parse_block(block: Block, tmp: Path) -> Any:
    """The block parsed as a job spec (a fragment laid over BASE): batchrun's own error when it is not one."""
    data = parse_yaml(block.text, block.where)
    if not isinstance(data, dict):
        pytest.fail(f"{block.where}: a yaml block must be a job spec (a mapping), or start with {NOT_A_SPEC!r}")
    if "model" not in data:
        data = {**BASE, **data}
    # Two folders deep, so that `../sample_data/news.jsonl` (a spec under jobs/) stays inside tmp.
    spec_path = tmp / "docs" / "jobs" / "job.yaml"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    base = spec_path.parent
    given = data.get("input")
    input_path = given.get("path") if isinstance(given, dict) else given
    if isinstance(input_path, str):
        _stub(base / input_path, "", tmp)
    output = data.get("output")
    if isinstance(output, dict) and isinstance(output.get("schema_file"), str):
        _stub(base / output["schema_file"], '{"type": "object"}', tmp)
    provider = data.get("provider")
    if isinstance(provider, dict) and isinstance(provider.get("ca_bundle"), str):
        _stub(base / provider["ca_bundle"], "", tmp)
    return parse_spec(data, spec_path=spec_path, source=block.where)


BLOCKS = [b for b in yaml_blocks(PAGES) if not b.text.startswith(NOT_A_SPEC)]


def test_the_docs_have_spec_examples() -> None:
    """The finder itself works: a change that made it find nothing would pass every example vacuously."""
    assert len(BLOCKS) >= 10, [b.where for b in BLOCKS]
    assert any(b.page.name == "README.md" for b in BLOCKS)
    assert any(b.page.name == "job-spec.md" for b in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.where)
def test_spec_example_parses(block: Block, tmp_path: Path) -> None:
    try:
        parse_block(block, tmp_path)
    except BatchrunError as exc:
        pytest.fail(f"{block.where}: the example is not a spec batchrun takes:\n{exc}\n---\n{block.text}")


def test_a_broken_example_fails_loudly(tmp_path: Path) -> None:
    """The rule does not skip what it cannot read: a typo, a wrong type, a list, and YAML that is not YAML all fail."""
    page = tmp_path / "page.md"
    page.write_text(
        "```yaml\nmodel: m\nprovider: simulated\ninput: x.jsonl\nlimts: {rpm: 5}\n```\n\n"
        "```yaml\nlimits: {rpm: fast}\n```\n\n"
        "```yaml\n- model: m\n```\n\n"
        "```yaml\nmodel: [unclosed\n```\n",
        encoding="utf-8",
    )
    blocks = yaml_blocks([page])
    assert [b.line for b in blocks] == [1, 8, 12, 16]
    for block in blocks:
        with pytest.raises((BatchrunError, pytest.fail.Exception)):
            parse_block(Block(ROOT / "docs" / "page.md", block.line, block.text), tmp_path / str(block.line))


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move the detail into docs/"


def test_readme_lists_every_command() -> None:
    """Every `batchrun` subcommand (and each of a group's, such as `cache stats`) is in the README's table."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert isinstance(cli, Group)
    missing = []
    for name, command in cli.commands.items():
        names = [f"{name} {sub}" for sub in command.commands] if isinstance(command, Group) else [name]
        missing += [n for n in names if f"`batchrun {n}" not in readme]
    assert not missing, f"README.md's commands table lacks: {', '.join(missing)}"


def test_docs_pages_are_all_in_the_nav() -> None:
    """mkdocs --strict checks this too; this says it without building the site."""
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = [p.relative_to(ROOT / "docs").as_posix() for p in PAGES[1:]]
    assert [p for p in pages if f": {p}" not in nav] == []


def test_readme_links_point_at_files() -> None:
    """The README is not part of the mkdocs build, so its links to docs/ are checked here."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", readme)
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    assert local, "no links found: the pattern is broken"
    assert [t for t in local if not (ROOT / t).is_file()] == []


def test_architecture_names_every_module() -> None:
    """docs/architecture.md's tables name every module of the package, each in its package's row, so a module
    added or moved shows up here rather than as a stale page."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `batchrun/(\w+)/` \|.*$", text, re.MULTILINE)}
    package = ROOT / "batchrun"
    missing = []
    for sub in sorted(p for p in package.iterdir() if (p / "__init__.py").is_file()):
        row = rows.get(sub.name, "")
        missing += [
            f"{sub.name}/{m.name}"
            for m in sorted(sub.glob("*.py"))
            if m.stem != "__init__" and f"`{m.stem}`" not in row
        ]
    missing += [m.name for m in sorted(package.glob("*.py")) if m.stem != "__init__" and f"| `{m.name}` |" not in text]
    assert not missing, f"docs/architecture.md does not name: {', '.join(missing)}"
