"""Model kinds: one protocol (:class:`ModelKind`, ``kind.py``) and its implementations.

* ``transformer.py`` — causal LMs from transformers: a hub id, a local folder, or the scratch model;
  ``skeleton.py`` — a folder's recorded module tree, which spares `--check` importing the model's code.
* ``ngram/`` — the count-based n-gram (``model.name_or_path: ngram``), trained by counting.

:func:`kind_for` picks the kind that claims ``model.name_or_path`` (the n-gram, or any kind added with
:func:`register_kind`; else the transformer); :func:`kind_of` gives the kind of a model it built (a model
that carries none is scored and sampled as a causal LM: the protocol's defaults). Nothing
outside a kind's own module tests what a model is. May import: config, errors, io, seeding, data.
"""

from __future__ import annotations

from collapse.models.kind import KIND_ATTR, Loaded, ModelFacts, ModelKind, TrainJob, context_length, kind_of, mark

__all__ = ["KIND_ATTR", "Loaded", "ModelFacts", "ModelKind", "TrainJob", "context_length", "kind_for", "kind_of",
           "mark", "register_kind", "unregister_kind"]

_KINDS: list[ModelKind] = []  # checked in order; the transformer serves whatever none of them claims
_DEFAULT: list[ModelKind] = []


def _builtin() -> None:
    if not _DEFAULT:
        from collapse.models.ngram import NGramKind
        from collapse.models.transformer import TransformerKind

        _DEFAULT.append(TransformerKind())
        _KINDS.append(NGramKind())


def register_kind(kind: ModelKind) -> ModelKind:
    """Add a kind: it serves every ``model.name_or_path`` its ``claims`` accepts (before the built-in ones)."""
    _builtin()
    _KINDS.insert(0, kind)
    return kind


def unregister_kind(kind: ModelKind) -> None:
    _KINDS[:] = [k for k in _KINDS if k is not kind]


def kind_for(name_or_path: str) -> ModelKind:
    """The kind that serves ``model.name_or_path``."""
    _builtin()
    return next((k for k in _KINDS if k.claims(name_or_path)), _DEFAULT[0])
