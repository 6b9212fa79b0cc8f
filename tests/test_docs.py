"""The user guide in docs/ builds and its Python blocks run; benchmarks/README.md names every script and result.

Each page's ```python blocks run in order in one namespace of their own (a page does not depend on another), from a
project folder whose ``../shared/data/cranfield`` is the slice of Cranfield that tests/test_readme.py makes, with the
same substitutions as the README's snippets: ``$MARGINKD_MODEL`` (``mkd.default_model()``) and every quoted hub id
are a tiny random 6-layer BERT, and every ``Distiller`` stops after :data:`MAX_STEPS` optimizer steps. Pages share
the project's ``runs/`` folder, so the BM25 index is built once. A block marked ``<!-- docs-test: skip (why) -->`` on
the line before its fence is only compiled and reported as a skipped test with its reason; one marked
``<!-- docs-test: needs pyserini -->`` runs only where Pyserini and a Java >= 21 are found.
"""
from __future__ import annotations

import importlib.util
import linecache
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import PROJECT, pyserini_missing, tiny_encoder_folder
from test_readme import HUB_ORGS, tiny_cranfield

import pyterrier_marginkd as mkd
from pyterrier_marginkd.models import io

DOCS = PROJECT / "docs"
MKDOCS_YML = PROJECT / "mkdocs.yml"
BENCHMARKS = PROJECT / "benchmarks"
#: optimizer steps a Distiller may take in a block here
MAX_STEPS = 2
#: blocks the guide may leave unrun (each says why); a new one must be argued for in review
ALLOWED_SKIPS = 1
_FENCE = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_SKIP = re.compile(r"<!-- docs-test: skip \((.+)\) -->")
_NEEDS_PYSERINI = "<!-- docs-test: needs pyserini -->"
_HUB_ID = re.compile(r"""(["'])((?:%s)/[\w.-]+)\1""" % "|".join(HUB_ORGS))


@dataclass
class Block:
    page: Path
    line: int  # the page's line of the block's first code line
    code: str
    skip: str | None  # why it is not run, or None
    needs_pyserini: bool = False

    @property
    def name(self) -> str:
        return f"docs/{self.page.name}:{self.line}"

    def compiled(self, replace: dict[str, str] | None = None):
        """The code (with ``replace``'s substitutions) compiled under the page's name and line numbers, so that a
        traceback names the line of the page that failed."""
        code = self.code
        for old, new in (replace or {}).items():
            code = code.replace(old, new)
        return compile(code, str(self.page), "exec").replace(co_firstlineno=self.line)


def nav_pages() -> list[str]:
    """The Markdown files mkdocs.yml's nav lists, in order (paths relative to docs/)."""
    def walk(entries) -> list[str]:
        found = []
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            found += walk(value) if isinstance(value, list) else [value]
        return found
    return walk(yaml.safe_load(MKDOCS_YML.read_text(encoding="utf8"))["nav"])


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf8")
    found = []
    for match in _FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        skip = _SKIP.fullmatch(before)
        found.append(Block(page, text.count("\n", 0, match.start(1)) + 1, match.group(1), skip and skip.group(1),
                           before == _NEEDS_PYSERINI))
    return found


PAGES = [DOCS / name for name in nav_pages()]
ALL_BLOCKS = [b for page in PAGES if page.exists() for b in blocks(page)]


def test_every_nav_page_exists_and_every_page_is_in_the_nav():
    assert len(PAGES) >= 6, PAGES
    missing = [str(p.relative_to(PROJECT)) for p in PAGES if not p.exists()]
    assert not missing, f"pages in mkdocs.yml's nav that do not exist: {missing}"
    unlisted = sorted(str(p.relative_to(PROJECT)) for p in DOCS.rglob("*.md") if p not in PAGES)
    assert not unlisted, f"pages missing from mkdocs.yml's nav: {unlisted}"


def test_the_api_page_documents_every_public_name():
    api = (DOCS / "api.md").read_text(encoding="utf8")
    documented = set(re.findall(r"^::: pyterrier_marginkd\.(\w+)$", api, re.MULTILINE))
    assert documented == set(mkd.__all__), (f"missing: {sorted(set(mkd.__all__) - documented)}, "
                                            f"not public: {sorted(documented - set(mkd.__all__))}")


