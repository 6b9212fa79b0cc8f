"""``marginkd rerank``: a model re-ranks the candidates of any TREC run, query by query, with the texts of a collection
or of a Lucene index. Everything the run names is checked before the model loads. Nothing heavy is imported until
the command runs (``pyterrier_marginkd.data`` imports PyTerrier)."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only: importing these takes seconds
    from pyterrier_marginkd.data.collection import Collection
    from pyterrier_marginkd.data.lucene import LuceneIndex

def _text_source(args: argparse.Namespace) -> tuple[Collection | LuceneIndex, str]:
    """Where the texts come from (--docs or --index), and how to name it in messages."""
    if args.index:
        from pyterrier_marginkd.data.lucene import LuceneIndex

        return LuceneIndex(args.index), f"the Lucene index {args.index} (--index)"
    from pyterrier_marginkd.data.collection import Collection

    return Collection(args.docs), f"the collection {args.docs} (--docs)"


def cmd_rerank(args: argparse.Namespace) -> None:
    import pandas as pd
    import pyterrier as pt

    from pyterrier_marginkd.data.runs import RunWriter, name_ids, read_run, read_topics
    from pyterrier_marginkd.models.io import load_scorer

    qids, docnos, candidates = [], {}, 0
    try:
        topics = read_topics(args.topics)
        for query in read_run(args.run, args.k):  # a first pass: what the re-ranking will need
            qids.append(query.qid)
            docnos.update(dict.fromkeys(query.docnos))
            candidates += len(query.docnos)
    except (OSError, ValueError) as err:  # a missing or malformed file: the message names the file and line
        raise SystemExit(f"marginkd rerank: {err}") from None
    if not qids:
        raise SystemExit(f"{args.run} holds no run lines")
    unknown = [qid for qid in qids if qid not in topics]
    if unknown:
        raise SystemExit(f"{len(unknown)} of the {len(qids)} qids of the run {args.run} have no query in "
                         f"{args.topics}: {name_ids(unknown)}")
    try:
        source, where = _text_source(args)
        missing = source.missing_docnos(docnos)
    except (OSError, ImportError, RuntimeError) as err:  # no such collection or index; no Pyserini or Java for it
        raise SystemExit(f"marginkd rerank: {err}") from None
    if missing:
        raise SystemExit(f"{len(missing)} of the {len(docnos)} docnos of the run's top {args.k} are not in {where}: "
                         f"{name_ids(missing)}")
    model = load_scorer(args.model, batch_size=args.batch_size)
    get_text = source.get_text()
    writer = RunWriter(args.output, args.tag)
    try:
        for query in pt.tqdm(read_run(args.run, args.k), total=len(qids), desc="rerank", unit="query"):
            frame = pd.DataFrame({"qid": query.qid, "query": topics[query.qid], "docno": query.docnos,
                                  "score": query.scores, "rank": range(len(query.docnos))})
            ranked = model(get_text(frame)).sort_values("rank", kind="stable")
            writer.write(query.qid, list(ranked["docno"]), list(ranked["score"]))
    except BaseException:
        writer.discard()
        raise
    writer.close()
    unranked = len(topics) - len(qids)
    note = f"; {unranked} topics of {args.topics} have no candidates in the run" if unranked else ""
    print(f"re-ranked {candidates} candidates of {len(qids)} queries (top {args.k} of {args.run}) with {args.model}: "
          f"{args.output}{note}")
