"""The gRPC contract ``iothub.v1``, generated from ``protos/iothub/v1/*.proto`` by ``scripts/protos``.

Never edit the ``*_pb2*`` modules by hand: change the ``.proto`` files and regenerate. Messages are in
``<file>_pb2`` (``iothub.v1.devices_pb2.Device``), client stubs in ``<file>_pb2_grpc``
(``iothub.v1.devices_pb2_grpc.DeviceServiceStub``); the ``.pyi`` stubs type both.
"""
