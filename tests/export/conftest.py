"""Fixtures of the export tests."""

from __future__ import annotations

import copy

import pytest
import torch


@pytest.fixture
def perturbed_onnx_export(monkeypatch):
    """Make the ONNX exporter trace a copy of the model with shifted box biases: an artefact that really
    differs from its source, which verification must refuse."""
    from yolox_deploy.export import onnx as onnx_export

    real = onnx_export._from_torch

    def perturbed(source, options):
        wrong = copy.copy(source)
        wrong.model = copy.deepcopy(source.model)
        with torch.no_grad():
            for conv in wrong.model.head.reg_preds:
                conv.bias += 0.5
        return real(wrong, options)

    monkeypatch.setattr(onnx_export, "_from_torch", perturbed)
