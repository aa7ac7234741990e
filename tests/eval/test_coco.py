import json
import re
import time
from types import SimpleNamespace

import pytest

from tests.conftest import REFERENCE_AP, REFERENCE_AP50
from yolox_deploy import Detector
from yolox_deploy.errors import InputError
from yolox_deploy.eval import AUTHORS_PROTOCOL, evaluate, open_coco  # the package's public names
from yolox_deploy.eval.coco import category_mapping, open_scorable


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


def _relabelled(tmp_path, coco_tiny, change):
    """coco-tiny val with its annotation file passed through ``change`` (a function of the parsed JSON)."""
    ann = json.loads((coco_tiny / "annotations" / "instances_val2017.json").read_text())
    change(ann)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(ann))
    (tmp_path / "val2017").symlink_to(coco_tiny / "val2017")
    return open_coco(tmp_path)


def test_subset_dataset_maps_by_name(tmp_path, coco_tiny):
    """An 80-class model on a dataset with three of its categories: classes map by name."""
    keep = {1, 3, 18}

    def subset(ann):
        ann["categories"] = [c for c in ann["categories"] if c["id"] in keep]
        ann["annotations"] = [a for a in ann["annotations"] if a["category_id"] in keep]

    from yolox_deploy.data.coco import COCO_CLASSES

    mapping = category_mapping(COCO_CLASSES, _relabelled(tmp_path, coco_tiny, subset))
    assert mapping[0] == 1 and mapping[2] == 3 and mapping[16] == 18
    assert sum(m is not None for m in mapping) == 3


def test_a_renamed_category_pairs_by_position_among_the_rest(tmp_path, coco_tiny, caplog):
    """Ids renumbered (reversed) and one name changed: 79 classes map by name, the odd pair is matched up and
    named in a warning (by position in all ids, the whole mapping was reversed: AP 0)."""
    from yolox_deploy.data.coco import COCO_CATEGORY_IDS, COCO_CLASSES

    def renumber(ann):
        for c in ann["categories"]:
            c["name"] = "motorbike" if c["name"] == "motorcycle" else c["name"]
            c["id"] = 1000 - c["id"]
        for a in ann["annotations"]:
            a["category_id"] = 1000 - a["category_id"]

    with caplog.at_level("WARNING"):
        mapping = category_mapping(COCO_CLASSES, _relabelled(tmp_path, coco_tiny, renumber))
    assert mapping == [1000 - i for i in COCO_CATEGORY_IDS]
    assert "motorcycle -> motorbike" in caplog.text


def test_names_differing_in_case_match_and_a_positional_pairing_is_said(tmp_path, coco_tiny, caplog):
    """"Person" is the class person (all names capitalised paired silently by position: any order was taken).
    Names that match nothing pair by position with a warning listing the pairs, placeholders without one."""
    from yolox_deploy.data.coco import COCO_CATEGORY_IDS, COCO_CLASSES, placeholder_names

    def capitalised_and_reversed(ann):
        for c in ann["categories"]:
            c["name"] = c["name"].capitalize() + " "
            c["id"] = 1000 - c["id"]
        for a in ann["annotations"]:
            a["category_id"] = 1000 - a["category_id"]

    data = _relabelled(tmp_path, coco_tiny, capitalised_and_reversed)
    with caplog.at_level("WARNING"):
        assert category_mapping(COCO_CLASSES, data) == [1000 - i for i in COCO_CATEGORY_IDS]
    assert not caplog.text
    two = ["Person", "person "] + list(COCO_CLASSES[2:])  # two classes folding to one name: neither takes it
    with caplog.at_level("WARNING"):
        mapping = category_mapping(two, data)
    assert sorted(mapping[:2]) == [998, 999] and "paired by position" in caplog.text  # never one category twice
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert category_mapping([f"thing{i}" for i in range(80)], data) == sorted(data.category_ids)
    assert "none of the model's class names is a dataset category" in caplog.text
    assert f"thing0 -> {dict(zip(data.category_ids, data.category_names))[min(data.category_ids)]}" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        category_mapping(placeholder_names(80), data)
    assert not caplog.text


