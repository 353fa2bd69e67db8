"""onnxruntime sessions for the two graphs (no grpc here): providers, shape checks, warm-up, runs.

One InferenceSession per graph. Providers come from Settings: CUDA (device id, cuDNN algorithm search,
arena settings) then CPU. What really runs is read back from `session.get_providers()`: a session
asked for CUDA silently falls back to CPU when CUDA cannot start, and `get_available_providers()`
lists CUDA even on a machine without a GPU, so neither the request nor that list is proof.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from service.errors import InferenceFailed, ModelError, SettingsError
from service.manifest import GraphSpec, Manifest
from service.settings import Settings

__all__ = ["Graph", "Model", "load_model", "provider_chain", "CUDA", "CPU"]

log = logging.getLogger("vae.service")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


def provider_chain(settings: Settings) -> list[Any]:
    """Providers to ask onnxruntime for, in order of preference."""
    cuda = (CUDA, {
        "device_id": settings.device_id,
        "cudnn_conv_algo_search": settings.cudnn_conv_algo_search,
        "arena_extend_strategy": settings.cuda_arena_extend_strategy,
        "do_copy_in_default_stream": True,
        **({"gpu_mem_limit": settings.cuda_mem_limit} if settings.cuda_mem_limit else {}),
    })
    if settings.provider == "cpu":
        return [CPU]
    if settings.provider == "cuda":
        return [cuda, CPU]
    return [cuda, CPU] if CUDA in ort.get_available_providers() else [CPU]


def _session_options(settings: Settings, on_cuda: bool) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning intra-op threads starve the gRPC event loop on a small CPU: block instead.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.intra_op_num_threads = settings.intra_op_threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if on_cuda:
        # Same inputs -> same bytes on the GPU too (Sample's determinism promise).
        opts.use_deterministic_compute = True
    return opts


class Graph:
    """One ONNX graph in one session; `run` is thread-safe and releases the GIL."""

    def __init__(self, spec: GraphSpec, settings: Settings, providers: list[Any]) -> None:
        self.spec = spec
        self.name = spec.key
        wants_cuda = any((p[0] if isinstance(p, tuple) else p) == CUDA for p in providers)
        try:
            self.session = ort.InferenceSession(str(spec.path), _session_options(settings, wants_cuda),
                                                providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelError(f"{spec.path}: onnxruntime cannot load the graph: {exc}") from None
        self.provider = self.session.get_providers()[0]
        if settings.provider == "cuda" and self.provider != CUDA:
            raise SettingsError(f"--provider cuda asked, but onnxruntime runs the {spec.key} on "
                                f"{self.provider} (no usable GPU, or onnxruntime-gpu/CUDA libraries missing)")
        self.on_cuda = self.provider == CUDA
        self.device_id = settings.device_id
        self._check_io()
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.np_dtype = np.dtype(spec.dtype)

    def _check_io(self) -> None:
        """The loaded graph must have exactly the inputs/outputs the manifest records."""
        for kind, actual, recorded in (("input", self.session.get_inputs(), self.spec.inputs),
                                       ("output", self.session.get_outputs(), self.spec.outputs)):
            if len(actual) != len(recorded):
                raise ModelError(f"{self.spec.path}: {len(actual)} {kind}s, manifest.json records "
                                 f"{len(recorded)}")
            for node, rec in zip(actual, recorded, strict=True):
                dtype = _ORT_DTYPES.get(node.type, node.type)
                dims = tuple(d if isinstance(d, int) else "N" for d in node.shape)
                if node.name != rec.name or dtype != rec.dtype or len(dims) != len(rec.shape) or any(
                        isinstance(r, int) and d != r for d, r in zip(dims, rec.shape, strict=True)):
                    raise ModelError(f"{self.spec.path}: {kind} {node.name} {dtype}{list(dims)} does not "
                                     f"match manifest.json ({rec.name} {rec.dtype}{list(rec.shape)})")

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Run the graph on one batch; float32 in, float32 out whatever the graph's dtype."""
        if x.dtype != self.np_dtype:
            x = x.astype(self.np_dtype)
        try:
            if self.on_cuda:
                outs = self._run_io_binding(x)
            else:
                outs = self.session.run(self.output_names, {self.input_name: x})
        except Exception as exc:
            raise InferenceFailed(f"{self.name} inference failed: {exc}") from None
        return [o if o.dtype == np.float32 else o.astype(np.float32) for o in outs]

    def _run_io_binding(self, x: np.ndarray) -> list[np.ndarray]:
        # IO binding: the input is copied to the device once and outputs are allocated there by
        # onnxruntime, then copied back in one step, instead of run()'s per-call staging.
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, np.ascontiguousarray(x))
        for name in self.output_names:
            binding.bind_output(name, "cuda", self.device_id)
        self.session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())


