"""The Open Inference Protocol (KServe v2 / Triton gRPC) handlers, beside vae.v1 on the same server.

Thin like the vae.v1 servicer: v2 tensors <-> numpy in kserve_tensors.py, model names and versions in
kserve_models.py (a `ModelLookup`), and the same validator, batchers and metrics as vae.v1 (the
`ServedModel` objects are the vae.v1 servicer's). Every handler goes through the server's one wrapper
(service.calls, `@rpc`: request metrics, error -> status mapping, INTERNAL for the unexpected);
ModelInfer is admitted (ready check, in-flight bound, drain), the metadata and repository calls answer
while warming up and draining too, as vae.v1's GetModelInfo does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import grpc
import numpy as np

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from protos.inference import model_config_pb2 as mc
from service.calls import CallGuard, rpc
from service.errors import InvalidArgument, NotFound
from service.kserve_models import (
    Endpoint,
    ModelLookup,
    ServedModel,
    require_ready,
    resolve,
    state,
    version_key,
)
from service.kserve_tensors import add_output, input_arrays
from service.manifest import GraphSpec, TensorSpec

__all__ = ["InferenceServicer", "add_inference_service", "SERVICE_NAME", "EXTENSIONS", "PLATFORM"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# Protocol extensions answered here (Triton's names): the repository index/load/unload and ModelConfig.
EXTENSIONS = ("model_repository", "model_configuration")
PLATFORM = "onnxruntime_onnx"
# The encoder also takes UINT8 pixels (0-255, scaled like vae.v1 does); latents are floating point.
_ACCEPTED = {"encoder": ("FP32", "FP16", "UINT8"), "decoder": ("FP32", "FP16")}
# Parameters a load or unload request may carry and that mean nothing here (no dependents, no ensembles).
_UNLOAD_PARAMETERS = frozenset({"unload_dependents"})

def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    # The wire dtype is FP32 whatever the graph's (an fp16 graph casts inside, as for vae.v1).
    return pb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype="FP32",
                                                   shape=[-1, *_dims(spec)])


def _dims(spec: TensorSpec) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in spec.shape[1:]]


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, *, lookup: ModelLookup, calls: CallGuard,
                 ready: Callable[[], bool], server_name: str, server_version: str) -> None:
        self.lookup = lookup
        self.calls = calls  # the server's admission + metrics + error wrapper, shared with vae.v1
        self.ready = ready
        self.server_name = server_name
        self.server_version = server_version

    @rpc("ServerLive", admit=False)
    async def ServerLive(self, request: pb.ServerLiveRequest,
                         context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)  # answering at all is liveness

    @rpc("ServerReady", admit=False)
    async def ServerReady(self, request: pb.ServerReadyRequest,
                          context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready())

    @rpc("ServerMetadata", admit=False)
    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=self.server_name, version=self.server_version,
                                         extensions=list(EXTENSIONS))

    @rpc("ModelReady", admit=False)
    async def ModelReady(self, request: pb.ModelReadyRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        # As Triton: an unknown model or version is not ready (not an error).
        try:
            endpoint = resolve(self.lookup, request.name, request.version)
        except NotFound:
            return pb.ModelReadyResponse(ready=False)
        ready = self.ready() and state(self.lookup, endpoint).state == "READY"
        return pb.ModelReadyResponse(ready=ready)

    @rpc("ModelMetadata", admit=False)
    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        endpoint = resolve(self.lookup, request.name, request.version)
        spec = endpoint.model.spec(endpoint.graph)
        return pb.ModelMetadataResponse(
            name=endpoint.v2_name, versions=self._versions(endpoint.model.name), platform=PLATFORM,
            inputs=[_metadata(t) for t in spec.inputs], outputs=[_metadata(t) for t in spec.outputs])

    def _versions(self, name: str) -> list[str]:
        found = [m.version for m in self.lookup.serving() if m.name == name]
        return sorted(found, key=version_key)

    @rpc("ModelConfig", admit=False)
    async def ModelConfig(self, request: pb.ModelConfigRequest,
                          context: grpc.aio.ServicerContext) -> pb.ModelConfigResponse:
        endpoint = resolve(self.lookup, request.name, request.version)
        return pb.ModelConfigResponse(config=_config(endpoint))

    @rpc("RepositoryIndex", admit=False)
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest,
                              context: grpc.aio.ServicerContext) -> pb.RepositoryIndexResponse:
        _one_repository(request.repository_name)
        reply = pb.RepositoryIndexResponse()
        for entry in self.lookup.index():
            if not request.ready or entry.state == "READY":
                reply.models.add(name=entry.name, version=entry.version, state=entry.state,
                                 reason=entry.reason)
        return reply

    @rpc("RepositoryModelLoad", admit=False)
    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest,
                                  context: grpc.aio.ServicerContext) -> pb.RepositoryModelLoadResponse:
        _one_repository(request.repository_name)
        if request.parameters:
            raise InvalidArgument(f"load parameters {sorted(request.parameters)} are not supported "
                                  "(models load from the repository as exported)")
        await self.lookup.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @rpc("RepositoryModelUnload", admit=False)
    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,
                                    context: grpc.aio.ServicerContext) -> pb.RepositoryModelUnloadResponse:
        _one_repository(request.repository_name)
        unknown = sorted(set(request.parameters) - _UNLOAD_PARAMETERS)
        if unknown:
            raise InvalidArgument(f"unload parameters {unknown} are not supported")
        await self.lookup.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    @rpc("ModelInfer")
    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        endpoint = resolve(self.lookup, request.model_name, request.model_version)
        require_ready(self.lookup, endpoint)
        model, graph = endpoint.model, endpoint.graph
        spec = model.spec(graph)
        arrays = input_arrays(request, _ACCEPTED[graph])
        wanted = spec.inputs[0].name
        if list(arrays) != [wanted]:
            raise InvalidArgument(f"model {endpoint.v2_name!r} takes one input {wanted!r}, got "
                                  f"{sorted(arrays) or 'none'}")
        names = _requested(request, spec, endpoint.v2_name)
        outs = await _run(model, graph, arrays[wanted], wanted, _deadline(context))
        by_name = dict(zip((o.name for o in spec.outputs), outs, strict=True))
        reply = pb.ModelInferResponse(model_name=endpoint.v2_name, model_version=model.version,
                                      id=request.id)
        for name in names:
            add_output(reply, name, by_name[name])
        return reply


async def _run(model: ServedModel, graph: str, x: np.ndarray, what: str,
               deadline: float | None) -> list[np.ndarray]:
    """The same checks, batcher and metrics as vae.v1's Encode / Decode."""
    if graph == "encoder":
        images = model.validator.images(x, what)
        mu, logvar = await model.encoder.submit(images, deadline)
        model.metrics.encoded(mu, logvar)
        return [mu, logvar]
    z = model.validator.latents(x, what)
    model.validator.reply_fits(len(z), False, False, "ModelInfer")
    outs = await model.decoder.submit(z, deadline)
    model.metrics.latents("ModelInfer", z)
    return list(outs)


