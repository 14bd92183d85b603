"""The model server inside every Constellation model image: an Open Inference Protocol
(KServe V2) gRPC server around a model folder described by `constellation.yaml`.

It depends only on grpcio, grpcio-health-checking, protobuf, numpy and pyyaml
(plus the model's own requirements), never on the mesh's services.
"""

MODEL_DIR = "/opt/model"  # where a model image holds the model folder


def command(host: str, port: int, model_dir: str = MODEL_DIR, python: str = "python") -> list[str]:
    """The command line that serves `model_dir` on host:port (images, local processes, compose, Modal)."""
    return [python, "-m", "model_runtime", "--model-dir", model_dir, "--host", host, "--port", str(port)]
