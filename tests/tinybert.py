"""A tiny BERT (a few thousand parameters) saved as a local model folder, and tiny text data sets.

Nothing is downloaded: the WordPiece vocabulary is written here, the tokenizer is built with the
``tokenizers`` library, and the weights are random, saved with ``save_pretrained`` the way a user
saves a model of their own.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import yaml

POSITIVE = ["good", "great", "excellent", "lovely", "tasty", "fresh", "happy", "best", "superb", "nice"]
NEGATIVE = ["bad", "awful", "terrible", "stale", "bland", "sad", "worst", "poor", "broken", "nasty"]
NEUTRAL = ["the", "a", "food", "was", "this", "is", "it", "and", "very", "tea", "coffee", "box", "my", "i", "we",
           "product", "taste", "buy", "again", "not"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# dict.fromkeys: "a" and "i" are words and letters; each token gets one id
VOCAB = list(dict.fromkeys(SPECIAL + sorted(set(POSITIVE + NEGATIVE + NEUTRAL)) + list("abcdefghijklmnopqrstuvwxyz.,!?'")
                           + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]))


def save_tiny_bert(folder: Path, *, layers: int = 2, hidden: int = 16, seed: int = 0, max_positions: int = 64) -> Path:
    """A BERT with ``layers`` layers of width ``hidden`` and its tokenizer, saved in ``folder``."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(VOCAB)}
    core = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                        model_max_length=max_positions)
    tokenizer.save_pretrained(str(folder))

    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=max_positions, pad_token_id=0)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(str(folder))
    return folder


def sentence(rng: random.Random, label: int, words: int = 6) -> str:
    """A sentence of neutral words with one to three words of its class's sentiment."""
    own = POSITIVE if label == 0 else NEGATIVE
    tokens = [rng.choice(NEUTRAL) for _ in range(words)]
    for _ in range(rng.randint(1, 3)):
        tokens.insert(rng.randrange(len(tokens) + 1), rng.choice(own))
    return " ".join(tokens)


def make_text_folder(root: Path, *, per_class: int = 12, splits=("train", "test"), fmt: str = "csv",
                     columns=("text", "label"), labels=("neg", "pos"), seed: int = 0) -> Path:
    """Two classes of short sentences (``pos`` sentences hold positive words) in ``root/<split>.<fmt>``."""
    rng = random.Random(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for split in splits:
        rows = [(sentence(rng, 0 if name == "pos" else 1, rng.randint(3, 12)), name)
                for name in labels for _ in range(per_class)]
        rng.shuffle(rows)
        write_rows(root / f"{split}.{fmt}", rows, columns)
    return root


def write_rows(path: Path, rows, columns=("text", "label")) -> Path:
    """``rows`` of ``(text, label)`` as CSV, TSV or JSON Lines, by ``path``'s suffix."""
    path = Path(path)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({columns[0]: t, columns[1]: lab}) + "\n" for t, lab in rows),
                        encoding="utf-8")
        return path
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",",
                            quoting=csv.QUOTE_NONE if path.suffix == ".tsv" else csv.QUOTE_MINIMAL)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def write_recipe(path: Path, *, epochs: int) -> Path:
    """A text-classification recipe for the tiny BERT: full fine-tuning, ``epochs`` epochs, only ``lr`` searched
    (random sampler, no pruner), a quarter of the training data held out."""
    path = Path(path)
    path.write_text(yaml.safe_dump({
        "task": "text-classification", "data": {"val_fraction": 0.25},
        "space": {"lr": {"low": 1.0e-2, "high": 3.0e-2, "log": True}},
        "fixed": {"epochs": epochs, "batch_size": 8, "max_length": 16, "freeze": 0, "lora_rank": 0},
        "sampler": {"name": "random"}, "pruner": {"name": "none"},
    }))
    return path