def _requested(request: pb.ModelInferRequest, spec: GraphSpec, v2_name: str) -> Sequence[str]:
    """The outputs to send, in the order asked (all of them, in the graph's order, when none is)."""
    known = [o.name for o in spec.outputs]
    if not request.outputs:
        return known
    names = []
    for out in request.outputs:
        if out.name not in known:
            raise InvalidArgument(f"model {v2_name!r} has no output {out.name!r}; outputs: "
                                  f"{', '.join(known)}")
        classification = out.parameters.get("classification")
        if classification is not None and classification.int64_param:
            raise InvalidArgument(f"output {out.name!r}: the classification extension is not served "
                                  "(the outputs are continuous)")
        if out.name in names:
            raise InvalidArgument(f"output {out.name!r} is asked twice")
        names.append(out.name)
    return names


def _one_repository(name: str) -> None:
    if name:
        raise NotFound(f"repository {name!r} is not known; this server has one repository (leave "
                       "repository_name empty)")


def _config(endpoint: Endpoint) -> mc.ModelConfig:
    model = endpoint.model
    spec = model.spec(endpoint.graph)
    config = mc.ModelConfig(
        name=endpoint.v2_name, platform=PLATFORM, backend="onnxruntime",
        max_batch_size=model.validator.limits.max_batch_per_request,
        input=[mc.ModelInput(name=t.name, data_type=mc.TYPE_FP32, dims=_dims(t)) for t in spec.inputs],
        output=[mc.ModelOutput(name=t.name, data_type=mc.TYPE_FP32, dims=_dims(t)) for t in spec.outputs])
    if model.max_batch_size:
        config.dynamic_batching.CopyFrom(mc.ModelDynamicBatching(
            preferred_batch_size=[model.max_batch_size],
            max_queue_delay_microseconds=model.max_queue_delay_us))
    return config



def add_inference_service(grpc_server: grpc.aio.Server, servicer: InferenceServicer) -> None:
    """Register the v2 service with the same guard against undecodable bodies as vae.v1."""
    from service.decode_guard import add_guarded_servicer

    add_guarded_servicer(pb_grpc.add_GRPCInferenceServiceServicer_to_server, servicer, SERVICE_NAME,
                         grpc_server)
