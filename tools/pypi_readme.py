#!/usr/bin/env python3
"""README.md as the long description of the package index page.

README.md is written for a clone of the repository: its links are relative (docs/api.md, ...)
and its first lines install from the clone (`pip install ".[demo]"`). On the index those
links lead nowhere and nobody has a clone. This turns README.md into a text that works there:

- relative links [text](docs/api.md) point at the file in the repository on GitHub,
  relative pictures ![alt](docs/x.png) at the raw file (so that the page displays them);
  absolute URLs, in-page anchors (#...) and site-absolute paths (/...) are left alone;
- before the first `pip install ".` line of the first bash code block comes a
  `pip install fusedce` line for people without a clone, and a comment saying that the lines
  after it need one.

tools/build_wheels.sh runs it on README.md in the copy of the tree it builds the sdist and
the wheel from, so that the metadata of both carries the result; tests/test_packaging.py
checks it on the README.md of the day. It needs no package beyond the standard library
(tomllib, or tomli before Python 3.11), so that no build of fusedce gains a build
requirement: a build-time readme plugin would break builds without build isolation on
machines that cannot download it.

Usage: python3 tools/pypi_readme.py [README.md] [--repo URL] [-o OUT | --in-place]
The repository URL defaults to [project.urls] Repository in pyproject.toml beside this
folder; the branch the links point into is `main`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BRANCH = "main"

# A link target that is not relative: a scheme (https:, mailto:, ...), an anchor, or a path
# from the site's root.
_NOT_RELATIVE = r"(?![A-Za-z][A-Za-z0-9+.-]*:|#|/)"
# ![alt](target), then any other ...](target): the link text is not parsed, so that brackets
# in it (`x[0]`) cannot hide a link. The target has no spaces (a title after it is not used in
# README.md and is not supported here).
_IMAGE = re.compile(r"(!\[[^\]]*\]\()" + _NOT_RELATIVE + r"([^)\s]+)\)")
_LINK = re.compile(r"(\]\()" + _NOT_RELATIVE + r"([^)\s]+)\)")
# Reference-style definitions:  [name]: docs/api.md
_REFERENCE = re.compile(r"^( {0,3}\[[^\]]+\]:[ \t]*)" + _NOT_RELATIVE + r"(\S+)", re.MULTILINE)
# The first code block of README.md and its first clone-only install line.
_FIRST_BASH_BLOCK = re.compile(r"^```(?:bash|sh|console)\n(.*?)^```", re.MULTILINE | re.DOTALL)
# a line that installs the clone: `pip install ... .` or `pip install ... ".[extra]"`
_CLONE_INSTALL = re.compile(r'^pip install\b[^\n]*?\s"?\.(?:[\["\s]|$)', re.MULTILINE)


def repository_url(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """[project.urls] Repository of pyproject.toml, without a trailing slash."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    with open(pyproject, "rb") as f:
        urls = tomllib.load(f)["project"]["urls"]
    return urls["Repository"].rstrip("/")


def relative_links(text: str) -> list[str]:
    """The link and picture targets in a Markdown text that are still relative."""
    found = [m.group(2) for m in _LINK.finditer(text)]  # pictures included
    found += [m.group(2) for m in _REFERENCE.finditer(text)]
    return found


def index_readme(text: str, repo: str, package: str = "fusedce") -> str:
    """README.md's text made to work on the package index page (see the module docstring).

    Raises ValueError when README.md has no first bash block with a clone-only
    `pip install .` line: the install line for the index would otherwise be left out
    without a word.
    """
    repo = repo.rstrip("/")
    blob = f"{repo}/blob/{BRANCH}/"
    raw = repo.replace("https://github.com/", "https://raw.githubusercontent.com/", 1)
    raw = f"{raw}/{BRANCH}/"

    block = _FIRST_BASH_BLOCK.search(text)
    clone_line = _CLONE_INSTALL.search(text, block.start(1), block.end(1)) if block else None
    if clone_line is None:
        raise ValueError(
            "README.md: no `pip install .` line in its first bash code block, where the "
            "`pip install " + package + "` line for the package index goes; update "
            "tools/pypi_readme.py to README.md's new layout")
    pad = " " * max(1, 53 - len(f"pip install {package}"))
    install = (f"pip install {package}{pad}# from the package index (prebuilt: Linux x86-64)\n"
               f"# or in a clone of {repo}, building from source:\n")
    text = text[:clone_line.start()] + install + text[clone_line.start():]

    text = _IMAGE.sub(lambda m: m.group(1) + raw + m.group(2) + ")", text)
    text = _LINK.sub(lambda m: m.group(1) + blob + m.group(2) + ")", text)
    text = _REFERENCE.sub(lambda m: m.group(1) + blob + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("readme", nargs="?", type=Path, default=ROOT / "README.md")
    ap.add_argument("--repo", help="repository URL (default: pyproject.toml's Repository)")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", type=Path, help="write here (default: stdout)")
    where.add_argument("--in-place", action="store_true", help="overwrite README")
    args = ap.parse_args(argv)

    text = index_readme(args.readme.read_text(encoding="utf-8"),
                        args.repo or repository_url())
    left = relative_links(text)
    if left:
        print(f"pypi_readme: relative links left: {left}", file=sys.stderr)
        return 1
    out = args.readme if args.in_place else args.output
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
