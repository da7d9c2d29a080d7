"""The documentation: the MkDocs site (mkdocs.yml, docs/) builds with --strict — no broken link, no
missing anchor, no page left out of the nav — and the README stays a short front page whose every
relative link resolves."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import yaml

from support.data import ROOT

README = ROOT / "README.md"
README_MAX_LINES = 200
# [text](target) outside code; images too. Targets with a scheme (https:, mailto:) are not checked here.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def build(tmp_path: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(config),
            "--site-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's end-of-life banner
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_site_builds_strictly_without_a_warning(tmp_path):
    out = build(tmp_path / "site", ROOT / "mkdocs.yml")
    assert out.returncode == 0, out.stderr[-4000:]
    assert not re.search(r"^WARNING\b", out.stderr, flags=re.M), out.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()


def test_the_strict_build_fails_on_a_broken_link_or_anchor(tmp_path):
    """The check can fail: a copy of the docs with one broken anchor and one missing page."""
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config["docs_dir"] = str(docs)
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    for broken in ("[gone](operations.md#no-such-heading)", "[gone](no-such-page.md)"):
        (docs / "troubleshooting.md").write_text((ROOT / "docs" / "troubleshooting.md").read_text() + f"\n{broken}\n")
        out = build(tmp_path / "site", tmp_path / "mkdocs.yml")
        assert out.returncode != 0, broken
        assert "troubleshooting.md" in out.stderr, out.stderr[-2000:]


def test_every_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["theme"]["name"] == "material" and config.get("strict") is True

    def pages(nav) -> list[str]:
        found = []
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            found += pages(value) if isinstance(value, list) else [value]
        return found

    listed = pages(config["nav"])
    assert sorted(listed) == sorted(p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md"))


def test_the_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines: move the detail into docs/"


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = "".join(c for c in text if c in "- " or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    outside_code = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    return {github_slug(h) for h in re.findall(r"^#{1,6} (.+)$", outside_code, flags=re.M)}


def relative_links(markdown: str) -> list[str]:
    outside_code = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    outside_code = re.sub(r"`[^`\n]*`", "", outside_code)
    return [t for t in LINK.findall(outside_code) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def broken_links(markdown: str, base: Path) -> list[str]:
    """The relative links of ``markdown`` (a file in ``base``) to no file, or to no heading of one."""
    broken = []
    for link in relative_links(markdown):
        path, _, fragment = link.partition("#")
        target = (base / path).resolve() if path else None
        if target is not None and not target.exists():
            broken.append(f"{link}: no such file")
        elif fragment:
            text = target.read_text() if target is not None and target.suffix == ".md" else markdown
            if fragment not in anchors(text):
                broken.append(f"{link}: no such heading")
    return broken


def test_every_relative_link_in_the_readme_resolves():
    readme = README.read_text()
    assert len(relative_links(readme)) >= 8  # the README points into the docs
    assert broken_links(readme, ROOT) == []


def test_the_readme_link_check_can_fail():
    markdown = "# Top\n\n[a](docs/nowhere.md) [b](docs/operations.md#no-such-heading) [c](#top) [d](#bottom)\n"
    assert broken_links(markdown, ROOT) == [
        "docs/nowhere.md: no such file",
        "docs/operations.md#no-such-heading: no such heading",
        "#bottom: no such heading",
    ]


def test_the_readme_keeps_the_commands_a_newcomer_runs():
    readme = README.read_text()
    for command in (
        "docker compose up --build -d",
        "bash tests/run.sh",
        'curl -X POST http://localhost:5003/finalize -F "file=@test.jpg"',
        "http://localhost:16686",
        "http://localhost:9090",
        "http://localhost:3000",
    ):
        assert command in readme, command
