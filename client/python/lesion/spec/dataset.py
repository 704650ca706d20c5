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
    """What text to evaluate on: ``Dataset.text(s)``, ``Dataset.token_ids(ids)``, ``Dataset.named(n)``,
    or a prompt set ``Dataset.prompts([...])``."""

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

    @classmethod
    def prompts(cls, prompts: Iterable[str | Iterable[int]]) -> Dataset:
        """A prompt set: each prompt, a string (tokenized by the server) or a list of token ids, is
        a window of its own. Prompts of equal length share a forward pass; every number is what
        the prompt gives alone (and what a padded batch gives on its real tokens). Every pass
        reports one row per prompt (``Result.prompts``) besides the pooled measurements, and
        captures, massive activations, super weights and token outputs name the prompt by its
        index (their ``window``/``sequence``). ``Eval.seq_len`` defaults to the longest prompt;
        ``Eval.add_bos`` puts BOS before each one. At most 16384 prompts."""
        if isinstance(prompts, str):
            raise ValueError("Dataset.prompts: expected a list of prompts, got one string (use [text])")
        items = []
        for i, p in enumerate(prompts):
            if isinstance(p, (int, np.integer)):
                raise ValueError(
                    f"Dataset.prompts: prompt {i} is a single id {p!r}; a prompt of ids is a list: "
                    "Dataset.prompts([[1, 2, 3]])"
                )
            if isinstance(p, str):
                if not p:
                    raise ValueError(f"Dataset.prompts: prompt {i} is an empty string")
                items.append(p)
            else:
                items.append(tuple(_indices(f"Dataset.prompts[{i}]", p, allow_empty=False)))
        if not items:
            raise ValueError("Dataset.prompts: give at least one prompt")
        return cls("prompts", tuple(items))

    def to_dict(self):
        """The spec's ``dataset`` field in proto3 JSON."""
        if self.kind == "token_ids":
            return {"token_ids": {"ids": list(self.value)}}
        if self.kind == "prompts":
            return {
                "prompts": {
                    "prompts": [
                        {"text": p} if isinstance(p, str) else {"token_ids": {"ids": list(p)}} for p in self.value
                    ]
                }
            }
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
