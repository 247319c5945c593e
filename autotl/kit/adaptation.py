"""The conformance checks of how a backbone adapts: ``freeze``, ``lora`` and ``split``.

See :mod:`autotl.testing` for what each check asserts.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapt import adapt, merged
from ..utils import is_under
from .subject import ATOL, Subject, describe


class AdaptationChecks(Subject):
    """Freezing layer groups, LoRA adapters, and the cut of the frozen-prefix cache."""

    def check_freeze(self) -> None:
        c = "freeze"
        n = len(self.groups(c, self.build(c)))
        inputs = self.inputs(c)
        for k in sorted({0, 1, n - 1} & set(range(n))):
            model = self.build(c)
            groups = self.groups(c, model)
            try:
                adapted = adapt(model, self.backbone(c), freeze=k)
            except Exception as exc:
                raise self.fail(c, f"adapt(freeze={k}) raised {describe(exc)}") from exc
            frozen = [m for g in groups[:k] for m in g]
            self._check_trainable(c, model, frozen, k, n)
            if k == n - 1:
                self._check_probe_step(c, model, inputs, adapted, frozen, groups[-1], k)

    def _check_trainable(self, c: str, model: nn.Module, frozen: list[str], k: int, n: int) -> None:
        """Exactly the parameters outside the ``frozen`` modules train."""
        expected = {p for p, _ in model.named_parameters() if not is_under(p, frozen)}
        actual = {p for p, t in model.named_parameters() if t.requires_grad}
        if expected != actual:
            extra, lacking = sorted(actual - expected), sorted(expected - actual)
            raise self.fail(c, f"with freeze={k} of {n} groups, " + (
                f"{len(extra)} parameter(s) of the frozen groups still train (e.g. {', '.join(extra[:3])})"
                if extra else f"{len(lacking)} parameter(s) of the open groups do not train (e.g. "
                              f"{', '.join(lacking[:3])}); build() must leave every parameter trainable"))

    def _check_probe_step(self, c: str, model: nn.Module, inputs, adapted, frozen: list[str], head: list[str],
                          k: int) -> None:
        """A training step of the linear probe changes the head and nothing frozen (batch-norm statistics included)."""
        frozen_state = {name: t.detach().clone() for name, t in model.state_dict().items() if is_under(name, frozen)}
        head_params = {name: t.detach().clone() for name, t in model.named_parameters() if is_under(name, head)}
        self.train_step(c, model, inputs, adapted)
        now = model.state_dict()
        changed = [name for name, before in frozen_state.items() if not torch.equal(before, now[name])]
        if changed:
            raise self.fail(c, f"a training step with freeze={k} changed {changed[0]!r} of a frozen group"
                               + (" (batch-norm statistics: frozen modules must stay in eval mode)"
                                  if "running" in changed[0] else ""))
        if all(torch.equal(before, now[name]) for name, before in head_params.items()):
            raise self.fail(c, f"a training step with freeze={k} (linear probe) left the head unchanged: "
                               "no gradient reaches it")

    def check_lora(self) -> None:
        c = "lora"
        backbone = self.backbone(c)
        model = self.build(c)
        self._check_lora_targets(c, model, self.groups(c, model))
        inputs = self.inputs(c)
        try:
            adapted = adapt(model, backbone, freeze=0, lora_rank=2)
        except Exception as exc:
            raise self.fail(c, f"adapt(freeze=0, lora_rank=2) raised {describe(exc)}") from exc
        peft_model = adapted.model
        self._check_lora_trainable(c, peft_model)
        self._check_lora_step(c, peft_model, inputs, adapted)
        self._check_lora_merge(c, peft_model, inputs)

    def _check_lora_targets(self, c: str, model: nn.Module, groups: list[list[str]]) -> None:
        """``lora_targets`` are ``nn.Linear``/``nn.Conv2d`` modules, some of them outside the head."""
        try:
            targets = self.backbone(c).lora_targets(model)
        except Exception as exc:
            raise self.fail(c, f"lora_targets() raised {describe(exc)}") from exc
        modules = dict(model.named_modules())
        if not targets:
            raise self.fail(c, "lora_targets() is empty: LoRA would have nothing to adapt")
        for name in targets:
            module = modules.get(name)
            if not isinstance(module, (nn.Linear, nn.Conv2d)):
                raise self.fail(c, f"LoRA target {name!r} is a {type(module).__name__ if module is not None else 'missing module'}"
                                   ", not an nn.Linear or nn.Conv2d")
        body = [m for g in groups[:-1] for m in g]
        if not any(is_under(t, body) for t in targets):
            raise self.fail(c, "no LoRA target lies outside the head group: LoRA would never adapt the body")

    def _check_lora_trainable(self, c: str, peft_model: nn.Module) -> None:
        """With LoRA, only the adapters and the head train, and both do."""
        trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
        wrong = [n for n in trainable if "lora_" not in n and "modules_to_save" not in n]
        if wrong:
            raise self.fail(c, f"with LoRA, {len(wrong)} base parameter(s) still train (e.g. {', '.join(wrong[:3])}): "
                               "only the adapters and the head may")
        if not any("lora_" in n for n in trainable):
            raise self.fail(c, "with LoRA, no adapter parameter trains")
        if not any("modules_to_save" in n for n in trainable):
            raise self.fail(c, "with LoRA, the head does not train")

    def _check_lora_step(self, c: str, peft_model: nn.Module, inputs, adapted) -> None:
        """A training step leaves the base weights as they were and moves the adapters."""
        base = {n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
        lora_b = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_B" in n}
        self.train_step(c, peft_model, inputs, adapted)
        now = dict(peft_model.named_parameters())
        moved = [n for n, before in base.items() if not torch.equal(before, now[n])]
        if moved:
            raise self.fail(c, f"a LoRA training step changed the frozen base weight {moved[0]!r}")
        if all(torch.equal(before, now[n]) for n, before in lora_b.items()):
            raise self.fail(c, "a LoRA training step left every adapter unchanged: no gradient reaches them")

    def _check_lora_merge(self, c: str, peft_model: nn.Module, inputs) -> None:
        """The merged network computes what the adapted one did and has ``build()``'s state-dict keys."""
        peft_model.eval()
        expected = self.logits(c, peft_model, inputs)
        try:
            plain = merged(peft_model)
        except Exception as exc:
            raise self.fail(c, f"merging the LoRA adapters raised {describe(exc)}") from exc
        got = self.logits(c, plain, inputs)
        if not torch.allclose(expected, got, atol=ATOL, rtol=1e-3):
            raise self.fail(c, f"the merged network's logits differ from the adapted network's by up to "
                               f"{(expected - got).abs().max():.2e} (tolerance {ATOL:g})")
        keys = set(plain.state_dict())
        reference = set(self.build(c).state_dict())
        if keys != reference:
            extra, lacking = sorted(keys - reference), sorted(reference - keys)
            raise self.fail(c, "the merged network's state dict does not match build()'s, so it cannot be exported: "
                               + (f"extra keys {extra[:3]}" if extra else f"missing keys {lacking[:3]}"))

    def check_split(self) -> None:
        """``Backbone.split`` (the frozen-prefix cache): where it cuts, ``rest(prefix(x))`` is the network."""
        c = "split"
        n = len(self.groups(c, self.build(c)))
        inputs = self.inputs(c)
        for k in range(1, n):
            for lora_rank in (0, 4) if k < n - 1 else (0,):
                net = self._adapted_with_random_head(c, k, lora_rank)
                if net is not None:
                    self._check_cut(c, net, k, lora_rank, inputs)

    def _adapted_with_random_head(self, c: str, k: int, lora_rank: int) -> nn.Module | None:
        """A fresh network with a head that is not zero (logits that mean something), adapted; ``None``
        where LoRA finds no target in the open groups (the lora check covers ``adapt`` itself)."""
        model = self.build(c)
        with torch.no_grad():
            for name in self.groups(c, model)[-1]:
                for p in model.get_submodule(name).parameters():
                    p.normal_()
        try:
            return adapt(model, self.backbone(c), k, lora_rank).model.eval()
        except Exception:
            return None

    def _check_cut(self, c: str, net: nn.Module, k: int, lora_rank: int, inputs) -> None:
        """Where ``split(model, k)`` cuts, the prefix holds the frozen groups and ``rest(prefix(x))`` is ``net(x)``."""
        from ..inference import forward
        from ..training import unwrapped

        backbone = self.backbone(c)
        model = unwrapped(net)
        try:
            cut = backbone.split(model, k)
        except Exception as exc:
            raise self.fail(c, f"split(model, {k}) raised {describe(exc)}; return None where the network "
                               "cannot be cut") from exc
        if cut is None:
            return
        if not (isinstance(cut, tuple) and len(cut) == 2 and all(isinstance(m, nn.Module) for m in cut)):
            raise self.fail(c, f"split(model, {k}) must return (prefix, rest) modules or None, not {cut!r:.100}")
        prefix, rest = cut
        groups = backbone.layer_groups(model)
        frozen = {id(p) for g in groups[:k] for name in g for p in model.get_submodule(name).parameters()}
        if {id(p) for p in prefix.parameters()} != frozen:
            raise self.fail(c, f"split(model, {k}): the prefix must hold exactly the parameters of the first "
                               f"{k} layer groups (the frozen ones), and no copies of them")
        if not any(m is model for m in rest.modules()):
            raise self.fail(c, f"split(model, {k}): rest must hold the network as a submodule, so that "
                               "rest.eval() reaches every module")
        with torch.no_grad():
            try:
                got = forward(rest.eval(), forward(prefix.eval(), inputs))
            except Exception as exc:
                raise self.fail(c, f"rest(prefix(x)) with freeze={k} raised {describe(exc)}") from exc
            want = forward(net, inputs)
        if got.shape != want.shape or not torch.allclose(got, want, atol=ATOL):
            gap = (got - want).abs().max().item() if got.shape == want.shape else f"shape {tuple(got.shape)}"
            raise self.fail(c, f"split(model, {k}{', LoRA' if lora_rank else ''}): rest(prefix(x)) differs "
                               f"from model(x) (max gap {gap}); the cut must run exactly the network")
