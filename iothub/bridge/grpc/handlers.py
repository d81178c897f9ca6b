"""One service's method handlers, registered by name from its descriptor, each run in the guard.

Generic handlers rather than the generated servicer base classes: a streaming RPC's response
serializer is the identity, so a frame the stream core serialized once per event is written as it
is; unary RPCs serialize their message as usual.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from iothub.bridge.grpc.status import Context, guarded

Req = TypeVar("Req", bound=Message)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _as_is(frame: bytes) -> bytes:
    return frame


class Handlers:
    def __init__(self, descriptor: ServiceDescriptor) -> None:
        self.descriptor = descriptor
        self.name = descriptor.full_name
        self.methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def _known(self, method: str) -> None:
        if method not in self.descriptor.methods_by_name:
            raise KeyError(f"{self.name} has no method {method}")

    def unary(self, method: str, handler: Callable[[Req, Context], Awaitable[Any]], request: type[Req]) -> None:
        self._known(method)
        self.methods[method] = grpc.unary_unary_rpc_method_handler(
            guarded(handler), request_deserializer=request.FromString, response_serializer=_serialize
        )

    def stream(self, method: str, handler: Callable[[Req, Context], Awaitable[None]], request: type[Req]) -> None:
        """A server-streaming method whose handler writes serialized frames with ``context.write``."""
        self._known(method)
        self.methods[method] = grpc.unary_stream_rpc_method_handler(
            guarded(handler), request_deserializer=request.FromString, response_serializer=_as_is
        )

    def bidi(self, method: str, handler: Callable[[Any, Context], Awaitable[None]], request: type[Req]) -> None:
        """A bidirectional method: ``handler(request_iterator, context)`` writes serialized frames."""
        self._known(method)
        self.methods[method] = grpc.stream_stream_rpc_method_handler(
            guarded(handler), request_deserializer=request.FromString, response_serializer=_as_is
        )

    def generic(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(self.name, self.methods)
