"""COCO evaluation with the authors' protocol::

    from yolox_deploy import Detector
    from yolox_deploy.eval import AUTHORS_PROTOCOL, evaluate

    result = evaluate(Detector("yolox_nano.onnx", **AUTHORS_PROTOCOL), "coco")   # COCO root, val2017
    result.stats["AP"], result.stats["AP50"], result.per_class
"""

from __future__ import annotations

from .coco import AUTHORS_PROTOCOL, EvalResult, evaluate, open_coco

__all__ = ["AUTHORS_PROTOCOL", "EvalResult", "evaluate", "open_coco"]
