"""`marginkd train` under torchrun: 2 CPU processes (gloo) train in sync, shard the teacher, and save one student."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import PROJECT
from safetensors.torch import load_file

import pyterrier_marginkd as mkd
from pyterrier_marginkd import cli
from pyterrier_marginkd.training.distributed import Distributed

# runs the real CLI, then writes a hash of this rank's trained weights
DRIVER = textwrap.dedent("""
    import hashlib, os, sys
    from pathlib import Path
    from pyterrier_marginkd import cli
    from pyterrier_marginkd.training import distiller as distill

    fit_groups = distill.Distiller.fit_groups

    def train_and_hash(self, *args, **kwargs):
        fit_groups(self, *args, **kwargs)
        weights = b"".join(p.detach().numpy().tobytes() for p in self.student.model.parameters())
        Path(os.environ["HASH_DIR"], f"rank{os.environ['RANK']}").write_text(hashlib.sha256(weights).hexdigest())

    distill.Distiller.fit_groups = train_and_hash
    cli.main(sys.argv[1:])
""")


@pytest.fixture()
def models(tiny_bert_dir, tmp_path):
    """A tiny student without dropout (so one process and two give the same run) and a tiny teacher."""
    no_dropout = shutil.copytree(tiny_bert_dir, tmp_path / "no_dropout")
    config = json.loads((no_dropout / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (no_dropout / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    mkd.CrossEncoder.from_pretrained(no_dropout, max_length=64).save_pretrained(tmp_path / "student")
    torch.manual_seed(1)
    teacher = mkd.CrossEncoder.from_pretrained(tiny_bert_dir, max_length=64)
    with torch.no_grad():  # wide score margins, so that the student's gradients are far above rounding noise
        teacher.model.classifier.weight *= 100
    teacher.save_pretrained(tmp_path / "teacher")
    return tmp_path / "student", tmp_path / "teacher"


def cache_rows(path: Path) -> set[tuple[str, str]]:
    with sqlite3.connect(path / "db.sqlite3") as conn:
        return set(conn.execute("SELECT [group], key FROM cache"))


@pytest.mark.slow
def test_two_processes_train_like_one(models, cranfield, tmp_path):
    student, teacher = models
    args = ["train", "--data", str(cranfield.path), "--num-queries", "10", "--k", "10", "--index",
            str(tmp_path / "pisa"), "--student", str(student), "--teacher", str(teacher), "--max-length", "64",
            "--batch-size", "4", "--lr", "1e-3", "--max-steps", "4", "--seed", "3"]
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "hashes").mkdir()
    # PYTHONPATH: the processes import this checkout, whatever pyterrier_marginkd is installed
    env = {**os.environ, "HASH_DIR": str(tmp_path / "hashes"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(PROJECT), os.environ.get("PYTHONPATH", "")])}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run([*torchrun, str(tmp_path / "driver.py"), *args, "--output", str(tmp_path / "dist")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    hashes = {p.name: p.read_text() for p in (tmp_path / "hashes").iterdir()}
    assert set(hashes) == {"rank0", "rank1"} and hashes["rank0"] == hashes["rank1"]

    # the same command in one process reaches the same weights (gradients averaged over all ranks' groups)
    cli.main([*args, "--output", str(tmp_path / "single")])
    dist_weights = load_file(str(tmp_path / "dist" / "student" / "model.safetensors"))
    single_weights = load_file(str(tmp_path / "single" / "student" / "model.safetensors"))
    start = load_file(str(student / "model.safetensors"))
    moved = max(float((single_weights[k] - start[k]).abs().max()) for k in start)
    differ = max(float((single_weights[k] - dist_weights[k]).abs().max()) for k in start)
    assert moved > 1e-3 and differ < 1e-4, (moved, differ)  # AdamW amplifies rounding only in tiny gradients
    reloaded = mkd.load(tmp_path / "dist" / "student")
    assert reloaded.num_parameters() == mkd.load(tmp_path / "single" / "student").num_parameters()

    # each rank scored its own share of the teacher pairs; rank 0 merged them into the shared cache
    cache = next(p for p in (tmp_path / "dist" / "teacher_cache").iterdir() if "." not in p.name)
    shards = [cache.with_name(f"{cache.name}.rank{r}-of-2") for r in range(2)]
    assert all(cache_rows(s) for s in shards)
    assert cache_rows(cache) == cache_rows(shards[0]) | cache_rows(shards[1])
    assert cache_rows(cache) == cache_rows(next((tmp_path / "single" / "teacher_cache").iterdir()))


def test_sharding_and_gradient_averaging_without_a_launcher(tiny_ce):
    alone = Distributed()
    assert not alone.enabled and alone.is_main and alone.shard_name is None
    assert alone.shard([1, 2, 3]) == [1, 2, 3] and alone.on_main(lambda: 7) == 7
    assert Distributed(1, 3).shard(list(range(7))) == [1, 4] and Distributed(1, 3).shard_name == "rank1-of-3"
    before = [p.detach().clone() for p in tiny_ce.model.parameters()]
    assert alone.sync_gradients(torch.optim.SGD(tiny_ce.model.parameters()), 4, 0.5) == 0.5
    alone.broadcast(tiny_ce.model.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, tiny_ce.model.parameters()))

