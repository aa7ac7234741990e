import numpy as np
import pytest
import torch

from yolox_deploy.structures import Detections, name_table


def make(n=4):
    xyxy = np.array([[0, 0, 10, 10], [5, 5, 20, 25], [30, 30, 40, 45], [1, 2, 3, 4]][:n], np.float32)
    return Detections.from_arrays(xyxy, np.linspace(0.9, 0.3, n), np.arange(n) % 2, ["cat", "dog"], (50, 60))


def test_fields_are_typed_and_parallel():
    d = make()
    assert d.xyxy.dtype == np.float32 and d.scores.dtype == np.float32 and d.class_ids.dtype == np.int64
    assert list(d.names) == ["cat", "dog", "cat", "dog"]
    assert len(d) == 4


@pytest.mark.parametrize("table", [("cat", "dog"), name_table(["cat", "dog"])])
def test_names_from_a_sequence_or_a_table_and_ids_out_of_range(table):
    xyxy = np.zeros((4, 4), np.float32)
    d = Detections.from_arrays(xyxy, np.ones(4), np.array([1, 0, 2, -1]), table)
    assert list(d.names) == ["dog", "cat", "class2", "class-1"]
    assert list(Detections.from_arrays(xyxy[:2], np.ones(2), [1, 1], table).names) == ["dog", "dog"]
    assert Detections.from_arrays(xyxy[:0], np.ones(0), [], table).names.shape == (0,)


def test_shape_errors_name_the_expected_shape():
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        Detections(np.zeros((3, 5)), np.zeros(3), np.zeros(3), np.array(["a"] * 3))
    with pytest.raises(ValueError, match=r"scores must have shape \[3\]"):
        Detections(np.zeros((3, 4)), np.zeros(2), np.zeros(3), np.array(["a"] * 3))
    for size in ((10,), "ab", (1.5, 2), (3, -1), 7, (1, 2, 3)):
        with pytest.raises(ValueError, match=r"image_size is \(height, width\) in pixels, not"):
            Detections.empty(size)
    assert Detections.empty(np.array([3, 4])).image_size == (3, 4)


def test_to_coco_leaves_out_what_json_cannot_hold():
    d = Detections.from_arrays(np.array([[0, 0, 10, 10], [np.nan, 0, 5, 5], [0, 0, np.inf, 5], [1, 1, 4, 4]]),
                               [0.9, 0.8, 0.7, np.nan], [0, 1, 0, 1], ["cat", "dog"], (20, 20), category_ids=[3, 7])
    with pytest.warns(UserWarning, match="leaves out detections whose box or score is not finite"):
        entries = d.to_coco(5)
    assert entries == [{"image_id": 5, "category_id": 3, "bbox": [0.0, 0.0, 10.0, 10.0], "score": pytest.approx(0.9)}]


@pytest.mark.parametrize("index,expected", [(1, [1]), (slice(1, 3), [1, 2]), ([3, 0], [3, 0]),
                                            (np.array([True, False, False, True]), [0, 3])])
def test_indexing_returns_new_detections(index, expected):
    d = make()
    sub = d[index]
    assert isinstance(sub, Detections)
    np.testing.assert_array_equal(sub.xyxy, d.xyxy[expected])
    np.testing.assert_array_equal(sub.names, d.names[expected])
    assert sub.image_size == d.image_size


def test_boolean_mask_filtering_and_wrong_mask():
    d = make()
    kept = d[d.scores > 0.5]
    assert len(kept) == 2 and (kept.scores > 0.5).all()
    for short in (np.array([True, False]), np.array([], dtype=bool)):
        with pytest.raises(IndexError, match=r"\[4\]"):
            d[short]
    assert len(Detections.empty()[np.array([], dtype=bool)]) == 0
    for flag in (True, np.bool_(False), None, (0,), 1.0, "0", [[0, 1]], np.zeros((2, 2), int)):
        with pytest.raises(IndexError, match="boolean mask of length N"):  # not row 1 / 0, not a new axis
            d[flag]
    assert len(d[[]]) == 0 and len(d[np.array([], dtype=np.int64)]) == 0 and len(d[np.int32(2)]) == 1


def test_detections_are_not_hashable_and_say_so():
    with pytest.raises(TypeError, match="Detections are not hashable"):
        hash(make())


