"""The network a transformers backbone builds: an encoder, a pooling of its tokens, and a linear head."""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from torch import nn

#: ``transformer`` is the encoder (a transformers ``AutoModel``), ``classifier`` the new head.
ENCODER, HEAD = "transformer", "classifier"
POOLINGS = ("mean", "cls", "pooler")

#: LoRA target leaf names per ``config.model_type``, where peft's own table lacks the architecture.
LORA_LEAVES = {
    "bert": ["query", "value"], "roberta": ["query", "value"], "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"], "camembert": ["query", "value"], "albert": ["query", "value"],
    "ernie": ["query", "value"], "distilbert": ["q_lin", "v_lin"], "mpnet": ["q", "v"],
    "deberta": ["in_proj"], "deberta-v2": ["query_proj", "value_proj"], "modernbert": ["Wqkv"],
    "gpt2": ["c_attn"],
}


class TextClassifier(nn.Module):
    """``forward(input_ids, attention_mask)`` -> logits ``(batch, num_classes)``.

    ``pooling``: ``mean`` averages the token states under the attention mask (what
    sentence-transformers models are trained for), ``cls`` takes the first token's state, ``pooler``
    the encoder's own pooler output (BERT's tanh layer over [CLS]).

    ``norm``: the pooled vector is standardised (a layer norm without parameters) before the head.
    Pooled token states are small (MiniLM's average 0.2 in magnitude); standardised, they let a head
    that starts at zero learn at the small learning rates that suit the encoder, in few steps.
    """

    def __init__(self, transformer: nn.Module, num_classes: int, pooling: str = "mean", dropout: float = 0.1,
                 norm: bool = True):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
        if pooling != "pooler" and getattr(transformer, "pooler", None) is not None:
            transformer.pooler = None  # unused: drop it, so that every parameter trains or is frozen on purpose
        self.transformer = transformer
        self.pooling = pooling
        hidden = transformer.config.hidden_size
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False) if norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(input_ids, attention_mask, token_type_ids))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from pooled, standardised features: what a linear probe trains."""
        return self.classifier(self.dropout(features))

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled, standardised text vector the head takes, ``(batch, hidden)``."""
        return pooled_features(self.transformer, self.norm, self.pooling, input_ids, attention_mask, token_type_ids)


