"""Reading an ONNX graph's interface (works on the loaded protobuf; needs no ``onnx`` import)."""

from __future__ import annotations

import math
from typing import Any

FLOAT_TYPES = (1, 10, 11, 16)  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def graph_inputs(graph: Any) -> list[Any]:
    """The graph's real inputs: its declared inputs but the initializers that older exporters list among them."""
    init = {i.name for i in graph.initializer}
    return [i for i in graph.input if i.name not in init]


def tensor_dims(value_info: Any, unknown: Any = None) -> list[Any]:
    """A tensor's dims: ints where fixed, the dimension's name where symbolic, ``unknown`` where it has neither
    (keep it ``None`` for shapes written back into a graph: equal names mean equal sizes to ONNX Runtime)."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or unknown)
            for d in value_info.type.tensor_type.shape.dim]


FLOAT16 = 10  # TensorProto FLOAT16


def float_weight_count(graph: Any, types: tuple[int, ...] = FLOAT_TYPES) -> int:
    """The number of weights of ``types`` (floating-point ones by default) among the graph's initializers (a
    model's parameter count, with BatchNorms as the exporter left them)."""
    return sum(math.prod(t.dims) for t in graph.initializer if t.data_type in types)


def described_by_graph(graph: Any) -> dict[str, Any]:
    """What a graph without metadata says about itself, as :class:`~yolox_deploy.meta.ModelMeta` fields: the
    variant (by parameter count, :func:`~yolox_deploy.zoo.variant_by_params`), the precision (of its weights)
    and whether it decodes its boxes (the decode's ``Exp`` of the sizes: a raw YOLOX head has none)."""
    from ..zoo import variant_by_params

    return {"model": variant_by_params(float_weight_count(graph)), "precision": weights_precision(graph),
            "decode_in_graph": any(node.op_type == "Exp" for node in graph.node)}


def weights_precision(graph: Any) -> str:
    """``"fp16"`` when most of the graph's floating-point weights are FP16 (a graph converted to half precision,
    whatever its inputs' type), else ``"fp32"``."""
    return "fp16" if 2 * float_weight_count(graph, (FLOAT16,)) > float_weight_count(graph) else "fp32"