def test_empty():
    e = Detections.empty((10, 10))
    assert len(e) == 0 and e.xyxy.shape == (0, 4)
    assert e.to_coco(1) == []
    assert len(e[e.scores > 0]) == 0
    # a Detector's empty result knows its model's category ids (none to carry): still the same nothing
    found = Detections.from_arrays(np.zeros((0, 4)), [], [], ["a"], (10, 10), category_ids=[7])
    assert found.category_ids is not None and found == e and e == found
    assert found != Detections.empty((10, 11))


def test_to_coco_maps_categories_and_skips_unmapped():
    d = make(2)
    entries = d.to_coco(7, category_ids=[18, None])
    assert entries == [{"image_id": 7, "category_id": 18, "bbox": [0.0, 0.0, 10.0, 10.0], "score": pytest.approx(0.9)}]


def test_to_coco_refuses_a_category_map_keyed_by_text():
    """A map read from JSON has text keys: it mapped no class, and to_coco silently wrote nothing."""
    from yolox_deploy.errors import InputError

    assert [e["category_id"] for e in make(2).to_coco(7, category_ids={0: 18, 1: 3})] == [18, 3]
    with pytest.raises(InputError, match="its key '0' is no class id .a map read from JSON has text keys"):
        make(2).to_coco(7, category_ids={"0": 18, "1": 3})


def test_to_coco_refuses_a_category_map_too_short():
    from yolox_deploy.errors import InputError

    with pytest.raises(InputError, match="category_ids maps 1 classes, but a detection has class id 1"):
        make(2).to_coco(7, category_ids=[18])
    negative = Detections.from_arrays([[0, 0, 5, 5]], [0.9], [-1], ["person", "car"])
    with pytest.raises(InputError, match="a detection has class id -1"):  # not the last category, as [-1] would
        negative.to_coco(1, category_ids=[1, 3])


def test_category_ids_follow_the_rows_and_are_what_to_coco_writes():
    xyxy = np.array([[0, 0, 10, 10], [5, 5, 20, 25], [30, 30, 40, 45]], np.float32)
    d = Detections.from_arrays(xyxy, [0.9, 0.8, 0.7], [2, 0, 2], ["a", "b", "c"], (50, 60), (3, 17, 90))
    np.testing.assert_array_equal(d.category_ids, [90, 3, 90])
    assert [e["category_id"] for e in d.to_coco(1)] == [90, 3, 90]
    assert [e["category_id"] for e in d.to_coco(1, category_ids=[7, None, 8])] == [8, 7, 8]  # a mapping wins
    np.testing.assert_array_equal(d[[1, 2]].category_ids, [3, 90])
    np.testing.assert_array_equal(d[d.scores > 0.75].category_ids, [90, 3])
    assert [r["category_id"] for r in d.to_dict()["detections"]] == [90, 3, 90]
    assert d != Detections.from_arrays(xyxy, [0.9, 0.8, 0.7], [2, 0, 2], ["a", "b", "c"], (50, 60))
    plain = make(2)  # a model that does not know its dataset ids: class ids, and no category_id in to_dict
    with pytest.warns(UserWarning, match="no dataset category ids .* pass category_ids= to map them"):
        assert plain.category_ids is None and [e["category_id"] for e in plain.to_coco(1)] == [0, 1]
    assert "category_id" not in plain.to_dict()["detections"][0]
    out_of_range = Detections.from_arrays(xyxy[:1], [0.9], [5], ["a", "b", "c"], None, (3, 17, 90))
    assert out_of_range.category_ids is None and out_of_range.names[0] == "class5"
    with pytest.raises(ValueError, match=r"category_ids must have shape \[3\]"):
        Detections(xyxy, np.ones(3), np.zeros(3), np.array(["a"] * 3), category_ids=[1, 2])


