"""Text probes for transformers models: ``.jsonl`` or ``.csv`` files, tokenised once.

Tasks (the sample axis of the store):

- ``sequence``: one row per text, label column → classes; hidden states pooled over the
  sequence with ``cls`` (first token), ``last`` (last real token) or ``mean`` (real tokens).
- ``token``: one row per word, ``tokens`` (list of words) and ``tags`` (one label per word);
  each word is represented by its first sub-word.
- ``next-token``: one row per real position but the last; the target is the next token id,
  restricted to the ``top_k`` most frequent ids in the probe plus one "other" class.

Padding positions never enter activations. Class names are the distinct label values
(sorted), so the number of classes is what the file holds, not the largest label + 1.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from flq_audit.errors import ProbeError, ProbeNotFoundError
from flq_audit.probes.batches import NotPerTokenError, ProbeBatch

TaskOptions = Literal["sequence", "token", "next-token"]
PoolingOptions = Literal["cls", "last", "mean"]
TEXT_SUFFIXES = (".jsonl", ".csv")


@dataclass
class TextProbe:
    """Tokenised texts and the rows (sequences, words or positions) they contribute."""

    name: str
    encodings: dict[str, np.ndarray]  # (S, T) arrays: input_ids, attention_mask, ...
    row_seq: np.ndarray  # (N,) sequence of each row
    row_pos: np.ndarray  # (N,) token position of each row (-1: pooled sequence row)
    labels: np.ndarray  # (N,) class index
    class_names: list[str]
    task: TaskOptions
    pooling: PoolingOptions = "cls"
    kind: str = field(default="classes", init=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_samples(self) -> int:
        return int(self.labels.shape[0])

    @property
    def targets(self) -> np.ndarray:
        return np.eye(self.num_classes)[self.labels]

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for key in sorted(self.encodings):
            digest.update(key.encode() + np.ascontiguousarray(self.encodings[key]).tobytes())
        for array in (self.row_seq, self.row_pos, self.labels):
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(json.dumps([self.task, self.pooling, self.class_names]).encode())
        return digest.hexdigest()

    def head(self, n: int) -> TextProbe:
        """The first ``n`` texts (``--max-samples`` counts texts for text probes)."""
        keep = self.row_seq < n
        return TextProbe(self.name, {k: v[:n] for k, v in self.encodings.items()},
                         self.row_seq[keep], self.row_pos[keep], self.labels[keep],
                         self.class_names, self.task, self.pooling)

    def batches(self, batch_size: int) -> Iterator[ProbeBatch]:
        """Batches of ``batch_size`` texts with the reduction to their rows."""
        n_seq = self.encodings["input_ids"].shape[0]
        starts = np.searchsorted(self.row_seq, np.arange(0, n_seq + 1))
        for a in range(0, n_seq, batch_size):
            b = min(a + batch_size, n_seq)
            inputs = {k: torch.from_numpy(v[a:b]) for k, v in self.encodings.items()}
            lo, hi = int(starts[a]), int(starts[b])
            yield ProbeBatch(lo, hi, inputs, self._reducer(a, lo, hi))

    def _reducer(self, first_seq: int, lo: int, hi: int):
        seq = torch.from_numpy(self.row_seq[lo:hi] - first_seq)
        pos = torch.from_numpy(self.row_pos[lo:hi])
        mask = torch.from_numpy(self.encodings["attention_mask"][first_seq:])

        def reduce(hidden: torch.Tensor) -> torch.Tensor:
            if hidden.dim() < 3:
                if self.task != "sequence":
                    raise NotPerTokenError(f"input of shape {tuple(hidden.shape)} is not per token")
                return hidden  # already one row per text (e.g. a pooler)
            if self.task != "sequence":
                return hidden[seq, pos]
            m = mask[: hidden.shape[0], : hidden.shape[1]].to(hidden.dtype)
            if self.pooling == "cls":
                return hidden[:, 0]
            if self.pooling == "last":
                last = m.sum(1).long() - 1
                return hidden[torch.arange(hidden.shape[0]), last]
            return (hidden * m[..., None]).sum(1) / m.sum(1, keepdim=True)

        return reduce


def load_text_probe(
    path: str | Path,
    tokenizer: object,
    *,
    task: TaskOptions = "sequence",
    text_column: str = "text",
    label_column: str = "label",
    pooling: PoolingOptions = "cls",
    max_length: int = 128,
    top_k: int = 50,
) -> TextProbe:
    """Read and tokenise a text probe (see the module docstring for the tasks)."""
    records = _read_records(Path(path))
    tok = tokenizer
    if getattr(tok, "pad_token", None) is None:
        tok.pad_token = tok.eos_token  # type: ignore[attr-defined]  # a transformers tokenizer
    tok.padding_side = "right"  # type: ignore[attr-defined]  # a transformers tokenizer
    name = Path(path).name
    if task == "token":
        return _token_probe(name, records, tok, text_column, label_column, max_length)
    texts = [str(_field(r, text_column, i, path)) for i, r in enumerate(records)]
    enc = _encode(tok, texts, max_length, split=False)
    mask = enc["attention_mask"]
    if task == "sequence":
        raw = [str(_field(r, label_column, i, path)) for i, r in enumerate(records)]
        classes = sorted(set(raw))
        labels = np.array([classes.index(v) for v in raw], dtype=np.int64)
        n = len(texts)
        return TextProbe(name, enc, np.arange(n), np.full(n, -1), labels, classes, task, pooling)
    if task != "next-token":
        raise ProbeError(f"unknown text task {task!r}; expected sequence, token or next-token")
    seqs, poss = np.nonzero(mask[:, 1:] * mask[:, :-1])
    nxt = enc["input_ids"][seqs, poss + 1]
    common = [tid for tid, _ in Counter(nxt.tolist()).most_common(top_k)]
    index = {tid: i for i, tid in enumerate(common)}
    labels = np.array([index.get(t, len(common)) for t in nxt.tolist()], dtype=np.int64)
    names = [f"id{t}" for t in common] + ["other"]
    return TextProbe(name, enc, seqs, poss, labels, names, task, pooling)


def _token_probe(name, records, tok, tokens_column, tags_column, max_length) -> TextProbe:
    words = [_as_list(_field(r, tokens_column if tokens_column != "text" else "tokens", i, name))
             for i, r in enumerate(records)]
    tags = [_as_list(_field(r, tags_column if tags_column != "label" else "tags", i, name))
            for i, r in enumerate(records)]
    enc = _encode(tok, words, max_length, split=True)
    classes = sorted({t for row in tags for t in row})
    rows_seq, rows_pos, labels = [], [], []
    for s, word_ids in enumerate(enc.pop("_word_ids")):
        seen: set[int] = set()
        for pos, word in enumerate(word_ids):
            if word is None or word in seen or word >= len(tags[s]):
                continue
            seen.add(word)
            rows_seq.append(s)
            rows_pos.append(pos)
            labels.append(classes.index(tags[s][word]))
    return TextProbe(name, enc, np.array(rows_seq), np.array(rows_pos),
                     np.array(labels, dtype=np.int64), classes, "token")


def _as_list(value: object) -> list[str]:
    """A JSON list, or a whitespace-separated string (CSV cells); a lone scalar is one item."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, Iterable):
        return [str(v) for v in value]
    return [str(value)]


