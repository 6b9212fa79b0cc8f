"""Losses by name: the command line's names (:data:`LOSSES`) and the Distiller's ``loss=`` argument."""
from __future__ import annotations

from pyterrier_marginkd.losses.alignment import QueryAlignment
from pyterrier_marginkd.losses.base import Combined, JudgedOnly, RankingLoss
from pyterrier_marginkd.losses.layers import HiddenStateMSE
from pyterrier_marginkd.losses.listwise import CPRD, KLDiv, ListwiseCE, PlackettLuce
from pyterrier_marginkd.losses.pairwise import Hinge, RankNet
from pyterrier_marginkd.losses.pointwise import MSE, MarginMSE


def judged_ranknet() -> JudgedOnly:
    """RankNet on the groups of judged queries only (beside distillation on pseudo-queries)."""
    return JudgedOnly(RankNet())


def judged_listwise_ce() -> JudgedOnly:
    """The list-wise cross-entropy on the groups of judged queries only."""
    return JudgedOnly(ListwiseCE())


#: names accepted by the command line, mapped to loss factories
LOSSES = {
    "margin-mse": MarginMSE,
    "mse": MSE,
    "kl": KLDiv,
    "plackett-luce": PlackettLuce,
    "cprd": CPRD,
    "ranknet": RankNet,
    "hinge": Hinge,
    "listwise-ce": ListwiseCE,
    "judged-ranknet": judged_ranknet,
    "judged-listwise-ce": judged_listwise_ce,
    "query-alignment": QueryAlignment,
}


def by_name(name: str) -> RankingLoss:
    """A loss from its command-line name; ``a+b`` sums losses (``margin-mse+ranknet``)."""
    parts = [p.strip() for p in name.split("+")]
    unknown = [p for p in parts if p not in LOSSES]
    if unknown:
        raise ValueError(f"unknown loss {unknown[0]!r}; choose from {sorted(LOSSES)} (combine with '+')")
    losses = [LOSSES[p]() for p in parts]
    return losses[0] if len(losses) == 1 else Combined([(1.0, loss) for loss in losses])


def _loss_names() -> dict[str, str]:
    """Accepted spellings of each loss name (case, '-' and '_' aside; class names too) -> its name in LOSSES."""
    names = {}
    for name, factory in LOSSES.items():
        for spelling in (name, factory.__name__):
            names[spelling.lower().replace("-", "").replace("_", "")] = name
    return names


def resolve_loss(loss: RankingLoss | str | None) -> RankingLoss:
    """The Distiller's loss: a RankingLoss, or a name of :data:`losses.LOSSES` (any case; ``marginmse``, ``MarginMSE``
    and ``margin-mse`` alike; ``a+b`` sums losses); None is Margin-MSE."""
    if loss is None:
        return MarginMSE()
    if isinstance(loss, str):
        names = _loss_names()
        parts = [p.strip() for p in loss.split("+")]
        resolved = [names.get(p.lower().replace("-", "").replace("_", ""), p) for p in parts]
        return by_name("+".join(resolved))  # a ValueError naming the accepted names for an unknown one
    if isinstance(loss, RankingLoss):
        return loss
    hint = ""
    if isinstance(loss, type) and issubclass(loss, RankingLoss):
        hint = f" (a class: give an instance, e.g. {loss.__name__}())"
    elif isinstance(loss, HiddenStateMSE):
        hint = " (intermediate-layer distillation is given as intermediate=, beside a ranking loss)"
    raise TypeError(f"loss must be a pyterrier_marginkd.losses.RankingLoss (e.g. losses.MarginMSE()) or one of the "
                    f"names {sorted(LOSSES)}; got {loss!r}{hint}")