def test_the_guide_has_its_blocks_and_few_skips():
    assert len(ALL_BLOCKS) >= 10, f"only {len(ALL_BLOCKS)} ```python blocks found in docs/: is the fence stale?"
    skipped = [b.name + ": " + b.skip for b in ALL_BLOCKS if b.skip]
    assert len(skipped) <= ALLOWED_SKIPS, skipped
    for block in ALL_BLOCKS:
        block.compiled()  # a syntax error fails here, skipped blocks included


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.skip], ids=lambda b: b.name)
def test_skipped_block(block):
    pytest.skip(f"{block.name} is not run: {block.skip}")


@pytest.fixture(scope="module")
def tiny_bert_dir():
    """A tiny random BERT as deep as all-MiniLM-L6-v2 (6 layers): blocks pick layers of MiniLM by index."""
    torch.manual_seed(0)
    return Path(tiny_encoder_folder(num_layers=6))


@pytest.fixture(scope="module")
def project(cranfield, tmp_path_factory) -> Path:
    """A project folder beside ``shared/data/cranfield`` (a slice), shared by the pages (their ``runs/``)."""
    root = tmp_path_factory.mktemp("docs")
    tiny_cranfield(cranfield.path, root / "shared" / "data" / "cranfield")
    (root / "project").mkdir()
    return root / "project"


@pytest.fixture()
def one_thread():
    """Tiny models score and train fastest on one torch thread, and a second thread waits on a busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("page", [p for p in PAGES if p.exists() and blocks(p)], ids=lambda p: f"docs/{p.name}")
def test_page_blocks_run_in_order(page, project, tiny_bert_dir, one_thread, monkeypatch, capsys):
    monkeypatch.chdir(project)
    monkeypatch.setenv(io.MODEL_ENV, str(tiny_bert_dir))
    init = mkd.Distiller.__init__

    def few_steps(self, *args, **kwargs):
        kwargs["max_steps"] = min(kwargs.get("max_steps") or MAX_STEPS, MAX_STEPS)
        init(self, *args, **kwargs)
    monkeypatch.setattr(mkd.Distiller, "__init__", few_steps)

    found = blocks(page)
    hub_ids = {m.group(0): repr(str(tiny_bert_dir)) for b in found for m in _HUB_ID.finditer(b.code)}
    namespace: dict = {"__name__": "__docs__"}
    missing = pyserini_missing() if any(b.needs_pyserini for b in found) else None
    timings, not_run = [], []
    for block in found:
        if block.skip or (block.needs_pyserini and missing):
            not_run.append(f"{block.name} ({block.skip or missing})")
            continue
        source = "\n" * (block.line - 1) + block.code
        for old, new in hub_ids.items():
            source = source.replace(old, new)
        monkeypatch.setitem(linecache.cache, str(page), (len(source), None, source.splitlines(True), str(page)))
        start = time.perf_counter()
        exec(block.compiled(hub_ids), namespace)
        timings.append(f"{block.line}: {time.perf_counter() - start:.1f} s")
    with capsys.disabled():
        print(f"\ndocs/{page.name} blocks run (line: seconds) {', '.join(timings)}"
              + (f"; not run: {', '.join(not_run)}" if not_run else ""))


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]'")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(MKDOCS_YML),
                           "--site-dir", str(tmp_path / "site")], cwd=PROJECT, capture_output=True, text=True,
                          timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "WARNING" not in output, output
    for page in PAGES:
        built = "index.html" if page.name == "index.md" else f"{page.stem}/index.html"
        assert (tmp_path / "site" / built).exists(), built


def test_benchmarks_readme_names_every_script_and_result():
    text = (BENCHMARKS / "README.md").read_text(encoding="utf8")
    scripts = sorted(p.name for p in BENCHMARKS.glob("*.py"))
    assert not [s for s in scripts if s not in text], "benchmarks/README.md does not name " + str(
        [s for s in scripts if s not in text])
    results = sorted(p.name for p in (BENCHMARKS / "results").iterdir())
    unnamed = [r for r in results if not re.search(rf"(?<![\w-]){re.escape(r)}(?![\w-])", text)]
    assert not unnamed, f"benchmarks/README.md does not mention these results: {unnamed}"
