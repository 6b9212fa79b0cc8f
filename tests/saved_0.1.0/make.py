"""Writes this folder: tiny saved models of every architecture and their scores of fixed pairs. It was run once with
release 0.1.0 (commit 1a7f3f6, before the layered layout) as ``python make.py tests/saved_0.1.0``; the folders it
wrote are kept as they were, so that tests/test_saved_models.py proves old folders still load to the same scores."""
import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

import pyterrier_marginkd as mkd

out = Path(sys.argv[1])
words = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
         + ("the of a in wing flutter heat transfer boundary layer flow at on swept speed transonic supersonic theory "
            "laminar plate flat transition").split() + list("abcdefghijklmnopqrstuvwxyz") + ["."])
base = out / "_encoder"
base.mkdir(parents=True, exist_ok=True)
(base / "vocab.txt").write_text("\n".join(words) + "\n")
BertTokenizerFast(str(base / "vocab.txt")).save_pretrained(base)
torch.manual_seed(0)
BertModel(BertConfig(vocab_size=len(words), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=8, max_position_embeddings=64)).save_pretrained(base)
builders = {
    "cross_encoder": lambda p: mkd.CrossEncoder.from_pretrained(p, max_length=32),
    "dot": lambda p: mkd.DotEncoder(p, pooling="mean", dim=4, max_length=32),
    "colbert": lambda p: mkd.ColBERT(p, dim=4, query_length=8, max_length=32),
    "pretts": lambda p: mkd.PreTT(p, max_length=32),
    "tk": lambda p: mkd.TK(p, num_layers=1, num_heads=2, ff_dim=8, max_length=32),
}
queries = ["wing flutter", "heat transfer in a laminar boundary layer", "wing flutter"]
texts = ["flutter of a swept wing at transonic speed", "heat transfer in a laminar boundary layer",
         "the theory of supersonic flow"]
expected = {}
for name, build in builders.items():
    torch.manual_seed(1)
    build(str(base)).save_pretrained(out / name)
    expected[name] = [float(s) for s in mkd.load(out / name).score_pairs(queries, texts)]
shutil.rmtree(base)
(out / "expected.json").write_text(json.dumps({"release": "0.1.0 (commit 1a7f3f6)", "queries": queries,
                                               "texts": texts, "scores": expected}, indent=1) + "\n")
