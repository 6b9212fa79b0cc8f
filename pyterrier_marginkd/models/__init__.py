"""The re-rankers: a base scorer (:mod:`.base`), Hugging Face plumbing (:mod:`.hf`), int8 quantization
(:mod:`.quantize`), saving and loading (:mod:`.io`), one module per architecture (:mod:`.cross_encoder`, :mod:`.dot`,
:mod:`.colbert`, :mod:`.pretts`, :mod:`.tk`, with :mod:`.two_sided` beneath the last four) and the combinators
(:mod:`.ensemble`, :mod:`.cascade`), pre-computed document stores (:mod:`.docstore`) and what a scorer's scores
depend on (:mod:`.identity`). Models may import :mod:`pyterrier_marginkd.data`, never training or losses.

Nothing is imported here, so that ``pyterrier_marginkd.models.io`` (the CLI's model defaults) stays free of torch.
"""
