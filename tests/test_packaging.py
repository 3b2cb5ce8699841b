"""Packaging: the license, pyproject.toml's metadata, CITATION.cff, CHANGELOG.md, the long
description for the package index (tools/pypi_readme.py), and the metadata of the installed
distribution. No build happens here: tools/build_wheels.sh builds and checks the sdist and
the wheel themselves."""

import importlib.metadata
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REPO = "https://github.com/fusedce/fusedce"  # assumed name, as in pyproject.toml
AUTHORS = "the fusedce authors"
PYTHONS = ["3.9", "3.10", "3.11", "3.12", "3.13"]
URL_LABELS = {"Homepage", "Repository", "Documentation", "Issues", "Changelog"}


def _toml():
    try:
        import tomllib
    except ImportError:
        tomllib = pytest.importorskip("tomli", reason="neither tomllib (3.11+) nor tomli")
    return tomllib


@pytest.fixture(scope="module")
def project():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return _toml().load(f)["project"]


def _cff(path):
    """Top-level `key: value` pairs of a CITATION.cff (block values and lists are skipped)."""
    pairs = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z][\w-]*):[ \t]*(.*?)[ \t]*$", line)
        if m and m.group(2) and m.group(2) not in (">-", "|", ">", "|-"):
            pairs[m.group(1)] = m.group(2).strip("\"'")
    return pairs


