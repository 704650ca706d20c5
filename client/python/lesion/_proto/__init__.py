"""The lesion.v1 protobuf and gRPC modules, generated at build time by setup.py (build_py).

Import them as ``from lesion._proto import experiment_pb2, result_pb2, service_pb2, service_pb2_grpc``.
"""

try:
    from .lesion.v1 import experiment_pb2, result_pb2, service_pb2, service_pb2_grpc  # noqa: F401
except ImportError as e:  # a source checkout on sys.path instead of an installed package
    raise ImportError(
        "lesion: the generated protobuf modules are missing (lesion/_proto/lesion/v1/*_pb2.py). "
        "Install the package (pip install ./client/python, or pip install -e ./client/python), "
        f"which generates them from proto/: {e}"
    ) from e

__all__ = ["experiment_pb2", "result_pb2", "service_pb2", "service_pb2_grpc"]