class TokenTagger(nn.Module):
    """``forward(input_ids, attention_mask)`` -> logits ``(batch, positions, num_outputs)``: a linear head over each
    token's last hidden state (token classification). Its encoder and head carry :class:`TextClassifier`'s names,
    so its layer groups, LoRA targets and layer cut are found the same way."""

    def __init__(self, transformer: nn.Module, num_outputs: int, dropout: float = 0.1):
        super().__init__()
        if getattr(transformer, "pooler", None) is not None:
            transformer.pooler = None  # unused: every parameter trains or is frozen on purpose
        self.transformer = transformer
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(transformer.config.hidden_size, num_outputs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        return self.head(self.transformer(input_ids=input_ids, attention_mask=attention_mask, **extra)[0])

    def head(self, states: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(states))


def pooled_features(transformer: nn.Module, norm: nn.Module, pooling: str, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor | None, token_type_ids: torch.Tensor | None) -> torch.Tensor:
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
    out = transformer(input_ids=input_ids, attention_mask=attention_mask, **extra)
    return norm(pool(out, attention_mask, pooling))


def pool(out: Any, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per text from an encoder's output (see :class:`TextClassifier`'s ``pooling``)."""
    if pooling == "pooler":
        return out.pooler_output
    if pooling == "cls":
        return out[0][:, 0]
    states = out[0]
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class Features(nn.Module):
    """Everything of a :class:`TextClassifier` but its head (the prefix of a linear probe).

    It holds the encoder and the norm, not the head: its weights are the frozen ones alone.
    """

    def __init__(self, model: TextClassifier):
        super().__init__()
        self.transformer = model.transformer
        self.norm = model.norm
        self.pooling = model.pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return pooled_features(self.transformer, self.norm, self.pooling, input_ids, attention_mask, token_type_ids)


class Head(nn.Module):
    """A :class:`TextClassifier`'s head on pooled features (the rest of a linear probe)."""

    def __init__(self, model: TextClassifier):
        super().__init__()
        self.model = model  # registered: train() and eval() reach the dropout

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.head(features)


class LayerPrefix(nn.Module):
    """The embeddings and the first layers of a :class:`TextClassifier`'s encoder (see :func:`layer_cut`).

    Returns the hidden states after its last layer and the attention mask, the inputs of
    :class:`LayerRest`. ``transformer`` is a view of the encoder holding only those modules.
    """

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.transformer(input_ids=input_ids, attention_mask=attention_mask, **extra)
        return {"hidden_states": out[0], "attention_mask": attention_mask}


class LayerRest(nn.Module):
    """The later layers, the pooling and the head of a :class:`TextClassifier`, on :class:`LayerPrefix`'s outputs.

    ``transformer`` is a view of the encoder whose embeddings hand on the hidden states they are
    given (as ``inputs_embeds``): the model's own forward builds the attention mask as always.
    """

    def __init__(self, model: TextClassifier, transformer: nn.Module):
        super().__init__()
        self.model = model  # registered: train() and eval() reach every module
        self.transformer = transformer  # the view's own (shallow-copied) modules carry a training flag too

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.transformer(inputs_embeds=hidden_states, attention_mask=attention_mask)
        if isinstance(self.model, TokenTagger):
            return self.model.head(out[0])
        return self.model.head(self.model.norm(pool(out, attention_mask, self.model.pooling)))


class _Given(nn.Module):
    """Stands for the embeddings in :class:`LayerRest`: returns the hidden states it is handed."""

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        given = kwargs.get("inputs_embeds")
        if given is None:  # DistilBERT-like: embeddings(input_ids, inputs_embeds) by position
            given = next((a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()), None)
        if given is None:
            raise ValueError("the rest of a cut text encoder takes hidden states as inputs_embeds")
        return given


def _view(root: nn.Module, replace: Mapping[str, nn.Module]) -> nn.Module:
    """A shallow copy of ``root`` whose submodules at the dotted names of ``replace`` are replaced.

    Every other module (and every parameter) is ``root``'s own; only the modules on the way down to
    a replaced one are copied, so that ``root`` itself stays whole.
    """
    clone = copy.copy(root)
    clone._modules = dict(root._modules)
    deeper: dict[str, dict[str, nn.Module]] = {}
    for name, module in replace.items():
        head, _, tail = name.partition(".")
        if tail:
            deeper.setdefault(head, {})[tail] = module
        else:
            clone._modules[head] = module
    for head, sub in deeper.items():
        clone._modules[head] = _view(root._modules[head], sub)
    return clone


def layer_cut(model: "TextClassifier | TokenTagger", freeze: int) -> tuple[LayerPrefix, LayerRest] | None:
    """``model`` cut after its first ``freeze`` layer groups (the embeddings, then ``freeze - 1`` layers).

    Cuts where the groups are one embeddings module, the layer stack and the head (BERT, RoBERTa,
    DistilBERT, MiniLM, ...); ``None`` elsewhere (several modules before the stack, a final norm
    after it) and wherever running the two parts on a small input does not give the network's own
    output: a model whose forward does not go through every layer of its stack in order, say.
    """
    stack, n = layer_stack(model.transformer)
    groups = layer_groups(model)
    if len(groups) != n + 2 or len(groups[0]) != 1 or not 1 <= freeze <= n:
        return None
    embeddings = groups[0][0].removeprefix(f"{ENCODER}.")
    layers = list(model.transformer.get_submodule(stack))
    cut = freeze - 1
    prefix = LayerPrefix(_view(model.transformer, {stack: nn.ModuleList(layers[:cut])}))
    rest = LayerRest(model, _view(model.transformer, {stack: nn.ModuleList(layers[cut:]), embeddings: _Given()}))
    return (prefix, rest) if _same(model, prefix, rest) else None


def _same(model: TextClassifier, prefix: nn.Module, rest: nn.Module) -> bool:
    """Whether ``rest(prefix(x))`` is ``model(x)`` on two short texts (one padded), in eval mode."""
    modes = [(m, m.training) for m in (*model.modules(), *prefix.modules(), *rest.modules())]
    vocab = int(getattr(model.transformer.config, "vocab_size", 100) or 100)
    ids = (torch.arange(16).view(2, 8) * 7 + 5) % max(vocab, 2)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    try:
        device = next(model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        for m, _ in modes:
            m.training = False
        with torch.no_grad():
            want = model(ids, mask)
            got = rest(**prefix(ids, mask))
        return got.shape == want.shape and bool(torch.allclose(got, want, atol=1e-4, rtol=1e-4))
    except Exception:
        return False
    finally:
        for m, training in modes:
            m.training = training


def layer_stack(encoder: nn.Module) -> tuple[str, int]:
    """The name (relative to ``encoder``) and length of its stack of transformer layers.

    The ``nn.ModuleList`` holding the most parameters; one whose length is the config's layer count
    wins a tie. BERT-like: ``encoder.layer``; DistilBERT: ``transformer.layer``; GPT-2: ``h``.
    """
    wanted = getattr(getattr(encoder, "config", None), "num_hidden_layers", None)
    best, best_key = None, None
    for name, module in encoder.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            size = sum(p.numel() for p in module.parameters())
            key = (size, len(module) == wanted)
            if best_key is None or key > best_key:
                best, best_key = (name, len(module)), key
    if best is None:
        raise ValueError(f"found no stack of layers (nn.ModuleList) in {type(encoder).__name__}")
    return best


def layer_groups(model: TextClassifier) -> list[list[str]]:
    """Before the layer stack (embeddings), each layer, after the stack (final norm, pooler), the head."""
    stack, n = layer_stack(model.transformer)
    before: list[str] = []
    after: list[str] = []
    seen_stack = False

    def walk(module: nn.Module, prefix: str) -> None:
        nonlocal seen_stack
        for name, child in module.named_children():
            rel = f"{prefix}.{name}" if prefix else name
            if next(child.parameters(), None) is None:
                continue
            if rel == stack:
                seen_stack = True
            elif stack.startswith(rel + "."):
                walk(child, rel)
            else:
                (after if seen_stack else before).append(f"{ENCODER}.{rel}")

    walk(model.transformer, "")
    groups = [before] if before else []
    groups += [[f"{ENCODER}.{stack}.{i}"] for i in range(n)]
    if after:
        groups.append(after)
    groups.append([HEAD])
    return groups


def lora_targets(model: TextClassifier, leaves: list[str]) -> list[str]:
    """Full names of the ``nn.Linear`` (or GPT-2 ``Conv1D``) modules in the layer stack whose name ends in a leaf.

    A leaf may hold dots (``attention.output.dense``) to pick one of several modules of the same name.
    """
    from transformers.pytorch_utils import Conv1D

    stack, _ = layer_stack(model.transformer)
    prefix = f"{ENCODER}.{stack}."
    found = []
    for name, module in model.named_modules():
        if not name.startswith(prefix) or not isinstance(module, (nn.Linear, Conv1D)):
            continue
        if any(name.endswith("." + leaf) for leaf in leaves):
            found.append(name)
    return found


def default_lora_leaves(model_type: str) -> list[str]:
    if model_type in LORA_LEAVES:
        return list(LORA_LEAVES[model_type])
    try:
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping
    except ImportError:  # pragma: no cover - peft moved it
        mapping = {}
    leaves = mapping.get(model_type)
    return list(leaves) if leaves else []


def linear_leaves_fallback(model: TextClassifier) -> list[str]:
    """For an architecture nobody listed: every ``nn.Linear`` of the attention blocks."""
    stack, _ = layer_stack(model.transformer)
    prefix = f"{ENCODER}.{stack}."
    return [name for name, module in model.named_modules()
            if name.startswith(prefix) and isinstance(module, nn.Linear) and "attn" in name.lower()
            or name.startswith(prefix) and isinstance(module, nn.Linear) and "attention" in name.lower()]
