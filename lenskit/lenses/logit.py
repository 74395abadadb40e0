"""The built-in ``logit`` lens: every stage straight through the model's own final norm and unembedding."""

from __future__ import annotations

from ..hookspecs import hookimpl
from .protocol import LensKind, StageLens

DESCRIPTION = "logit lens: the model's own final norm and unembedding applied to every stage"


def _open(arg, model: dict, stages: list) -> StageLens:
    return StageLens(kind="logit", description=DESCRIPTION, model_fingerprint=model["fingerprint"])


LOGIT = LensKind(name="logit", description=DESCRIPTION, open=_open)


@hookimpl
def register_lenses(register):
    register(LOGIT)
