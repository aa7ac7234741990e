"""Runtimes: one backend module per runtime, registered by the artefact kind it opens, and the Detector.

Importing this package registers every built-in backend; their optional packages are only imported when an
artefact is opened, so a missing runtime is reported (``BackendInfo.available``), never fatal here.
"""

from ..utils.plugins import import_builtins
from .base import Backend, BackendInfo, backend_class, find_backend, register_backend, registered_backends
from .detector import Detector, open_backend

BUILTIN_BACKENDS = ("torch", "onnxruntime", "openvino", "ncnn", "tensorrt")
IMPORT_ERRORS: dict[str, str] = import_builtins(__name__, BUILTIN_BACKENDS)

__all__ = ["Backend", "BackendInfo", "Detector", "backend_class", "find_backend", "open_backend",
           "register_backend", "registered_backends"]
