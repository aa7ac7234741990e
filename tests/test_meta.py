"""Artefact metadata as read back: every field checked, a newer schema refused, a sidecar that is not text named."""

import json

import pytest

from yolox_deploy.errors import ArtefactError
from yolox_deploy.meta import ModelMeta, read_sidecar, sidecar_path


def _stored(**change):
    d = ModelMeta.default(3, (64, 96), batch=None, dynamic_hw=True, decode_in_graph=True).to_dict()
    d.update(change)
    return d


def test_what_an_export_writes_reads_back_equal():
    meta = ModelMeta.default(3, (64, 96), batch=None, decode_in_graph=True).with_(extra={"nms_conf": 0.25})
    assert ModelMeta.from_json(meta.to_json()) == meta
    meta = meta.with_(category_ids=(3, 17, 90))
    assert ModelMeta.from_json(meta.to_json()) == meta


def test_dataset_category_ids_recorded_else_cocos_else_unknown():
    from yolox_deploy.data.coco import COCO_CATEGORY_IDS

    assert ModelMeta.default(3, (64, 64)).with_(category_ids=(3, 17, 90)).dataset_category_ids == (3, 17, 90)
    assert ModelMeta.default(80, (64, 64)).dataset_category_ids == COCO_CATEGORY_IDS  # the authors' weights
    assert ModelMeta.default(3, (64, 64)).dataset_category_ids is None
    renamed = ModelMeta.default(80, (64, 64)).with_(class_names=tuple(f"c{i}" for i in range(80)))
    assert renamed.dataset_category_ids is None  # another label set: COCO's ids would be a guess


@pytest.mark.parametrize("change,field", [
    ({"class_names": "dog"}, "class_names"),
    ({"class_names": [1, 2, 3]}, "class_names"),
    ({"class_names": []}, "class_names"),
    ({"input_size": "416"}, "input_size"),
    ({"input_size": [416]}, "input_size"),
    ({"input_size": [-416, -416]}, "input_size"),
    ({"input_size": [400, 400]}, "input_size"),
    ({"input_size": [416.5, 416]}, "input_size"),
    ({"strides": [32, 16, 8]}, "strides"),
    ({"strides": [0, 16, 32]}, "strides"),
    ({"strides": []}, "strides"),
    ({"decode_in_graph": "false"}, "decode_in_graph"),
    ({"nms_in_graph": 0}, "nms_in_graph"),
    ({"batch": "1"}, "batch"),
    ({"batch": 0}, "batch"),
    ({"max_det": -1}, "max_det"),
    ({"precision": "int3"}, "precision"),
    ({"model": 5}, "model"),
    ({"extra": [1]}, "extra"),
    ({"extra": {"nms_conf": "0.25"}}, "extra.nms_conf"),
    ({"extra": {"nms_iou": None}}, "extra.nms_iou"),  # reached the Detector as float(None)
    ({"nms_conf": 5.0}, "extra.nms_conf"),  # an unknown top-level key lands in extra, where it is checked too
    ({"extra": [1], "note": "x"}, "extra"),
    ({"extra": {"ncnn_bin_bytes": "4096"}}, "extra.ncnn_bin_bytes"),
    ({"extra": {"ncnn_bin_bytes": 0}}, "extra.ncnn_bin_bytes"),
    ({"extra": {"ncnn_bin_sha256": "ABC"}}, "extra.ncnn_bin_sha256"),
    ({"extra": {"openvino_bin_sha256": "0" * 63}}, "extra.openvino_bin_sha256"),
    ({"preprocess": [1, 2]}, "preprocess"),
    ({"preprocess": {"scale": "1"}}, "preprocess.scale"),
    ({"preprocess": {"mean": [1, 2]}}, "preprocess.mean"),
    ({"preprocess": {"std": [1, 0, 1]}}, "preprocess.std"),
    ({"preprocess": {"pad_value": 300}}, "preprocess.pad_value"),
    ({"category_ids": [1, 2]}, "category_ids"),
    ({"category_ids": [1, 1, 2]}, "category_ids"),
    ({"category_ids": ["1", 2, 3]}, "category_ids"),
    ({"category_ids": [1, 2.5, 3]}, "category_ids"),
])
def test_a_field_no_export_writes_is_refused(change, field):
    with pytest.raises(ArtefactError, match=f"malformed: {field}|malformed.*{field}"):
        ModelMeta.from_dict(_stored(**change))


@pytest.mark.parametrize("value", [[1, 2], None, "hi", 5])
def test_metadata_that_is_not_an_object(value):
    with pytest.raises(ArtefactError, match="not a JSON object"):
        ModelMeta.from_json(json.dumps(value))


def test_missing_fields_are_named_and_a_newer_schema_is_refused():
    d = _stored()
    del d["class_names"]
    with pytest.raises(ArtefactError, match="lacks class_names"):
        ModelMeta.from_dict(d)
    with pytest.raises(ArtefactError, match="schema 99, written by a newer yolox-deploy"):
        ModelMeta.from_dict(_stored(schema=99))


def test_a_sidecar_that_is_not_text(tmp_path):
    artefact = tmp_path / "model.ncnn.param"
    sidecar_path(artefact).write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ArtefactError, match="not a text"):
        read_sidecar(artefact)


def test_a_variant_is_recognised_by_its_parameter_count_within_ten_percent():
    from yolox_deploy.zoo import VARIANTS, variant_by_params

    for name, spec in VARIANTS.items():
        assert variant_by_params(spec.params) == name
        assert variant_by_params(int(spec.params * 0.97)) == name  # folded BatchNorms, another class count
    assert variant_by_params(int(VARIANTS["yolox-nano"].params * 1.3)) is None  # between nano and tiny
    assert variant_by_params(1000) is None and variant_by_params(0) is None
