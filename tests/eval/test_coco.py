import json

import pytest

from tests.conftest import REFERENCE_AP, REFERENCE_AP50
from yolox_deploy import Detector
from yolox_deploy.errors import InputError
from yolox_deploy.eval.coco import AUTHORS_PROTOCOL, category_mapping, evaluate, open_coco


@pytest.fixture(scope="module")
def nano_result(nano_pth, coco_tiny):
    det = Detector(nano_pth, model="yolox-nano", **AUTHORS_PROTOCOL)
    return evaluate(det, coco_tiny)


def test_reproduces_the_authors_ap(nano_result):
    assert abs(nano_result.stats["AP"] - REFERENCE_AP) <= 0.001
    assert abs(nano_result.stats["AP50"] - REFERENCE_AP50) <= 0.001
    assert nano_result.num_images == 80
    assert len(nano_result.per_class) == 80


def test_category_mapping_by_name(coco_tiny):
    data = open_coco(coco_tiny)
    from yolox_deploy.data.coco import COCO_CATEGORY_IDS, COCO_CLASSES

    assert category_mapping(COCO_CLASSES, data) == list(COCO_CATEGORY_IDS)
    with pytest.raises(InputError, match="do not match"):
        category_mapping(("a", "b"), data)


def test_subset_dataset_maps_by_name(tmp_path, coco_tiny):
    """An 80-class model on a dataset with three of its categories: classes map by name."""
    ann = json.loads((coco_tiny / "annotations" / "instances_val2017.json").read_text())
    keep = {1, 3, 18}
    ann["categories"] = [c for c in ann["categories"] if c["id"] in keep]
    ann["annotations"] = [a for a in ann["annotations"] if a["category_id"] in keep]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(ann))
    (tmp_path / "val2017").symlink_to(coco_tiny / "val2017")
    from yolox_deploy.data.coco import COCO_CLASSES

    mapping = category_mapping(COCO_CLASSES, open_coco(tmp_path))
    assert mapping[0] == 1 and mapping[2] == 3 and mapping[16] == 18
    assert sum(m is not None for m in mapping) == 3


def test_not_a_coco_folder(tmp_path):
    with pytest.raises(InputError, match="not found"):
        open_coco(tmp_path / "nope")
    with pytest.raises(InputError, match="instances_val2017.json"):
        open_coco(tmp_path)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{not json")
    (tmp_path / "val2017").mkdir()
    with pytest.raises(InputError, match="not a valid COCO annotation"):
        open_coco(tmp_path)