def test_a_ground_truth_of_id_0_scores_like_any_other(tmp_path, coco_tiny):
    """COCOeval records matches by ground-truth id, and id 0 reads as unmatched: the ground truth itself as
    detections scored 0.9966, not 1, with annotation ids 0, 1, 2..."""
    from yolox_deploy.eval.coco import coco_evaluate, open_scorable

    def from_zero(ann):
        for k, a in enumerate(ann["annotations"]):
            a["id"] = k

    _relabelled(tmp_path, coco_tiny, from_zero)
    data = open_scorable(tmp_path)
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in data.coco.dataset["annotations"] if not a["iscrowd"]]
    assert coco_evaluate(data, perfect, data.category_ids).stats["AP"] == pytest.approx(1.0)


def test_dataset_categories_without_a_class_are_named_and_not_scored(tmp_path, coco_tiny, caplog):
    from yolox_deploy.data.coco import COCO_CLASSES
    from yolox_deploy.eval.coco import coco_evaluate

    data = _relabelled(tmp_path, coco_tiny, lambda ann: ann["categories"].append({"id": 200, "name": "unicorn"}))
    with caplog.at_level("WARNING"):
        assert category_mapping(COCO_CLASSES, data)[:2] == [1, 2]
    assert "1 dataset categories are no class of the model and are not scored: unicorn" in caplog.text
    caplog.clear()
    three = ("person", "bicycle", "car")  # a 3-class model on all of COCO's categories
    with caplog.at_level("WARNING"):
        mapping = category_mapping(three, data)
    assert mapping == [1, 2, 3] and "78 dataset categories" in caplog.text
    result = coco_evaluate(data, [{"image_id": data.image_ids[0], "category_id": 1, "bbox": [0, 0, 10, 10],
                                   "score": 0.5}], mapping)
    assert sorted(result.per_class) == sorted(three)


def test_without_detections_classes_without_boxes_have_no_ap(tmp_path, coco_tiny, caplog):
    """With no detections at all every class scored 0.0, also those without a box (NaN when anything is detected)."""
    from yolox_deploy.data.coco import COCO_CLASSES
    from yolox_deploy.eval.coco import coco_evaluate

    def three_images(ann):
        keep = {im["id"] for im in ann["images"][:3]}
        return {**ann, "images": [im for im in ann["images"] if im["id"] in keep],
                "annotations": [a for a in ann["annotations"] if a["image_id"] in keep]}

    data = open_scorable(_split(tmp_path, coco_tiny, three_images))
    mapping = [i for i in category_mapping(COCO_CLASSES, data) if i is not None]
    with caplog.at_level("WARNING"):
        none = coco_evaluate(data, [], mapping)
    assert "no detections on any of the 3 images: AP 0 (NaN for classes without ground truth)" in caplog.text
    one = coco_evaluate(data, [{"image_id": data.image_ids[0], "category_id": 1, "bbox": [0, 0, 10, 10],
                                "score": 0.5}], mapping)
    assert [k for k, v in none.per_class.items() if v != v] == [k for k, v in one.per_class.items() if v != v] != []
    assert none.stats["AP"] == 0.0 and none.per_class["person"] == 0.0


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


def _split(tmp_path, coco_tiny, edit):
    """coco-tiny val with its annotation file changed by ``edit`` (a dict -> JSON-able object function)."""
    ann = json.loads((coco_tiny / "annotations" / "instances_val2017.json").read_text())
    (tmp_path / "annotations").mkdir(exist_ok=True)
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(edit(ann)))
    if not (tmp_path / "val2017").exists():
        (tmp_path / "val2017").symlink_to(coco_tiny / "val2017")
    return tmp_path


