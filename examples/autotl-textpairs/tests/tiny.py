"""A tiny BERT saved as a local model folder (random weights, nothing downloaded) and tiny pair data sets."""

from __future__ import annotations

import csv
import random
from pathlib import Path

POSITIVE = ["good", "great", "lovely", "tasty", "fresh", "happy"]
NEGATIVE = ["bad", "awful", "stale", "bland", "sad", "broken"]
NEUTRAL = ["the", "a", "food", "was", "this", "is", "it", "and", "very", "tea", "coffee", "box", "my", "we"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(POSITIVE + NEGATIVE + NEUTRAL))


def save_tiny_bert(folder: Path) -> Path:
    """A two-layer BERT of width 16 and its WordPiece tokenizer (pairs: ``[CLS] a [SEP] b [SEP]``), in ``folder``."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(VOCAB)}
    core = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]", model_max_length=64,
                            model_input_names=["input_ids", "token_type_ids", "attention_mask"]).save_pretrained(str(folder))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64, pad_token_id=0)).save_pretrained(str(folder))
    return folder


def sentence(rng: random.Random, positive: bool) -> str:
    words = [rng.choice(NEUTRAL) for _ in range(rng.randint(2, 6))]
    words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if positive else NEGATIVE))
    return " ".join(words)


def make_pairs(root: Path, *, per_class: int = 10, splits=("train", "test"), seed: int = 0) -> Path:
    """Pairs of reviews labelled ``agree`` (both positive or both negative) or ``disagree``, in ``root/<split>.csv``."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split in splits:
        rows = []
        for label in ("agree", "disagree"):
            for _ in range(per_class):
                first = rng.random() < 0.5
                second = first if label == "agree" else not first
                rows.append((sentence(rng, first), sentence(rng, second), label))
        rng.shuffle(rows)
        with (root / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text_a", "text_b", "label"])
            writer.writerows(rows)
    return root
