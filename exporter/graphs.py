"""The two graphs the service runs, as torch modules, and their export to self-contained ONNX files.

The encoder graph maps images x [N,C,H,W] in [0,1] to the Gaussian posterior's (mu, logvar) [N,D]; the
decoder graph maps latents z [N,D] to the likelihood's mean image in [0,1] (`model.decode_mean`). The
batch axis is dynamic (named "N", as in the manifest); C, H, W and D are static.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch
from torch import nn

from exporter.errors import ExportError
from trainer.model import VAE

__all__ = [
    "OPSET",
    "BATCH_DIM",
    "ENCODER_IO",
    "DECODER_IO",
    "PARAMS_IO",
    "EncoderGraph",
    "DecoderGraph",
    "ParamsGraph",
    "likelihood_params",
    "export_graph",
    "graph_metadata",
    "set_metadata",
    "read_metadata",
]

# The ONNX opset every graph is exported at (torch 2.13's dynamo exporter's own default, pinned here so
# a torch upgrade cannot silently change what the service receives).
OPSET = 20
BATCH_DIM = "N"
ENCODER_IO: tuple[tuple[str, ...], tuple[str, ...]] = (("x",), ("mu", "logvar"))
DECODER_IO: tuple[tuple[str, ...], tuple[str, ...]] = (("z",), ("x_mean",))
PARAMS_IO: tuple[tuple[str, ...], tuple[str, ...]] = (("z",), ("params",))


class EncoderGraph(nn.Module):
    """x -> (mu, logvar) of q(z|x) = N(mu, diag(exp(logvar))) (Kingma & Welling 2014, eq. 9)."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.model.encode(x)
        return mu, logvar


class DecoderGraph(nn.Module):
    """z -> E[x|z], the likelihood's mean image in [0,1] (not a sample: the service decides sampling)."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model.decode_mean(z)
        return out


class ParamsGraph(nn.Module):
    """z -> the likelihood's raw parameters (`model.decode`): logits for Bernoulli and continuous
    Bernoulli, the mean for Gaussians. The service scores images with them (Score): a mean that went
    through a saturated sigmoid would lose log-probability precision (log 0) where logits do not."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model.decode(z)
        return out


def likelihood_params(model: VAE) -> dict[str, float]:
    """The likelihood's constants the service needs beside the params graph (manifest
    `likelihood_params`): the effective log sigma of the Gaussians (the learned one as clamped)."""
    lik = model.likelihood
    log_sigma = getattr(lik, "_log_sigma", None)
    if log_sigma is None:
        return {}
    return {"log_sigma": float(log_sigma().detach().float())}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[io.StringIO]:
    """The dynamo exporter logs warnings (e.g. about torchvision ops) and may print progress; none of
    it concerns the user unless the export fails, so it is captured and shown only then."""
    buf = io.StringIO()
    onnx_logger = logging.getLogger("torch.onnx")
    old_level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        onnx_logger.setLevel(old_level)


def graph_metadata(*, graph: str, latent_dim: int, input_shape: list[int], model_name: str,
                   model_version: str, likelihood: str, dtype: str) -> dict[str, str]:
    """The key facts every graph carries in `metadata_props`, so that a graph alone describes itself."""
    return {
        "vae.graph": graph,
        "vae.latent_dim": str(latent_dim),
        "vae.input_shape": json.dumps(list(input_shape)),
        "vae.model_name": model_name,
        "vae.model_version": model_version,
        "vae.likelihood": likelihood,
        "vae.dtype": dtype,
    }


def set_metadata(proto: onnx.ModelProto, props: dict[str, str]) -> None:
    """Replace our `vae.*` entries in the model-level metadata_props, keeping anything else."""
    keep = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith("vae.")]
    del proto.metadata_props[:]
    for key, value in [*keep, *sorted(props.items())]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def export_graph(module: nn.Module, example: torch.Tensor, path: Path, *, input_names: tuple[str, ...],
                 output_names: tuple[str, ...], metadata: dict[str, str], fp16: bool = False) -> None:
    """Export `module` (called on one input) to a single self-contained ONNX file at `path`.

    With `fp16` the module and its input are cast to float16 first, so the graph's inputs, weights and
    outputs are all float16 (the dtype the manifest then declares for it).
    """
    module = copy.deepcopy(module).eval()
    if fp16:
        module = module.half()
        example = example.half()
    batch = torch.export.Dim(BATCH_DIM, min=1)
    with _quiet_exporter() as log:
        try:
            program = torch.onnx.export(
                module, (example,), dynamo=True, external_data=False, opset_version=OPSET,
                input_names=list(input_names), output_names=list(output_names),
                dynamic_shapes=({0: batch},), verbose=False,
            )
        except Exception as exc:  # the exporter raises many types; all mean "cannot export this model"
            tail = log.getvalue().strip().splitlines()[-5:]
            raise ExportError(f"torch.onnx.export failed for {path.name}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}"
                              + (f" ({' | '.join(tail)})" if tail else "")) from exc
    if program is None:
        raise ExportError(f"torch.onnx.export returned no program for {path.name}")
    proto = program.model_proto
    set_metadata(proto, metadata)
    proto.doc_string = f"VAE {metadata.get('vae.graph', '')} graph ({metadata.get('vae.dtype', '')})"
    # One file, no external data: the service and Triton load a single path.
    data = proto.SerializeToString()
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path.name} fails onnx.checker.check_model(full_check=True): "
                          f"{str(exc).splitlines()[0]}") from exc