@pytest.mark.parametrize("edit,message", [
    (lambda a: [a], "not a valid COCO annotation file"),
    (lambda a: {**a, "images": []}, "lists no images"),
    (lambda a: {k: v for k, v in a.items() if k != "images"}, "lists no images"),
    (lambda a: {**a, "images": [{k: v for k, v in im.items() if k != "file_name"} for im in a["images"]]},
     "80 image(s) have no file_name"),
    (lambda a: {**a, "categories": [{"id": c["id"]} for c in a["categories"]]}, "80 categories have no name"),
    (lambda a: {k: v for k, v in a.items() if k != "categories"}, "has no categories"),
    (lambda a: {**a, "categories": [{**c, "name": "bicycle"} if c["id"] == 3 else c for c in a["categories"]]},
     "category names must be distinct; 'bicycle' names ids 2, 3"),
    (lambda a: {**a, "images": [{**a["images"][0], "id": None}, *a["images"][1:]]},
     "image id None is not an integer or a name"),
    (lambda a: {**a, "images": [{**a["images"][0], "id": 1.5}, *a["images"][1:]]}, "image id 1.5 is not an integer"),
    (lambda a: {**a, "images": [*a["images"], {**a["images"][0], "file_name": a["images"][1]["file_name"]}]},
     "2 images have the id"),  # the second entry would silently take the first one's place
    # what pycocotools' index needs, named (its KeyError said "('id')", its TypeError "unhashable type: 'list'")
    (lambda a: _first_annotation(a, id=None), "annotation #0 has no 'id'"),
    (lambda a: _first_annotation(a, image_id=None), "annotation #0 has no 'image_id'"),
    (lambda a: _first_annotation(a, category_id=[1]), "annotation #0 has category_id [1], not an integer"),
    (lambda a: {**a, "categories": [{"name": "x"}]}, "category #0 has no 'id'"),
    (lambda a: {**a, "images": {"0": a["images"][0]}}, "'images' is a JSON dict, not a list"),
    (lambda a: {**a, "annotations": [1, 2]}, "annotation #0 is a JSON int, not an object"),
])
def test_unusable_annotation_files_are_refused(tmp_path, coco_tiny, edit, message):
    with pytest.raises(InputError, match=re.escape(message)):
        open_coco(_split(tmp_path, coco_tiny, edit))


def test_ids_that_are_names_train_but_do_not_score(tmp_path, coco_tiny):
    """Training only keys by id; scoring writes integer ids, so a split with names for ids is refused there."""
    from yolox_deploy.eval.coco import open_scorable
    from yolox_deploy.train.data import load_detection_set

    def named(a):
        names = {im["id"]: f"img{im['id']}" for im in a["images"]}
        return {**a, "images": [{**im, "id": names[im["id"]]} for im in a["images"]],
                "annotations": [{**x, "image_id": names[x["image_id"]]} for x in a["annotations"]]}

    (tmp_path / "named").mkdir()
    (tmp_path / "cats").mkdir()
    root = _split(tmp_path / "named", coco_tiny, named)
    assert len(open_coco(root).image_ids) == 80
    (root / "train2017").symlink_to(root / "val2017")
    (root / "annotations" / "instances_train2017.json").symlink_to(root / "annotations" / "instances_val2017.json")
    assert len(load_detection_set(root, "train2017").records) > 0
    with pytest.raises(InputError, match="image id 'img\\d+' is not an integer"):
        open_scorable(root)
    cats = _split(tmp_path / "cats", coco_tiny,
                  lambda a: {**a, "categories": [{**c, "id": str(c["id"])} for c in a["categories"]],
                             "annotations": [{**x, "category_id": str(x["category_id"])} for x in a["annotations"]]})
    with pytest.raises(InputError, match="category id '1' is not an integer"):
        open_scorable(cats)


def _first_annotation(a, **change):
    first = {k: v for k, v in a["annotations"][0].items() if k not in change or change[k] is not None}
    first.update({k: v for k, v in change.items() if v is not None})
    return {**a, "annotations": [first, *a["annotations"][1:]]}


def test_images_missing_from_the_folder_are_refused_before_inference(tmp_path, coco_tiny):
    from yolox_deploy.eval.coco import open_scorable

    root = _split(tmp_path, coco_tiny, lambda a: {**a, "images": [*a["images"][:-1],
                                                                  {**a["images"][-1], "file_name": "gone.jpg"}]})
    with pytest.raises(InputError, match=re.escape("1 image(s) listed in")):
        open_scorable(root)


def test_an_empty_image_file_is_refused_before_inference(tmp_path, coco_tiny):
    """It was found when its turn came, after inference on every image before it."""
    from yolox_deploy.eval.coco import open_scorable

    root = _split(tmp_path, coco_tiny, lambda a: a)
    (root / "val2017").unlink()
    (root / "val2017").mkdir()
    images = sorted((coco_tiny / "val2017").iterdir())
    for p in images[:-1]:
        (root / "val2017" / p.name).symlink_to(p)
    (root / "val2017" / images[-1].name).write_bytes(b"")
    with pytest.raises(InputError, match=f"{images[-1].name} is empty"):
        open_scorable(root)


