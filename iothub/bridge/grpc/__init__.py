"""The gRPC API for backend services (``iothub.v1``, contract in ``protos/iothub/v1/*.proto``).

Modules: :mod:`.server` (the ``grpc.aio`` server's lifecycle, health and reflection), :mod:`.auth`
(the ``authorization`` metadata), :mod:`.status` (the one table from errors to status codes),
:mod:`.handlers` (method registration), :mod:`.convert` (hub values as messages), :mod:`.streams`
(the ``grpc`` channel of the stream core), and one module per service: :mod:`.devices`,
:mod:`.telemetry`, :mod:`.commands`.
"""

from iothub.bridge.grpc.server import GrpcServer

__all__ = ["GrpcServer"]
