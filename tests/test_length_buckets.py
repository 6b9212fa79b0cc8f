"""Training batches split by query length: the runs cost fewer padded tokens, and the vectors and gradients are the
ones one padded batch gives."""
import pytest
import torch

import pyterrier_marginkd as mkd
from pyterrier_marginkd.models.hf import length_buckets

SHORT = ["wing flutter", "boundary layer heat transfer", "cone flow", "laminar flat plate"]
LONG = [" ".join(["the pressure distribution on a slender wing at transonic speed with a shock wave"] * 4),
        " ".join(["buckling of thin cylindrical shells under axial compression and creep"] * 4)]


def padded_cost(lengths, runs, overhead=32):
    return sum(len(run) * max(lengths[i] for i in run) + overhead for run in runs)


@pytest.mark.parametrize("lengths", [[12] * 8, [5, 7, 6, 200, 190, 8, 6, 5], [1], [3, 300], list(range(1, 40))])
def test_runs_cover_the_batch_once_and_cost_no_more_than_one_run(lengths):
    runs = length_buckets(lengths)
    assert sorted(i for run in runs for i in run) == list(range(len(lengths)))
    assert padded_cost(lengths, runs) <= padded_cost(lengths, [list(range(len(lengths)))])
    for run in runs:
        assert [lengths[i] for i in run] == sorted(lengths[i] for i in run)


def test_alike_lengths_stay_one_run_and_mixed_ones_split():
    assert len(length_buckets([12, 13, 12, 14])) == 1
    runs = length_buckets([5, 7, 6, 200, 190, 8, 6, 5])
    assert sorted(map(sorted, runs)) == [[0, 1, 2, 5, 6, 7], [3, 4]]


def test_split_query_vectors_equal_one_padded_batch(tiny_bert_dir):
    torch.manual_seed(0)
    student = mkd.DotEncoder(tiny_bert_dir, frozen_docs=True, num_layers=1, max_length=128)
    student.model.eval()  # no dropout: the same numbers either way
    queries = [SHORT[0], LONG[0], SHORT[1], SHORT[2], LONG[1], SHORT[3]]
    lengths = [len(ids) for ids, _ in student._tok.singles(queries)]
    assert len(length_buckets(lengths)) == 2  # the case under test: the batch is split
    split = student.train_query_vectors(queries)
    split.sum().backward()
    split_grads = [p.grad.clone() for p in student.model.parameters() if p.grad is not None]
    student.model.zero_grad()
    whole = student.model.embed({f"query_{k}": v for k, v in mkd.models.hf.pad(
        student._tok.singles(queries), student._tok.pad_id).items()}, "query")
    whole.sum().backward()
    whole_grads = [p.grad.clone() for p in student.model.parameters() if p.grad is not None]
    torch.testing.assert_close(split, whole, atol=1e-5, rtol=1e-4)
    assert len(split_grads) == len(whole_grads) > 0
    for a, b in zip(split_grads, whole_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
