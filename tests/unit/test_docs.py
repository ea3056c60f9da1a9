"""The README and docs/ stay usable: links resolve, snippets compile, the test command is CI's.

Relative links are checked the way GitHub renders them: the file must exist, and an `#anchor`
must name a heading of the target page under GitHub's slug rules. The README's Python snippets
are compiled (not run: they need a server), and its test command must be, character for
character, the one `.ci/run` runs, on the README's first screen.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"
PAGES = [
    README,
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "benchmarks" / "README.md",
    *sorted((ROOT / "benchmarks" / "results").glob("*.md")),
]
FIRST_SCREEN_LINES = 25
MAX_README_LINES = 200

_FENCE = re.compile(r"^[ \t]*(```|~~~)[^\n]*\n.*?^[ \t]*\1[ \t]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_LINK = re.compile(r"\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_PYTHON_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def prose(markdown: str) -> str:
    """The text outside fenced blocks and code spans, where links and headings live."""
    without_fences = _FENCE.sub("", markdown)
    return _CODE_SPAN.sub("code", without_fences)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor on a page, repeated headings numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    result = set()
    for heading in _HEADING.findall(_FENCE.sub("", page.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def broken_links(page: Path) -> list[str]:
    """The relative links on a page that name no file, or no heading of the file they name."""
    broken = []
    for target in _LINK.findall(prose(page.read_text())):
        if _SCHEME.match(target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved}")
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
            broken.append(f"{target}: no heading '#{anchor}' in {resolved}")
    return broken


def readme_lines() -> list[str]:
    return README.read_text().splitlines()


def ci_test_command() -> str:
    """The one command line of .ci/run that runs the tests."""
    (command,) = [
        line
        for line in CI_RUN.read_text().splitlines()
        if "python -m pytest" in line and not line.lstrip().startswith("#")
    ]
    return command


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_the_link_check_finds_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n## Its part\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n[fine](other.md#its-part) [self](#page) [web](https://example.com/x)\n"
        "`[in code](missing.md)`\n```\n[in a block](missing.md)\n```\n"
        "[gone](missing.md) [no heading](other.md#nowhere) [no heading here](#nowhere)\n"
    )
    assert [line.split(":")[0] for line in broken_links(page)] == [
        "missing.md",
        "other.md#nowhere",
        "#nowhere",
    ]


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Request path: HAProxy by default", "request-path-haproxy-by-default"),
        ("Configuration (`configs/app.yaml`)", "configuration-configsappyaml"),
        ("The app's args", "the-apps-args"),
        ("GPUs: one GPU per replica", "gpus-one-gpu-per-replica"),
        ("runtime_env and num-gpus", "runtime_env-and-num-gpus"),
        ("See [the API](api.md)", "see-the-api"),
    ],
)
def test_slug_follows_github(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_repeated_headings_are_numbered(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Notes\n## Notes\n```\n# not a heading\n```\n## Notes\n")
    assert anchors(page) == {"notes", "notes-1", "notes-2"}


def test_readme_python_snippets_compile() -> None:
    snippets = _PYTHON_BLOCK.findall(README.read_text())
    assert snippets, "the README shows tritonclient code"
    for number, snippet in enumerate(snippets, 1):
        compile(snippet, f"README.md python snippet {number}", "exec")


def test_readme_test_command_is_what_ci_runs() -> None:
    lines = readme_lines()
    assert ci_test_command() in lines[:FIRST_SCREEN_LINES]


def test_readme_install_command_is_on_the_first_screen() -> None:
    first_screen = readme_lines()[:FIRST_SCREEN_LINES]
    install = "&& python -m serve_app.triton_install install && serve run configs/app.yaml"
    assert any(line.startswith("apt-get ") and line.endswith(install) for line in first_screen)


def test_readme_is_a_front_door() -> None:
    assert len(readme_lines()) <= MAX_README_LINES