def _encode(tok, texts, max_length: int, *, split: bool) -> dict[str, np.ndarray]:
    enc = tok(texts, padding=True, truncation=True, max_length=max_length,
              is_split_into_words=split, return_tensors="np")
    out = {k: np.asarray(v).astype(np.int64) for k, v in enc.items()}
    if split:
        out["_word_ids"] = [enc.word_ids(i) for i in range(len(texts))]  # type: ignore[assignment]  # word ids, not an array
    return out


def _field(record: dict, column: str, index: int, path: object) -> object:
    if column not in record:
        raise ProbeError(
            f"text probe {str(path)!r}: record {index} has no column {column!r}; it has "
            f"{sorted(record)}", path=str(path),
        )
    return record[column]


def _read_records(path: Path) -> list[dict]:
    if not path.is_file():
        raise ProbeNotFoundError(f"text probe {str(path)!r} does not exist", path=path)
    try:
        if path.suffix.lower() == ".jsonl":
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            records = [json.loads(ln) for ln in lines]
        else:
            with path.open(newline="") as handle:
                records = list(csv.DictReader(handle))
    except (ValueError, csv.Error) as err:
        raise ProbeError(f"cannot read text probe {str(path)!r} ({err})", path=path) from err
    if not records:
        raise ProbeError(f"text probe {str(path)!r} holds no records", path=path)
    return records