def _pypi_readme():
    spec = importlib.util.spec_from_file_location("pypi_readme", ROOT / "tools" / "pypi_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- files in the repository -------------------------------------------------------------------

def test_license_is_mit_with_our_copyright():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert f"Copyright (c) 2026 {AUTHORS}" in text
    assert "Permission is hereby granted, free of charge" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text


def test_pyproject_license_authors_and_urls(project):
    # The table form: scikit-build-core 0.10, the floor in [build-system], rejects PEP 639's
    # license string; LICENSE is shipped by scikit-build-core's default license globs.
    assert project["license"] == {"text": "MIT"}
    assert {"name": AUTHORS} in project["authors"]
    urls = project["urls"]
    assert set(urls) >= URL_LABELS
    assert urls["Repository"] == REPO
    assert urls["Documentation"] == f"{REPO}/tree/main/docs"
    assert urls["Issues"] == f"{REPO}/issues"
    assert urls["Changelog"] == f"{REPO}/blob/main/CHANGELOG.md"
    assert all(u.startswith("https://") for u in urls.values())
    assert project["keywords"] and "cross-entropy" in project["keywords"]


def test_pyproject_classifiers(project):
    classifiers = project["classifiers"]
    assert len(classifiers) == len(set(classifiers))
    assert [c for c in classifiers if c.startswith("License ::")] == [
        "License :: OSI Approved :: MIT License"]
    for c in ["Development Status :: 3 - Alpha", "Operating System :: POSIX :: Linux",
              "Programming Language :: C++", "Environment :: GPU :: NVIDIA CUDA",
              "Topic :: Scientific/Engineering :: Artificial Intelligence"]:
        assert c in classifiers
    versions = [c.rsplit(" :: ", 1)[1] for c in classifiers
                if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]
    assert versions == PYTHONS
    # requires-python's floor is the oldest version claimed.
    assert project["requires-python"] == f">={PYTHONS[0]}"


def test_pyproject_classifiers_are_known_to_the_index(project):
    trove = pytest.importorskip("trove_classifiers")
    unknown = [c for c in project["classifiers"] if c not in trove.classifiers]
    assert not unknown


def test_citation_cff(project):
    cff = _cff(ROOT / "CITATION.cff")
    assert cff["cff-version"] == "1.2.0"
    assert cff["type"] == "software"
    assert cff["message"] and cff["title"].startswith("fusedce")
    assert cff["version"] == project["version"]
    assert cff["license"] == project["license"]["text"]
    assert cff["repository-code"] == project["urls"]["Repository"]
    assert re.search(r"^authors:\n  - name: \"?" + AUTHORS,
                     (ROOT / "CITATION.cff").read_text(encoding="utf-8"), re.MULTILINE)


def test_citation_cff_is_yaml():
    yaml = pytest.importorskip("yaml")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0"
    assert cff["authors"] == [{"name": AUTHORS}]
    assert isinstance(cff["abstract"], str) and "\n" not in cff["abstract"]
    assert all(isinstance(k, str) and k for k in cff["keywords"])


def test_changelog_has_the_current_version(project):
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(r"^## " + re.escape(project["version"]) + r"\b", text, re.MULTILINE)


# --- the long description for the package index --------------------------------------------------

def test_index_readme_of_todays_readme(project):
    pr = _pypi_readme()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert project["readme"] == "README.md"
    text = pr.index_readme(readme, project["urls"]["Repository"])
    assert pr.relative_links(text) == []
    for target in pr.relative_links(readme):
        assert f"]({REPO}/blob/main/{target})" in text
    # The index's install line comes first in the first code block, then README's own lines.
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert first_block[0].startswith("pip install fusedce ")
    assert REPO in first_block[1] and first_block[1].startswith("#")
    assert first_block[2:] == readme.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    # Nothing else changed: two lines more, and every other line is README's own or a link.
    assert len(text.splitlines()) == len(readme.splitlines()) + 2


def test_index_readme_links_pictures_and_anchors():
    pr = _pypi_readme()
    text = ("```bash\npip install \".[demo]\"\n```\n"
            "See [api](docs/api.md#x), [`a[0]`](a.md), ![plot](docs/t.png), [top](#top),\n"
            "[site](/root), [web](https://example.org/a.md), <mailto:x@y>.\n"
            "[ref]: docs/fusion.md\n")
    out = pr.index_readme(text, "https://github.com/o/r/")
    assert "[api](https://github.com/o/r/blob/main/docs/api.md#x)" in out
    assert "[`a[0]`](https://github.com/o/r/blob/main/a.md)" in out
    assert "![plot](https://raw.githubusercontent.com/o/r/main/docs/t.png)" in out
    assert "[top](#top)" in out and "[site](/root)" in out
    assert "[web](https://example.org/a.md)" in out
    assert "[ref]: https://github.com/o/r/blob/main/docs/fusion.md" in out
    assert pr.relative_links(out) == []
    assert pr.relative_links(text) == ["docs/api.md#x", "a.md", "docs/t.png", "docs/fusion.md"]


def test_index_readme_refuses_a_readme_without_the_install_line():
    pr = _pypi_readme()
    with pytest.raises(ValueError, match="pip install"):
        pr.index_readme("# fusedce\n\n```bash\npython -m fusedce.demo\n```\n", REPO)


# --- the installed distribution ------------------------------------------------------------------

@pytest.fixture(scope="module")
def installed():
    """The metadata of the installed fusedce, when the fusedce imported is that install."""
    try:
        dist = importlib.metadata.distribution("fusedce")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fusedce is not installed")
    try:
        import fusedce
    except ImportError:
        pytest.skip("fusedce does not import")
    init = Path(fusedce.__file__).resolve()
    if Path(dist.locate_file("fusedce/__init__.py")).resolve() != init:
        pytest.skip(f"the fusedce imported ({init}) is not the installed distribution's")
    return dist


def test_installed_metadata_has_license_and_urls(installed, project):
    meta = installed.metadata
    stale = " (an install from before the license metadata? pip install . again)"
    assert (meta.get("License-Expression") or meta.get("License")) == "MIT", stale
    license_files = [f for f in installed.files or [] if f.name == "LICENSE"]
    assert license_files, stale
    assert "Copyright (c) 2026 the fusedce authors" in license_files[0].read_text()
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert urls == project["urls"], stale
    assert meta.get("Author") == AUTHORS or AUTHORS in (meta.get("Author-email") or "")
    assert sorted(meta.get_all("Classifier") or []) == sorted(project["classifiers"])
    assert meta["Version"] == project["version"]