def test_ids_are_whole_numbers_and_category_ids_fit_the_class_table():
    """A float class id 0.99 became class 0, NaN became -2**63, and a category id table of the wrong length
    was dropped without a word (to_coco then warned that the model recorded none)."""
    from yolox_deploy.errors import InputError

    boxes = np.zeros((2, 4))
    assert Detections.from_arrays(boxes, [0.5, 0.4], np.array([1.0, 0.0]), ["a", "b"]).class_ids.tolist() == [1, 0]
    for ids, bad in (([0.99, 1.0], "0.99"), ([np.nan, 1], "nan"), ([np.inf, 1], "inf")):
        with pytest.raises(InputError, match=f"class_ids must be whole numbers, got {bad}"):
            Detections.from_arrays(boxes, [0.5, 0.4], ids, ["a", "b"])
    with pytest.raises(InputError, match="class_ids must be integers"):
        Detections(boxes, [0.5, 0.4], ["x", "y"], ["a", "b"])
    with pytest.raises(InputError, match="3 category ids for 2 class names"):
        Detections.from_arrays(boxes, [0.5, 0.4], [0, 1], ["a", "b"], category_ids=[1, 2, 3])
    with pytest.raises(InputError, match="category_ids must be whole numbers, got 1.5"):
        Detections(boxes, [0.5, 0.4], [0, 1], ["a", "b"], category_ids=[1.5, 2])
    from decimal import Decimal

    for ids, bad in (([Decimal("0.99"), 1], "0.99"), (np.array([0.99, 1], dtype=object), "0.99")):
        with pytest.raises(InputError, match=f"class_ids must be whole numbers, got {bad}"):
            Detections(boxes, [0.5, 0.4], ids, ["a", "b"])
    for text in (np.array(["1", "0"]), np.array(["1", 0], dtype=object)):  # numpy would read the text
        with pytest.raises(InputError, match="class_ids must be integers"):
            Detections(boxes, [0.5, 0.4], text, ["a", "b"])
    d = Detections.from_arrays(boxes, [0.5, 0.4], [0, 1], ["a", "b"])
    for mapping, bad in (({0: "x", 1: 2}, "'x'"), ("ab", "'a'"), ([1.7, 2], "1.7")):
        with pytest.raises(InputError, match=f"category ids must be integers \\(COCO's are\\), got {bad}"):
            d.to_coco(1, category_ids=mapping)
    for mapping in (np.array([3, 4]), np.array([3.0, 4.0]), torch.tensor([3, 4]), {0: 3.0, 1: np.int32(4)}):
        assert [e["category_id"] for e in d.to_coco(1, category_ids=mapping)] == [3, 4], mapping


def test_torch_tensors_are_taken_as_arrays():
    t = torch.tensor([[0.0, 0.0, 4.0, 4.0]], requires_grad=True)
    d = Detections(t * 2, torch.tensor([0.5]), torch.tensor([1]), ["b"])
    assert d.xyxy.tolist() == [[0, 0, 8, 8]] and d.class_ids.dtype == np.int64
    half = Detections(t.bfloat16(), torch.tensor([0.5], dtype=torch.bfloat16), torch.tensor([1.0]).bfloat16(), ["b"])
    assert half.xyxy.tolist() == [[0, 0, 4, 4]] and half.class_ids.tolist() == [1]  # CPU autocast's type
    image = np.zeros((16, 16, 3), np.uint8)
    assert Detections([[0, 0, 8, 8]], [0.5], [0], [7]).draw(image, show_scores=False).any()  # a name that is no str


def test_to_coco_takes_a_dict_and_integer_image_ids_only():
    from yolox_deploy.errors import InputError

    d = make(4)  # class ids 0, 1, 0, 1
    assert [e["category_id"] for e in d.to_coco(1, {1: 18})] == [18, 18]  # classes absent from a dict: left out
    assert [e["image_id"] for e in d.to_coco(np.int64(7), {0: 1, 1: 2})] == [7] * 4
    for image_id in (3.7, "000123", None, True):
        with pytest.raises(InputError, match="image_id must be an integer"):
            d.to_coco(image_id)


def test_to_dict_is_json_ready():
    import json

    text = json.dumps(make().to_dict())
    assert '"name": "dog"' in text
    diverged = Detections([[0, 0, np.nan, 10]], [np.inf], [0], ["a"], (10, 10))
    row = json.loads(json.dumps(diverged.to_dict(), allow_nan=False))["detections"][0]
    assert row["xyxy"] == [0, 0, None, 10] and row["score"] is None


def test_draw_returns_annotated_copy():
    d = make()
    img = np.full((50, 60, 3), 255, np.uint8)
    out = d.draw(img)
    assert out.shape == img.shape and (img == 255).all()
    assert (out != 255).any()


def test_draw_converts_or_refuses_what_it_is_given():
    from yolox_deploy.errors import InputError

    d = make()
    gray = np.zeros((50, 60), np.float32)
    assert d.draw(gray).shape == (50, 60, 3) and d.draw(gray).dtype == np.uint8
    for bad in (np.zeros((0, 0, 3), np.uint8), "dog.jpg", [[0, 0]]):
        with pytest.raises(InputError):
            d.draw(bad)
    img = np.full((50, 60, 3), 255, np.uint8)
    for thickness in (-1, 0, 2.5, "2", True):  # -1 would fill every box
        with pytest.raises(InputError, match="thickness is a line width in pixels"):
            d.draw(img, thickness=thickness)
    assert (d.draw(img, thickness=3) != d.draw(img, thickness=1)).any()
    with pytest.raises(InputError, match="of a 50x60 image, not of this 100x100 one"):  # boxes would land elsewhere
        d.draw(np.zeros((100, 100, 3), np.uint8))


