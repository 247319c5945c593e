"""The bundle's optional ONNX and TorchScript files: written from the PyTorch network, checked against it.

``autotl export --format onnx/torchscript`` calls :func:`export_format` for each: the file is
written from the network on the CPU, run on real validation inputs (batched and one at a time)
and refused unless its probabilities (the task's target's :meth:`~autotl.Target.probabilities` of the
outputs) are within :data:`TOLERANCE` of the network's; its
latency is measured beside PyTorch's. :func:`onnx_feed` and :func:`onnx_session` run the ONNX
file, for the parity check here and for ``autotl.load(BUNDLE, engine="onnx")``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from .base import Inputs, Target, TensorSplit
from .bundle_config import ONNX, TORCHSCRIPT
from .errors import BundleError, UsageError
from .inference import forward
from .latency import BATCH, CPU_THREADS, cpu_threads, first, measure_model, sample_inputs, time_call

FORMATS = ("onnx", "torchscript")
#: the largest absolute difference of any probability the ONNX and TorchScript files may show
#: against the PyTorch network on real inputs.
TOLERANCE = 1e-4
#: real validation inputs the formats are checked on.
PARITY_ITEMS = 64
ONNX_OPSET = 18


# -- running the ONNX file ---------------------------------------------------------------------------

def onnx_feed(inputs: Inputs) -> dict[str, Any]:
    """A batch of model inputs as onnxruntime takes them."""
    if isinstance(inputs, torch.Tensor):
        return {"input": inputs.detach().cpu().contiguous().numpy()}
    return {k: v.detach().cpu().contiguous().numpy() for k, v in inputs.items()}


def onnx_session_options(ort, threads: int = 0):
    """Session options: ``threads`` intra-op threads (0: onnxruntime's default), and no spinning, so that
    idle onnxruntime threads do not take the CPU from everything else between calls."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def onnx_session(path: Path, device: torch.device, threads: int = 0):
    """An onnxruntime session on the ONNX file at ``path``: CUDA first when ``device`` is a CUDA device
    and onnxruntime can use it, else the CPU."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise UsageError("the onnx engine needs onnxruntime: pip install 'autotl[onnx]'") from exc
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), onnx_session_options(ort, threads), providers=providers)


# -- writing and checking a format -----------------------------------------------------------------------

def export_format(fmt: str, model: torch.nn.Module, val: TensorSplit, folder: Path,
                  say: Callable[[str], None] = lambda message: None, *, target: Target | None = None,
                  channels_last: bool = False) -> dict[str, Any]:
    """Write ``fmt`` (``onnx`` or ``torchscript``) of ``model`` (on the CPU) into ``folder``, checked on ``val``.

    Returns what the bundle's config records of it under ``formats``: the file, the engine, the
    parity with the PyTorch network (on ``target``'s probabilities of the outputs; ``None``: on the outputs
    as they are), the latencies; ``{"skipped": why}`` for a network TorchScript
    cannot trace. A file whose probabilities differ by more than :data:`TOLERANCE` is a
    :class:`~autotl.errors.BundleError`.
    """
    real, _ = next(iter(val.batches(PARITY_ITEMS)))
    probabilities = target.probabilities if target is not None else (lambda outputs: outputs)
    with torch.inference_mode():
        reference = probabilities(forward(model, _cpu(real)).float())
    if fmt == "onnx":
        info, run = _export_onnx(model, real, folder / ONNX)
    else:
        info, run = _export_torchscript(model, real, folder / TORCHSCRIPT)
        if run is None:
            say(f"TorchScript: not written ({info['skipped']})")
            return info
    info["parity"] = _parity(fmt, run, real, reference, probabilities)
    sample = sample_inputs(val)
    torch_latency = measure_model(model, sample, torch.device("cpu"), channels_last=channels_last)
    info["latency"] = _latency(run, sample, info["engine"], torch_latency["device"])
    info["pytorch_latency"] = torch_latency
    say(f"{fmt}: max abs difference of probabilities {info['parity']['max_abs_diff_probability']:.2e} on "
        f"{len(reference)} validation inputs (tolerance {TOLERANCE:.0e}); per-item latency at batch 1: "
        f"{info['engine']} {info['latency']['batch1_ms']:.2f} ms, PyTorch {torch_latency['batch1_ms']:.2f} ms")
    return info


def _parity(fmt: str, run: Callable[[Inputs], torch.Tensor], real: Inputs, reference: torch.Tensor,
            probabilities: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Any]:
    """How far the file's probabilities are from ``reference`` (the network's), batched and one at a time."""
    probs = probabilities(run(real).float())
    single = probabilities(run(first(real, 1)).float())
    positions = single.shape[1] if single.dim() == 3 else None  # one item alone: its own positions only
    diff = max(float((probs - reference).abs().max()),
               float((single - reference[:1, :positions]).abs().max()))
    if not diff <= TOLERANCE:
        raise BundleError(f"the {fmt} model differs from the PyTorch network by up to {diff:.2e} in probability on "
                          f"real inputs (tolerance {TOLERANCE:.0e}); the bundle was not written")
    agree = int((probs.max(-1).indices == reference.max(-1).indices).flatten(1).all(-1).sum()) \
        if probs.dim() == 3 else int((probs.max(-1).indices == reference.max(-1).indices).sum())
    return {"max_abs_diff_probability": diff, "tolerance": TOLERANCE, "items": len(reference),
            "top1_agreement": f"{agree}/{len(reference)}",
            "on": "real validation inputs of the run, batched and one at a time"}


def _latency(run: Callable[[Inputs], torch.Tensor], sample: Inputs, engine: str, device: str) -> dict[str, Any]:
    """The file's per-item latency at batch 1 and at :data:`~autotl.latency.BATCH`, as ``measure_model`` reports it."""
    with cpu_threads() as threads:
        return {
            "batch1_ms": round(time_call(lambda: run(first(sample, 1))) * 1000.0, 4),
            "batched_ms": round(time_call(lambda: run(sample), warmup=1) * 1000.0 / BATCH, 4),
            "batch_size": BATCH, "device": device, "threads": threads, "engine": engine,
        }


