"""The manual (issue 24.6): README.md is the first page and the reference lives in docs/, built by
MkDocs with warnings as errors; docs/cli.md is generated from the CLI's parser and fails here
when it drifts from the code; every `hwnas` command line the pages show parses."""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hwnas.cli.main import build_parser
from hwnas.cli.reference import reference_markdown, verbs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
needs_mkdocs = pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                                  reason="mkdocs is not installed (scripts/setup.sh installs it)")


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    # not -q: a quiet build does not count its warnings, and --strict then passes them
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                           "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, timeout=300)


def test_the_cli_reference_is_what_the_parser_says():
    page = (DOCS / "cli.md").read_text()
    assert page == reference_markdown(), \
        "docs/cli.md is out of date: python -m hwnas.cli.reference > docs/cli.md"


def test_the_cli_reference_has_every_verb_and_option():
    page = (DOCS / "cli.md").read_text()
    for name, sub in verbs(build_parser()).items():
        assert f"## `hwnas {name}`" in page, name
        for action in sub._actions:
            for option in action.option_strings:
                assert option in page, f"hwnas {name} {option}"


@needs_mkdocs
def test_the_manual_builds_with_warnings_as_errors(tmp_path):
    done = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    for page in ["index", "usage", "cli", "layout", "targets/index"]:
        path = tmp_path / "site" / page / "index.html" if page != "index" else \
            tmp_path / "site" / "index.html"
        assert path.is_file() or (tmp_path / "site" / page.replace("/index", "") /
                                  "index.html").is_file(), page


@needs_mkdocs
def test_a_broken_link_fails_the_build(tmp_path):
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    with open(tmp_path / "docs" / "usage.md", "a") as page:
        page.write("\nSee [nowhere](no-such-page.md).\n")
    done = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0 and "no-such-page.md" in done.stdout + done.stderr


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [p.relative_to(DOCS).as_posix() for p in PAGES
               if p.relative_to(DOCS).as_posix() not in nav]
    assert missing == [], f"pages missing from mkdocs.yml's nav: {missing}"


def test_the_readme_is_a_first_page():
    """Short, no dated figures in its opening, the two set-up commands that .ci/run relies on,
    and a link to every page of the manual."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme) < 12_000, "README.md is the first page: the reference goes in docs/"
    assert "bash scripts/setup.sh && .venv/bin/hwnas search\n" in readme
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest -q\n" in readme
    opening = "\n".join(readme.splitlines()[:40])
    assert not any(f"20{year}-" in opening for year in range(20, 40)), "a dated figure"
    for page in PAGES:
        relative = page.relative_to(ROOT).as_posix()
        if page.parent == DOCS or page.name == "README.md":
            assert f"]({relative})" in readme, f"README.md does not link {relative}"


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=lambda p: p.name)
def test_every_command_line_shown_parses(page):
    parser = build_parser()
    fence = False
    for line in page.read_text().replace("\\\n", " ").splitlines():  # continued lines
        if line.strip().startswith("```"):
            fence = not fence
            continue
        words = line.split(" #")[0].strip()
        for prefix in (".venv/bin/hwnas ", "hwnas "):
            if fence and words.startswith(prefix) and "[" not in words and "|" not in words \
                    and "..." not in words and "<" not in words:
                try:
                    parser.parse_args(shlex.split(words[len(prefix):]))
                except SystemExit:
                    pytest.fail(f"{page.name}: `{words}` does not parse")
