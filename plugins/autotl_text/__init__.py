"""autotl task plugin: text classification from a table of labelled texts.

Layout: ``DATA/train.csv`` and optional ``DATA/val.csv``, ``DATA/test.csv`` (or ``.tsv``, ``.jsonl``),
columns ``text,label`` (other names through the recipe's ``data: {text_column, label_column}``).
The files are read and checked once; texts are tokenised once per tokenizer and max length, and
every epoch and later trial reuses the tensors. Batches are trimmed to their longest text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from autotl import Backbone, LoadedData, Task, TensorSplit, TrialData, hookimpl
from autotl.errors import UsageError

from ._table import Options, TextData, load_text_folder, tokenised

#: the shortest max length a trial may ask for: [CLS] and [SEP] plus a few tokens.
MIN_MAX_LENGTH = 8


@hookimpl
def register_tasks(register):
    register(TextClassification())


class TextClassification(Task):
    name = "text-classification"
    modality = "text"
    description = "labelled texts: DATA/train.csv (columns text,label), optional val.csv and test.csv; or .tsv, .jsonl"

    def load(self, path: Path, *, seed: int, val_fraction: float, options: Mapping[str, Any]) -> LoadedData:
        texts = load_text_folder(Path(path), seed=seed, val_fraction=val_fraction,
                                 options=Options.from_mapping(options or {}))
        return LoadedData(
            label_names=texts.classes,
            fingerprint=texts.fingerprint,
            report=texts.report(),
            has_test="test" in texts.splits,
            payload=texts,
        )

    def prepare(self, data: LoadedData, backbone: Backbone, params: Mapping[str, Any]) -> TrialData:
        texts: TextData = data.payload
        pre = backbone.preprocessing()
        tokenizer = pre.get("tokenizer")
        if tokenizer is None:
            raise UsageError(f"backbone {backbone.name!r} gives no tokenizer in preprocessing(); it cannot serve "
                             "text-classification")
        if tokenizer.pad_token is None:  # GPT-style tokenizers: pad with end-of-text (masked out anyway)
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        key = pre.get("tokenizer_key") or getattr(tokenizer, "name_or_path", None) or id(tokenizer)
        max_length = max_length_for(params, pre)
        left = getattr(tokenizer, "padding_side", "right") == "left"

        def transform(batch: Mapping[str, torch.Tensor], train: bool) -> dict[str, torch.Tensor]:
            mask = batch["attention_mask"]
            longest = max(1, int(mask.sum(1).max())) if mask.numel() else 1
            cut = slice(-longest, None) if left else slice(0, longest)
            return {"input_ids": batch["input_ids"][:, cut].long(), "attention_mask": mask[:, cut].long()}

        def split(name: str) -> TensorSplit:
            inputs = tokenised(texts, name, tokenizer, key, max_length)
            return TensorSplit(dict(inputs), texts.labels(name), transform)

        return TrialData(
            train=split("train"),
            val=split("val"),
            test=split("test") if "test" in texts.splits else None,
        )


def max_length_for(params: Mapping[str, Any], pre: Mapping[str, Any]) -> int:
    """The trial's ``max_length``, or the backbone's default; at most what the model takes."""
    limit = int(pre.get("model_max_length") or 512)
    value = params.get("max_length") or pre.get("max_length") or min(128, limit)
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"max_length must be a whole number of tokens, not {value!r}") from None
    if value < MIN_MAX_LENGTH:
        raise UsageError(f"max_length={value} is too short; use at least {MIN_MAX_LENGTH} tokens")
    return min(value, limit)


__all__ = ["TextClassification", "register_tasks", "max_length_for"]
