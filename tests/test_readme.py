"""README.md's Python snippets run as written: in order, in one namespace, from a project folder whose
``../shared/data/cranfield`` is a slice of Cranfield, with a tiny random BERT for every model.

Substitutions (nothing else in a snippet changes): ``$MARGINKD_MODEL`` makes ``mkd.default_model()`` the tiny BERT;
each quoted hub id (``"org/name"`` of a hub organisation below) is replaced by the tiny BERT's folder; every
``Distiller`` stops after :data:`MAX_STEPS` optimizer steps. A snippet marked ``<!-- readme-test: skip (why) -->`` on
the line before its fence is only compiled, and reported as a skipped test with its reason. One marked
``<!-- readme-test: needs pyserini -->`` runs in its place where Pyserini and a Java >= 21 are found, and is reported
as a skipped test with the reason elsewhere (it must define nothing later snippets use).
"""
from __future__ import annotations

import gzip
import json
import linecache
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import pyserini_missing, tiny_encoder_folder

import pyterrier_marginkd as mkd
from pyterrier_marginkd import cli
from pyterrier_marginkd.models import io

README = Path(__file__).resolve().parents[1] / "README.md"
#: hub organisations whose quoted ids in snippets stand for the tiny model
HUB_ORGS = ("cross-encoder", "sentence-transformers", "BAAI")
#: optimizer steps a Distiller may take in a snippet here
MAX_STEPS = 2
#: snippets the README may leave unrun (each says why); a new one must be argued for in review
ALLOWED_SKIPS = 1
_FENCE = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_SKIP = re.compile(r"<!-- readme-test: skip \((.+)\) -->")
_NEEDS_PYSERINI = "<!-- readme-test: needs pyserini -->"
_HUB_ID = re.compile(r"""(["'])((?:%s)/[\w.-]+)\1""" % "|".join(HUB_ORGS))


@dataclass
class Snippet:
    line: int  # README line of its first code line
    code: str
    skip: str | None  # the reason it is not run, or None
    needs_pyserini: bool = False  # run only where Pyserini and a Java >= 21 are found

    def source(self, replace: dict[str, str] | None = None) -> str:
        """The code at its README line numbers (blank lines before it), with ``replace``'s substitutions."""
        code = self.code
        for old, new in (replace or {}).items():
            code = code.replace(old, new)
        return "\n" * (self.line - 1) + code

    def compiled(self, replace: dict[str, str] | None = None):
        """The code compiled under README.md's name and line numbers, so that a traceback names the line that failed
        (and pytest shows the snippet from its first line on)."""
        return compile(self.source(replace).lstrip("\n"), str(README), "exec").replace(co_firstlineno=self.line)


def snippets() -> list[Snippet]:
    text = README.read_text(encoding="utf8")
    found = []
    for match in _FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = _SKIP.fullmatch(before.strip())
        found.append(Snippet(text.count("\n", 0, match.start(1)) + 1, match.group(1), skip and skip.group(1),
                             before.strip() == _NEEDS_PYSERINI))
    return found


def tiny_cranfield(source: Path, target: Path, *, num_train: int = 15, num_test: int = 4, max_words: int = 120) -> None:
    """The first train and test queries of Cranfield with their qrels, and the documents they judge (their texts cut
    to ``max_words`` words)."""
    target.mkdir(parents=True)
    topics = {split: (source / f"topics.{split}.tsv").read_text().splitlines()[:num]
              for split, num in (("train", num_train), ("test", num_test))}
    qids = {split: {line.split("\t")[0] for line in lines} for split, lines in topics.items()}
    qrels = {split: [line for line in (source / f"qrels.{split}.txt").read_text().splitlines()
                     if line.split()[0] in qids[split]] for split in topics}
    for split in topics:
        (target / f"topics.{split}.tsv").write_text("\n".join(topics[split]) + "\n")
        (target / f"qrels.{split}.txt").write_text("\n".join(qrels[split]) + "\n")
    (target / "topics.tsv").write_text("\n".join(topics["train"] + topics["test"]) + "\n")
    (target / "qrels.txt").write_text("\n".join(qrels["train"] + qrels["test"]) + "\n")
    judged = {line.split()[2] for lines in qrels.values() for line in lines}
    with gzip.open(source / "docs.jsonl.gz", "rt", encoding="utf8") as fin, \
            gzip.open(target / "docs.jsonl.gz", "wt", encoding="utf8") as fout:
        for line in fin:
            doc = json.loads(line)
            if str(doc["docno"]) in judged:
                fout.write(json.dumps({**doc, "text": " ".join(doc["text"].split()[:max_words])}) + "\n")