def test_a_diverged_models_detections_are_counted_once_and_the_callers_list_is_not_changed(coco_tiny, caplog):
    """A NaN box was a raw UserWarning (this file's path and line) inside the bar, without a count; pycocotools'
    loadRes added segmentation, area, id and iscrowd to every entry of the returned detections."""
    import warnings

    import numpy as np

    from yolox_deploy.structures import Detections

    class Diverged:
        meta = SimpleNamespace(class_names=tuple(f"c{i}" for i in range(80)))
        batch_size = 8

        def run_batch(self, images):
            return [Detections.from_arrays(np.array([[1, 1, 20, 20], [np.nan, 0, 5, 5]], np.float32),
                                           np.array([0.9, 0.8], np.float32), np.array([0, 0]), self.meta.class_names,
                                           image_size=im.shape[:2]) for im in images]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = evaluate(Diverged(), coco_tiny)
    assert "80 detections with a box or score that is not finite" in caplog.text
    assert len(result.detections) == 80
    assert {k for d in result.detections for k in d} == {"image_id", "category_id", "bbox", "score"}


@pytest.mark.parametrize("change,message", [
    ({"area": None}, "has no 'area'"), ({"iscrowd": None}, "has no 'iscrowd'"), ({"bbox": None}, "has no 'bbox'"),
    ({"bbox": "x"}, "has bbox 'x', not four numbers"), ({"iscrowd": 2}, "iscrowd 2"),
    ({"category_id": 999}, "category_id 999, which the file does not list"),
    ({"id": 1342996}, "2 annotations have the id 1342996; ids must be unique"),  # the second one's: counted twice
    ({"id": "a1"}, "annotation id 'a1' is not an integer"),
])
def test_annotations_the_scorer_cannot_read_are_refused_before_inference(tmp_path, coco_tiny, change, message):
    from yolox_deploy.eval.coco import open_scorable

    with pytest.raises(InputError, match=re.escape(message)):
        open_scorable(_split(tmp_path, coco_tiny, lambda a: _first_annotation(a, **change)))


def test_a_split_without_annotations_cannot_be_scored(tmp_path, coco_tiny):
    from yolox_deploy.eval.coco import open_scorable

    root = _split(tmp_path, coco_tiny, lambda a: {**a, "annotations": []})
    assert len(open_coco(root).image_ids) == 80  # a valid split (training may use images without boxes)
    with pytest.raises(InputError, match="has no annotations: there is nothing to score"):
        open_scorable(root)
    # crowd regions only: COCOeval ignores them, and gave AP -1 for every metric
    root = _split(tmp_path, coco_tiny, lambda a: {**a, "annotations": [{**x, "iscrowd": 1} for x in a["annotations"]]})
    assert len(open_coco(root).image_ids) == 80
    with pytest.raises(InputError, match=r"every annotation is a crowd region \(iscrowd 1\)"):
        open_scorable(root)


def test_a_split_opened_elsewhere_is_checked_before_scoring(tmp_path, coco_tiny, tiny_random_model):
    """evaluate() given an open_coco split skipped the scoring checks: ids from 0 were not renumbered (COCOeval
    reads id 0 as unmatched: test_a_ground_truth_of_id_0_scores_like_any_other), a malformed box reached
    pycocotools."""
    def from_zero(ann):
        for k, a in enumerate(ann["annotations"]):
            a["id"] = k

    (tmp_path / "zero").mkdir(), (tmp_path / "bad").mkdir()
    opened = _relabelled(tmp_path / "zero", coco_tiny, from_zero)
    assert opened.coco.anns.get(0) is not None
    det = Detector(tiny_random_model, conf=1.0, class_names=("person", "bicycle", "car"), img_size=64)  # the checks
    evaluate(det, opened)
    assert opened.scorable and 0 not in opened.coco.anns  # renumbered from 1
    bad = open_coco(_split(tmp_path / "bad", coco_tiny, lambda a: _first_annotation(a, bbox="x")))
    with pytest.raises(InputError, match="has bbox 'x', not four numbers"):
        evaluate(det, bad)


