"""The documentation site: every page navigable, every link between pages resolving, builds.

The cheap checks read ``mkdocs.yml`` and the pages (no build): every page of
``docs/`` is in the navigation, every relative link between pages (and from the
README into ``docs/``) points at a file that exists and, with ``#anchor``, at a
heading of it, and every Python example compiles. The last test builds the site
with ``mkdocs build --strict`` (warnings are errors), as ``nox -s docs`` and CI do:
about 3 s here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml
from test_readme_console import doc_files, fenced, relative

import zoo
from zoo.bundles.modeltable import END, START
from zoo.util.deprecation import MOVED

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LINK = re.compile(r"(?<!!)\[[^\]]*\]\((?P<target>[^)\s]+)\)")
PICTURE = re.compile(r"!\[[^\]]*\]\((?P<target>[^)\s]+)\)")
FENCE = re.compile(r"^[ \t]*```.*?^[ \t]*```", re.S | re.M)


def _config() -> dict:
    # mkdocs.yml uses no Python tags (!!python/name:...), so a safe load reads all of it
    with open(ROOT / "mkdocs.yml", encoding="utf-8") as f:
        return yaml.safe_load(f)


def _nav_pages(nav: object) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in _nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in _nav_pages(value)]
    return []


def _slug(heading: str) -> str:
    """The anchor of a heading, as Python-Markdown's toc extension makes it."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip()
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


def _prose(page: Path) -> str:
    """A page without its code blocks (a link in a code example is no link)."""
    return FENCE.sub("", page.read_text(encoding="utf-8"))


def test_every_page_is_in_the_navigation_and_every_nav_entry_exists() -> None:
    config = _config()
    assert config["docs_dir"] == "docs" and config["strict"] is True
    assert config["theme"]["name"] == "material" and config["theme"]["font"] is False
    nav = _nav_pages(config["nav"])
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages
    assert len(nav) == len(set(nav))


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in doc_files():
        for m in LINK.finditer(_prose(page)):
            target = m["target"]
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if page.parent == ROOT and not file.startswith("docs/") and file:
                ok = path.exists()  # README to LICENSE and the like
            else:
                ok = path.is_file() and (not anchor or anchor in _anchors(path))
                ok = ok and (page.parent == ROOT or DOCS in path.parents)  # the site's own
            if not ok:
                broken.append(f"{relative(page)}: {target}")
    assert broken == []


def test_pictures_are_the_committed_ones() -> None:
    for page in doc_files():
        for m in PICTURE.finditer(_prose(page)):
            path = (page.parent / m["target"]).resolve()
            assert path.is_file() and path.parent == DOCS, f"{relative(page)}: {m['target']}"
    used = {(page.parent / m["target"]).resolve().name
            for page in DOCS.rglob("*.md") for m in PICTURE.finditer(_prose(page))}
    assert {p.name for p in DOCS.glob("*.png")} <= used  # every picture is shown on the site


def test_every_python_example_compiles() -> None:
    for where, code in fenced("python"):
        compile(code, where, "exec")


def test_the_weight_set_examples_validate() -> None:
    declared = [(where, eval(code, {"zoo": zoo}))  # an expression of the spec's type
                for where, code in fenced("python") if code.startswith("zoo.WeightSet(")]
    assert len(declared) >= 2  # the README's and the plugin guide's
    assert all(isinstance(w, zoo.WeightSet) for _, w in declared)
    assert len({w for _, w in declared}) == 1, "the pages show different weight sets"


def test_the_site_includes_the_readme_model_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("<!-- --8<-- [start:model-table] -->", 1)[1]
    section = section.split("<!-- --8<-- [end:model-table] -->", 1)[0]
    assert START in section and END in section
    assert '--8<-- "README.md:model-table"' in (DOCS / "pretrained.md").read_text()


def test_the_old_module_table_is_complete() -> None:
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    for old, new in MOVED.items():
        row = f"| `{old}` | " + ", ".join(f"`{n}`" for n in new) + " |"
        assert row in text, row


def test_the_readme_stays_a_landing_page() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300
    pages = {p.relative_to(ROOT).as_posix() for p in DOCS.rglob("*.md")
             if "reference" not in p.parts} | {"docs/reference/index.md"}
    linked = {m["target"].partition("#")[0] for m in LINK.finditer("\n".join(lines))}
    assert pages <= linked  # "where next": every page, one line each


@pytest.mark.slow
def test_the_site_builds_without_a_warning(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"),
                                          os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr
    assert (tmp_path / "site" / "reference" / "hookspecs" / "index.html").is_file()
    html = (tmp_path / "site" / "pretrained" / "index.html").read_text(encoding="utf-8")
    assert "<table>" in html and "Net-cifar2" in html  # the README's table, included
    assert "fonts.googleapis.com" not in html  # no remote fonts