def _cpu(inputs: Inputs) -> Inputs:
    if isinstance(inputs, torch.Tensor):
        return inputs.cpu()
    return {k: v.cpu() for k, v in inputs.items()}


def _export_onnx(model: torch.nn.Module, example: Inputs, path: Path):
    """Write ``path`` with torch.onnx (dynamo first, the TorchScript-based exporter if that fails)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError as exc:
        raise UsageError("--format onnx needs onnx and onnxruntime: pip install 'autotl[onnx]'") from exc
    model = _plain_copy(model)
    args, kwargs, names, shapes, axes = _onnx_signature(example, per_position=_per_position(model, example))
    errors = []
    exporter = None
    for dynamo in (True, False):
        try:
            with _quiet():
                if dynamo:
                    torch.onnx.export(model, args, str(path), kwargs=kwargs, input_names=names,
                                      output_names=["logits"], dynamic_shapes=shapes, dynamo=True,
                                      external_data=False, opset_version=ONNX_OPSET)
                else:
                    torch.onnx.export(model, args, str(path), kwargs=kwargs, input_names=names,
                                      output_names=["logits"], dynamic_axes=axes, dynamo=False,
                                      opset_version=ONNX_OPSET)
            exporter = "torch.onnx (dynamo)" if dynamo else "torch.onnx (TorchScript-based)"
            break
        except Exception as exc:
            errors.append(f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}")
            path.unlink(missing_ok=True)
    if exporter is None:
        raise BundleError(f"ONNX export failed: {errors[-1]}")
    for extra in path.parent.glob(path.name + ".data"):
        extra.unlink()
    session = onnx_session(path, torch.device("cpu"), threads=CPU_THREADS)

    def run(inputs: Inputs) -> torch.Tensor:
        return torch.from_numpy(session.run(None, onnx_feed(inputs))[0])

    info = {"file": ONNX, "engine": f"onnxruntime {ort.__version__}", "exporter": exporter, "opset": ONNX_OPSET,
            "inputs": names, "output": "logits", "dynamic_axes": {k: v for k, v in axes.items()},
            "note": "takes the preprocessed tensors (see preprocessing), returns the network's raw outputs (one row "
                    "per item, or per item and position); the task's target turns them into probabilities and "
                    "predictions with the calibration in target"}
    return info, run


def _per_position(model: torch.nn.Module, example: Inputs) -> bool:
    """Whether ``model`` gives one output per input position (3-D outputs)."""
    with torch.inference_mode():
        return forward(model, first(_cpu(example), 1)).dim() == 3


def _onnx_signature(example: Inputs, per_position: bool = False):
    """The exporters' example arguments, input names, and dynamic batch (and text length) dimensions; per-position
    outputs have dynamic batch and positions."""
    outputs = {0: "batch", 1: "length"} if per_position else {0: "batch"}
    if isinstance(example, torch.Tensor):
        args, kwargs, names = (example[:2].contiguous(),), None, ["input"]
        batch = torch.export.Dim("batch")
        shapes: Any = ({0: batch},)
        axes = {"input": {0: "batch"}, "logits": outputs}
    else:
        kwargs = {k: v[:2].contiguous() for k, v in example.items()}
        args, names = (), list(kwargs)
        batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
        shapes = {k: ({0: batch, 1: length} if v.dim() == 2 else {0: batch}) for k, v in kwargs.items()}
        axes = {**{k: ({0: "batch", 1: "length"} if v.dim() == 2 else {0: "batch"}) for k, v in kwargs.items()},
                "logits": outputs}
    return args, kwargs, names, shapes, axes


def _export_torchscript(model: torch.nn.Module, example: Inputs, path: Path):
    """Write ``path`` with ``torch.jit.trace``; ``{"skipped": why}`` and no runner if tracing fails."""
    model = _plain_copy(model)
    try:
        with _quiet(), torch.no_grad():
            if isinstance(example, torch.Tensor):
                traced = torch.jit.trace(model, (example[:2].contiguous(),), check_trace=False)
            else:
                traced = torch.jit.trace(model, example_kwarg_inputs={k: v[:2] for k, v in example.items()},
                                         check_trace=False)
            traced.save(str(path))
    except Exception as exc:
        path.unlink(missing_ok=True)
        message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        return {"skipped": f"tracing failed: {message}"}, None

    def run(inputs: Inputs) -> torch.Tensor:
        with torch.inference_mode():
            return traced(_cpu(inputs)) if isinstance(inputs, torch.Tensor) else traced(**_cpu(inputs))

    info = {"file": TORCHSCRIPT, "engine": f"TorchScript (torch {torch.__version__})", "exporter": "torch.jit.trace",
            "note": "traced: takes the preprocessed tensors, returns logits; torch.jit.load runs code, so load "
                    "it only from a bundle you trust (autotl itself never loads it)"}
    return info, run


def _plain_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A contiguous float copy of ``model`` on the CPU, in eval mode: what the exporters trace."""
    return copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format).eval()


@contextlib.contextmanager
def _quiet():
    """The exporters' warnings, prints and torch log lines kept off the console."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        level = logging.getLogger("torch").level
        logging.getLogger("torch").setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("torch").setLevel(level)


__all__ = ["FORMATS", "ONNX_OPSET", "PARITY_ITEMS", "TOLERANCE", "export_format", "onnx_feed", "onnx_session",
           "onnx_session_options"]