def test_two_classes_of_one_name_are_refused(coco_tiny):
    """Both matched the category of their name: the detections of one were scored as the other's."""
    from yolox_deploy.data.coco import COCO_CLASSES

    names = ("person", "person", *COCO_CLASSES[2:])
    with pytest.raises(InputError, match="classes 0 and 1 are both named 'person'"):
        category_mapping(names, open_coco(coco_tiny))


def test_metrics_without_ground_truth_are_undefined_with_or_without_detections(tmp_path, coco_tiny):
    """A split of large objects only: APs / APm were -1 (COCOeval's sentinel) with detections and 0 without;
    both are undefined (NaN, null in JSON), as the per-class APs of classes without boxes."""
    from yolox_deploy.eval.coco import coco_evaluate

    def large_only(ann):
        return {**ann, "annotations": [a for a in ann["annotations"] if a["area"] > 96 ** 2]}

    data = open_scorable(_split(tmp_path, coco_tiny, large_only))
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in data.coco.dataset["annotations"] if not a["iscrowd"]]
    for detections in (perfect, []):
        stats = coco_evaluate(data, detections).stats
        undefined = sorted(k for k, v in stats.items() if v != v)
        assert undefined == ["APm", "APs", "ARm", "ARs"], detections[:1]
    assert coco_evaluate(data, perfect).stats["APl"] == pytest.approx(1.0)


@pytest.mark.parametrize("detector,hint", [(None, "Detector(weights)"), ("m.onnx", "Detector('m.onnx')")])
def test_evaluate_needs_a_detector(coco_tiny, detector, hint):
    with pytest.raises(InputError, match=re.escape(f"evaluate runs a Detector, e.g. evaluate({hint}, data)")):
        evaluate(detector, coco_tiny)


def test_images_are_decoded_a_bounded_way_ahead_of_the_model(coco_tiny, monkeypatch):
    """Evaluation decodes the next images while the model runs, never the whole split into memory."""
    import yolox_deploy.eval.coco as coco_module
    from yolox_deploy.structures import Detections

    decoded = []
    real = coco_module.read_image

    def read_image(path):
        decoded.append(path)
        return real(path)

    class SlowDetector:
        meta = SimpleNamespace(class_names=tuple(f"c{i}" for i in range(80)))  # mapped by position
        batch_size = 2
        ahead: list[int] = []

        def run_batch(self, images):
            self.ahead.append(len(decoded))
            time.sleep(0.01)
            return [Detections.empty(im.shape[:2]) for im in images]

    monkeypatch.setattr(coco_module, "read_image", read_image)
    det = SlowDetector()
    evaluate(det, coco_tiny)
    limit = (coco_module.PREFETCH_BATCHES + 1) * det.batch_size
    assert len(det.ahead) == 40 and all(n <= (k + 1) * det.batch_size + limit for k, n in enumerate(det.ahead))
    assert det.ahead[0] <= limit


def test_metrics_json_is_strict_json():
    """A class without ground truth has AP NaN: written as null, which every JSON parser reads."""
    from yolox_deploy.utils.files import json_text

    text = json_text({"AP": 0.3, "per_class_AP": {"giraffe": float("nan"), "cat": float("inf")}})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}")) == {
        "AP": 0.3, "per_class_AP": {"giraffe": None, "cat": None}}


def test_an_image_read_at_another_size_than_its_entry_is_refused(tmp_path, coco_tiny, nano_onnx):
    """Its boxes would not fit it: every one would be scored as missed (an EXIF orientation the boxes were not
    drawn for reads turned, as a swapped entry does)."""
    def swapped(a):
        first = a["images"][0]
        return {**a, "images": [{**first, "width": first["height"], "height": first["width"]}, *a["images"][1:]]}

    root = _split(tmp_path, coco_tiny, swapped)
    first = json.loads((root / "annotations" / "instances_val2017.json").read_text())["images"][0]
    with pytest.raises(InputError, match=re.escape(f"{first['file_name']} is {first['height']}x{first['width']} "
                                                   "pixels but the annotation file says") + ".*swapped"):
        evaluate(Detector(nano_onnx), root)