def test_the_readme_has_its_snippets_and_few_skips():
    found = snippets()
    assert len(found) >= 1, f"only {len(found)} ```python blocks found in README.md: is the fence pattern stale?"
    skipped = [s for s in found if s.skip]
    assert len(skipped) <= ALLOWED_SKIPS, [f"README.md:{s.line}: {s.skip}" for s in skipped]
    for snippet in found:
        snippet.compiled()  # a syntax error fails here, skipped snippets included


@pytest.mark.parametrize("snippet", [s for s in snippets() if s.skip], ids=lambda s: f"README.md:{s.line}")
def test_skipped_snippet(snippet):
    snippet.compiled()
    pytest.skip(f"README.md:{snippet.line} is not run: {snippet.skip}")


@pytest.mark.parametrize("snippet", [s for s in snippets() if s.needs_pyserini], ids=lambda s: f"README.md:{s.line}")
def test_pyserini_snippet(snippet):
    snippet.compiled()
    reason = pyserini_missing()
    if reason:
        pytest.skip(f"README.md:{snippet.line} is not run here: {reason}")


def test_marginkd_model_overrides_the_default_model(monkeypatch, tmp_path):
    monkeypatch.delenv(io.MODEL_ENV, raising=False)
    assert mkd.default_model() == cli.default_model() != str(tmp_path)
    monkeypatch.setenv(io.MODEL_ENV, str(tmp_path))
    assert mkd.default_model() == str(tmp_path)
    assert cli.build_parser().parse_args(["train", "--output", "x"]).student == str(tmp_path)


@pytest.fixture(scope="module")
def tiny_bert_dir():
    """A tiny random BERT as deep as all-MiniLM-L6-v2 (6 layers): snippets pick layers of MiniLM by index."""
    torch.manual_seed(0)
    return Path(tiny_encoder_folder(num_layers=6))


def test_readme_snippets_run_in_order(cranfield, tiny_bert_dir, tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    project.mkdir()
    tiny_cranfield(cranfield.path, tmp_path / "shared" / "data" / "cranfield")
    monkeypatch.chdir(project)
    monkeypatch.setenv(io.MODEL_ENV, str(tiny_bert_dir))
    init = mkd.Distiller.__init__

    def few_steps(self, *args, **kwargs):
        kwargs["max_steps"] = min(kwargs.get("max_steps") or MAX_STEPS, MAX_STEPS)
        init(self, *args, **kwargs)
    monkeypatch.setattr(mkd.Distiller, "__init__", few_steps)

    found = snippets()
    hub_ids = {m.group(0): repr(str(tiny_bert_dir)) for s in found for m in _HUB_ID.finditer(s.code)}
    namespace: dict = {"__name__": "__readme__"}
    timings = []
    missing = pyserini_missing()
    for snippet in found:
        if snippet.skip or (snippet.needs_pyserini and missing):
            continue
        source = snippet.source(hub_ids)  # what pytest shows of a failing line: Python, not the README's Markdown
        monkeypatch.setitem(linecache.cache, str(README), (len(source), None, source.splitlines(True), str(README)))
        start = time.perf_counter()
        exec(snippet.compiled(hub_ids), namespace)
        timings.append(f"README.md:{snippet.line} {time.perf_counter() - start:.1f} s")
    with capsys.disabled():
        print(f"\nREADME snippets run: {', '.join(timings)}; "
              f"not run: {sum(bool(s.skip) or (s.needs_pyserini and bool(missing)) for s in found)} (see the skipped "
              "test_skipped_snippet and test_pyserini_snippet)")
    assert (project / "runs" / "student-L2" / "marginkd.json").exists()  # the tour's distilled student, saved