@dataclass
class Model:
    manifest: Manifest
    encoder: Graph
    decoder: Graph
    provider: str
    # z -> the likelihood's raw parameters (Score); None for folders exported without it.
    params: Graph | None = None
    # Whether decoded rows are bitwise independent of the batch they ran in (probed at warm-up).
    rows_independent: bool = True

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.manifest.input_shape

    @property
    def latent_dim(self) -> int:
        return self.manifest.latent_dim

    def warm_up(self, batch_sizes: Sequence[int]) -> None:
        """Run each graph at the batch sizes it will see so that first requests pay no set-up cost,
        then probe whether a decoded row depends on the rest of its batch."""
        rng = np.random.default_rng(0)
        for n in sorted(set(batch_sizes)):
            self.encoder.run(rng.random((n, *self.image_shape), dtype=np.float32))
            self.decoder.run(rng.standard_normal((n, self.latent_dim), dtype=np.float32))
            if self.params is not None:
                self.params.run(rng.standard_normal((n, self.latent_dim), dtype=np.float32))
        z = rng.standard_normal((max(batch_sizes), self.latent_dim), dtype=np.float32)
        full = self.decoder.run(z)[0]
        probes = [(0, 1), (1, 3), (len(z) - 1, len(z))] if len(z) > 3 else [(0, 1)]
        self.rows_independent = all(
            self.decoder.run(z[a:b])[0].tobytes() == full[a:b].tobytes() for a, b in probes)


def load_model(manifest: Manifest, settings: Settings) -> Model:
    providers = provider_chain(settings)
    encoder = Graph(manifest.graphs["encoder"], settings, providers)
    decoder = Graph(manifest.graphs["decoder"], settings, providers)
    shape, dim = list(manifest.input_shape), manifest.latent_dim
    if list(encoder.spec.inputs[0].shape[1:]) != shape or list(decoder.spec.outputs[0].shape[1:]) != shape:
        raise ModelError(f"{manifest.path}: graph image shapes do not match input_shape {shape}")
    if list(decoder.spec.inputs[0].shape[1:]) != [dim] or len(encoder.spec.outputs) != 2 or any(
            list(o.shape[1:]) != [dim] for o in encoder.spec.outputs):
        raise ModelError(f"{manifest.path}: graph latent shapes do not match latent_dim {dim}")
    if encoder.provider != decoder.provider:
        log.warning("encoder runs on %s, decoder on %s", encoder.provider, decoder.provider)
    log.info("execution provider in use: %s (asked: %s)", decoder.provider, settings.provider)
    params = None
    if "decoder_params" in manifest.graphs:
        params = Graph(manifest.graphs["decoder_params"], settings, providers)
        if list(params.spec.outputs[0].shape[1:]) != shape or list(params.spec.inputs[0].shape[1:]) != [dim]:
            raise ModelError(f"{manifest.path}: decoder_params shapes do not match input_shape {shape} / "
                             f"latent_dim {dim}")
    else:
        log.warning("the model has no decoder_params graph: Score answers FAILED_PRECONDITION "
                    "(re-export it with this exporter)")
    return Model(manifest, encoder, decoder, decoder.provider, params=params)