def test_boxes_that_are_not_boxes_are_not_drawn():
    img = np.full((50, 60, 3), 255, np.uint8)
    boxes = [[np.nan, 0, 10, 10], [0, 0, np.inf, 10], [-1e12, -1e12, 1e12, 1e12], [5, 5, 20, 20]]
    d = Detections.from_arrays(np.array(boxes, np.float32), [0.9, 0.8, 0.7, 0.6], [0, 1, 0, 1], ["cat", "dog"])
    out = d.draw(img)  # the huge box is drawn clipped, the NaN and infinite ones are skipped
    assert out.shape == img.shape and (out != 255).any()


def test_a_box_at_the_far_edges_is_closed_and_its_label_stays_inside():
    """A box clipped to the image's right / bottom edge ended one pixel outside it (that side was not drawn); a
    label at the right edge ran off the picture (the score was cut off)."""
    img = np.full((300, 400, 3), 128, np.uint8)
    d = Detections.from_arrays(np.array([[200, 150, 400, 300]], np.float32), [0.9], [0], ["dog"], (300, 400))
    out = d.draw(img, show_scores=False)
    assert (out[150:300, 399] != 128).any(axis=1).all() and (out[299, 200:400] != 128).any(axis=1).all()
    right = Detections.from_arrays(np.array([[390, 100, 400, 150]], np.float32), [0.9], [0], ["a long name"],
                                   (300, 400))
    drawn = np.argwhere((right.draw(img) != 128).any(axis=2))
    assert drawn[:, 1].min() < 390  # the label starts left of the box, far enough to hold the name and the score


def test_text_is_black_or_white_whichever_reads_better():
    from yolox_deploy.viz import class_color, text_color

    assert text_color((255, 255, 255)) == (0, 0, 0) and text_color((0, 0, 0)) == (255, 255, 255)
    assert text_color((40, 200, 80)) == (0, 0, 0)  # a mid green: black 9.4:1, white 2.2:1

    def contrast(a, b):
        def lum(c):
            v = [x / 255 for x in c[::-1]]
            v = [x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4 for x in v]
            return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]
        hi, lo = sorted((lum(a), lum(b)), reverse=True)
        return (hi + 0.05) / (lo + 0.05)

    for cid in range(80):  # the other choice never reads better
        c = class_color(cid)
        other = (255, 255, 255) if text_color(c) == (0, 0, 0) else (0, 0, 0)
        assert contrast(c, text_color(c)) >= contrast(c, other), cid


def test_names_opencv_cannot_draw_are_labelled_by_class_id(monkeypatch, caplog):
    """Before OpenCV 5 the Hershey fonts draw one '?' per byte of a non-ASCII name."""
    import cv2

    from yolox_deploy import viz

    img = np.full((100, 100, 3), 128, np.uint8)
    d = Detections.from_arrays(np.array([[10, 30, 60, 90]], np.float32), [0.9], [0], ["собака"], (100, 100))
    monkeypatch.setattr(cv2, "__version__", "4.10.0")
    monkeypatch.setattr(viz, "_WARNED_TEXT", set())
    with caplog.at_level("WARNING"):
        out = d.draw(img)
        d.draw(img)
    assert caplog.text.count("labelled 'class 0' in pictures") == 1
    labelled = Detections.from_arrays(np.array([[10, 30, 60, 90]], np.float32), [0.9], [0], ["class 0"], (100, 100))
    assert np.array_equal(out, labelled.draw(img))
    monkeypatch.setattr(cv2, "__version__", "5.0.0")
    assert not np.array_equal(d.draw(img), out)


def test_equality():
    assert make() == make()
    assert make() != make(3)


def test_class_names_are_a_list_of_names():
    import numpy as np

    from yolox_deploy.errors import InputError
    from yolox_deploy.structures import as_class_names

    assert as_class_names(np.array(["cat", "dog"])) == ("cat", "dog") and as_class_names(None) is None
    for one in ("names.txt", b"abc", np.array("person")):  # its characters would become the names
        with pytest.raises(InputError, match="class names are a list of names, not the string"):
            as_class_names(one)
    with pytest.raises(InputError, match="class names must be strings"):
        as_class_names([1, 2])
