"""The documentation's relative links resolve: every `[text](target)` in README.md, data/README.md and docs/ names a
file or folder of the repository, and a `#fragment` names a heading of the page it points at (GitHub's anchors).
Every module, name, file and script the pages, docstrings and comments cite exists."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def pages() -> list[Path]:
    """The Markdown pages a reader follows links between."""
    return [ROOT / "README.md", ROOT / "data" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a page: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for title in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link in a heading anchors on its text
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower().replace("`", "")).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def relative_links(page: Path) -> list[str]:
    """The links of a page that point inside the repository (not URLs, not mail), outside code blocks."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code shows link syntax, it is not a link
    targets = [a or b for a, b in LINK.findall(text)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def broken_links(page: Path) -> list[str]:
    """'target (why)' for each relative link of `page` that does not resolve."""
    broken = []
    for target in relative_links(page):
        path_part, _, fragment = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif ROOT not in dest.parents and dest != ROOT:
            broken.append(f"{target} (outside the repository)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target} (no heading with that anchor in {dest.relative_to(ROOT)})")
    return broken


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_checker_finds_a_missing_file_and_a_missing_heading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "api.md").write_text("# The API\n\n## Errors and `codes`\n\n## Errors and `codes`\n")
    page = tmp_path / "README.md"
    page.write_text("See [the API](docs/api.md#errors-and-codes), [again](docs/api.md#errors-and-codes-1),\n"
                    "[gone](docs/gone.md), [no such part](docs/api.md#limits), [top](#intro), [web](https://x.y/z).\n"
                    "```\n[in code](nowhere.md)\n```\n\n# Intro\n")
    assert broken_links(page) == ["docs/gone.md (no such file)",
                                  "docs/api.md#limits (no heading with that anchor in docs/api.md)"]


PACKAGES = ("pipeline", "runtime", "service", "scripts", "benchmarks", "tests")
DOTTED = re.compile(rf"`((?:{'|'.join(PACKAGES)})(?:\.[A-Za-z_]\w*)+)`")
MODULE_RUN = re.compile(rf"python3? -m ((?:{'|'.join(PACKAGES)})(?:\.\w+)*)")
PATH = re.compile(rf"(?<![\w/.-])((?:{'|'.join(PACKAGES)})/[\w/]*\w\.py)\b")
SCRIPT_RUN = re.compile(r"python3? ((?:\S*/)?\w+\.py)\b")


def resolves(dotted: str) -> bool:
    """Whether `a.b.c` is a module of the project, or an attribute (a function, class, constant) of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        try:
            if importlib.util.find_spec(name) is None:
                continue
        except ModuleNotFoundError:
            continue
        target = importlib.import_module(name)
        for attribute in parts[cut:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def stale_references(text: str, root: Path = ROOT) -> list[str]:
    """The project modules, names, files and scripts that `text` cites and the repository does not have: a
    `pipeline.x.y` in backquotes, `python -m pipeline.x`, a `pipeline/x.py` path, `python some/script.py`."""
    stale = [f"{d} (no such module or name)" for d in DOTTED.findall(text) if not resolves(d)]
    stale += [f"python -m {m} (no such module)" for m in MODULE_RUN.findall(text) if not resolves(m)]
    stale += [f"{p} (no such file)" for p in PATH.findall(text) if not (root / p).is_file()]
    stale += [f"python {s} (not a script of the repository)" for s in SCRIPT_RUN.findall(text)
              if not (root / s).is_file()]
    return sorted(set(stale))


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_file_and_script_a_page_cites_exists(page: Path) -> None:
    assert stale_references(page.read_text(encoding="utf-8")) == []


def prose(source: str) -> str:
    """The docstrings and comments of a Python file: what a reader takes for pointers into the code."""
    tree = ast.parse(source)
    nodes = [n for n in ast.walk(tree) if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef)]
    docstrings = [text for n in nodes if (text := ast.get_docstring(n, clean=False))]
    comments = [token.string for token in tokenize.generate_tokens(io.StringIO(source).readline)
                if token.type == tokenize.COMMENT]
    return "\n".join(docstrings + comments)


def test_every_module_a_docstring_or_comment_cites_exists() -> None:
    """After a move or a rename, no docstring or comment points at the old place."""
    sources = [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    sources += [ROOT / "application.py", ROOT / "gunicorn.conf.py"]
    stale = {str(p.relative_to(ROOT)): found for p in sources
             if p.name != "test_docs.py" and (found := stale_references(prose(p.read_text(encoding="utf-8"))))}
    assert stale == {}


def test_prose_is_docstrings_and_comments_not_code() -> None:
    source = '''"""Module: `pipeline.a`."""

def f():
    """Function: `pipeline.b`."""
    path = "pipeline/c.py"  # comment: `pipeline.d`
'''
    text = prose(source)
    assert all(name in text for name in ("pipeline.a", "pipeline.b", "pipeline.d")) and "pipeline/c.py" not in text


def test_the_reference_checker_finds_what_is_gone() -> None:
    text = ("`pipeline.indexing.deltas.write` and `runtime.items` and `pipeline.StageError`, `pipeline.nowhere`, "
            "`runtime.items.no_such_name`, `python -m pipeline.gone`, `python -m benchmarks.vectorize_views`, "
            "pipeline/indexing/deltas.py, pipeline/near_duplicates.py, `python /tmp/p25/vec.py`, "
            "python scripts/deploy.py")
    assert stale_references(text) == ["pipeline.nowhere (no such module or name)",
                                      "pipeline/near_duplicates.py (no such file)",
                                      "python -m pipeline.gone (no such module)",
                                      "python /tmp/p25/vec.py (not a script of the repository)",
                                      "runtime.items.no_such_name (no such module or name)"]
