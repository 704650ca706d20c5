"""What text an experiment evaluates on (``Dataset``) and how it is cut into windows (``Eval``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._checks import _index, _indices

NAMED_DATASETS = ("wikitext-2-raw-test", "tinystories-sample")  # bundled with the server (not enforced)


@dataclass(frozen=True)
class Dataset:
    """What text to evaluate on: ``Dataset.text(s)``, ``Dataset.token_ids(ids)``, ``Dataset.named(n)``."""

    kind: str
    value: Any

    @classmethod
    def text(cls, s: str) -> Dataset:
        """Literal text, tokenized by the server with the model's tokenizer."""
        if not isinstance(s, str) or not s:
            raise ValueError("Dataset.text: expected a non-empty string")
        return cls("text", s)

    @classmethod
    def token_ids(cls, ids: Iterable[int]) -> Dataset:
        """Token ids of the model's vocabulary, used as they are."""
        return cls("token_ids", tuple(_indices("Dataset.token_ids", ids, allow_empty=False)))

    @classmethod
    def named(cls, name: str) -> Dataset:
        """A dataset the server bundles by name (``NAMED_DATASETS``, e.g. "tinystories-sample")."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"Dataset.named: expected a dataset name such as {', '.join(NAMED_DATASETS)}")
        return cls("named", name)

    def to_dict(self):
        """The spec's ``dataset`` field in proto3 JSON."""
        if self.kind == "token_ids":
            return {"token_ids": {"ids": list(self.value)}}
        return {self.kind: self.value}


@dataclass(frozen=True)
class Eval:
    """How windows are cut (docs/conventions.md); zeros mean the server's defaults: ``seq_len``
    min(512, the model's context), ``stride`` none (non-overlapping windows), ``max_windows`` all,
    ``batch_size`` 8 windows per forward pass; ``add_bos`` starts every window with BOS."""

    seq_len: int = 0
    stride: int = 0
    max_windows: int = 0
    batch_size: int = 0
    add_bos: bool = False

    def __post_init__(self):
        for name in ("seq_len", "stride", "max_windows", "batch_size"):
            _index(f"Eval.{name}", getattr(self, name))
        if not isinstance(self.add_bos, (bool, np.bool_)):
            raise ValueError(f"Eval.add_bos: expected a bool, got {self.add_bos!r}")

    def to_dict(self):
        """The spec's ``eval`` field in proto3 JSON (every field, zeros included)."""
        return {
            "seq_len": int(self.seq_len),
            "stride": int(self.stride),
            "max_windows": int(self.max_windows),
            "batch_size": int(self.batch_size),
            "add_bos": bool(self.add_bos),
        }
