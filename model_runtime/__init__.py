"""The model server inside every Constellation model image: an Open Inference Protocol
(KServe V2) gRPC server around a model folder described by `constellation.yaml`.

It depends only on grpcio, grpcio-health-checking, protobuf, numpy and pyyaml
(plus the model's own requirements), never on the mesh's services.
"""
