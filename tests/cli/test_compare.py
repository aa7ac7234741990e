"""yolox-compare: the same images through several artefacts, and the failures it must catch before any work."""

import json

import numpy as np
import pytest

from yolox_deploy.cli.compare import main as compare_main


def test_checkpoint_against_the_authors_onnx(tmp_path, nano_pth, nano_onnx, dog_jpg, capsys):
    out = tmp_path / "cmp.json"
    rc = compare_main([str(nano_pth), str(nano_onnx), "--model", "yolox-nano", "--images", str(dog_jpg),
                       "--json", str(out)])
    assert rc == 0
    assert "reference" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [r["backend"] for r in rows] == ["torch", "onnxruntime"]
    assert rows[1]["max_abs_diff"] < 1e-3 and rows[1]["agreement"] == 1.0 and rows[1]["matched_iou"] > 0.99


def test_a_checkpoint_runs_at_the_size_of_an_artefact_exported_for_another(tmp_path, nano_pth, dog_jpg):
    from yolox_deploy.export import export

    other = export(nano_pth, "onnx", tmp_path / "n_320x416.onnx", model="yolox-nano", img_size=(320, 416),
                   verify=False).path
    out = tmp_path / "cmp.json"
    assert compare_main([str(nano_pth), str(other), "--images", str(dog_jpg), "--json", str(out)]) == 0
    ref, row = json.loads(out.read_text())["rows"]
    assert ref["input_size"] == [416, 416] and row["input_size"] == [320, 416]
    assert row["max_abs_diff"] < 1e-3 and row["agreement"] == 1.0 and row["detections"] >= 3


def test_an_nms_graphs_thresholds_serve_every_artefact(tmp_path, nano_pth, dog_jpg, capsys):
    """The graph's NMS takes no other thresholds: the reference ran 0.25 / 0.45 against a graph exported with
    0.01 / 0.65, and the table showed disagreement that was the thresholds'."""
    from yolox_deploy.export import export

    nms = export(nano_pth, "onnx", tmp_path / "nms.onnx", model="yolox-nano", nms=True, conf=0.01, iou=0.65,
                 verify=False).path
    out = tmp_path / "cmp.json"
    assert compare_main([str(nano_pth), str(nms), "--images", str(dog_jpg), "--json", str(out)]) == 0
    assert "0.01 / 0.65" in capsys.readouterr().out
    ref, row = json.loads(out.read_text())["rows"]
    assert (ref["conf"], ref["nms"]) == (row["conf"], row["nms"]) == (0.01, 0.65)
    assert row["agreement"] == 1.0 and row["detections"] > 5
    assert compare_main([str(nano_pth), str(nms), "--images", str(dog_jpg), "--json", str(out), "--conf", "0.3"]) == 0
    ref, row = json.loads(out.read_text())["rows"]
    assert (ref["conf"], ref["nms"]) == (row["conf"], row["nms"]) == (0.3, 0.65)  # what is given applies to all


def test_a_checkpoint_at_another_size_runs_the_nms_graphs_thresholds(tmp_path, nano_pth, dog_jpg):
    """The checkpoint run again at the size of an NMS graph exported for another one ran the library's 0.25 /
    0.45, not the graph's 0.01 / 0.65 its row showed: 13% agreement, all of it the thresholds'."""
    from yolox_deploy.export import export

    nms = export(nano_pth, "onnx", tmp_path / "nms_320.onnx", model="yolox-nano", img_size=(320, 320), nms=True,
                 conf=0.01, iou=0.65, verify=False).path
    out = tmp_path / "cmp.json"
    assert compare_main([str(nano_pth), str(nms), "--images", str(dog_jpg), "--json", str(out)]) == 0
    ref, row = json.loads(out.read_text())["rows"]
    assert (ref["conf"], ref["nms"]) == (row["conf"], row["nms"]) == (0.01, 0.65)
    assert row["agreement"] > 0.95 and row["detections"] > 5


def test_an_nms_graphs_cap_of_detections_serves_every_artefact(tmp_path, nano_pth, nano_onnx, dog_jpg):
    """The graph keeps at most 100 detections an image; the others kept 300: at a low threshold 134 against 100,
    and the disagreement was the cap's."""
    from yolox_deploy.export import export

    nms = export(nano_pth, "onnx", tmp_path / "nms.onnx", model="yolox-nano", nms=True, conf=0.001, iou=0.65,
                 max_det=100, verify=False).path
    out = tmp_path / "cmp.json"
    assert compare_main([str(nano_onnx), str(nms), "--images", str(dog_jpg), "--json", str(out)]) == 0
    ref, row = json.loads(out.read_text())["rows"]
    assert ref["detections"] == row["detections"] == 100 and row["agreement"] > 0.95


def test_without_detections_the_iou_is_not_a_number(tmp_path, nano_pth, dog_jpg, capsys):
    out = tmp_path / "cmp.json"
    assert compare_main([str(nano_pth), str(nano_pth), "--images", str(dog_jpg), "--conf", "1", "--json", str(out)]) == 0
    assert "n/a" in capsys.readouterr().out
    assert json.loads(out.read_text())["rows"][1]["matched_iou"] is None


@pytest.mark.parametrize("name", ["/dev/stdout", "-"])  # '-' wrote a file named '-'
def test_json_on_stdout_is_all_stdout_holds(nano_onnx, dog_jpg, capfd, name, tmp_path, monkeypatch):
    """--json /dev/stdout put the JSON right after the table, on its last line."""
    monkeypatch.chdir(tmp_path)
    assert compare_main([str(nano_onnx), str(nano_onnx), "--images", str(dog_jpg), "--json", name]) == 0
    assert not list(tmp_path.iterdir())
    captured = capfd.readouterr()
    data = json.loads(captured.out)
    assert [r["reference"] for r in data["rows"]] == [True, False] and data["reference"] == str(nano_onnx)
    assert [(r["conf"], r["nms"]) for r in data["rows"]] == [(0.25, 0.45)] * 2 and "diffs against" in captured.err


def test_results_never_replace_an_input(tmp_path, nano_onnx, dog_jpg, capsys):
    victim = tmp_path / "victim.onnx"
    victim.write_bytes(nano_onnx.read_bytes())
    for target in (victim, dog_jpg):
        assert compare_main([str(victim), "--images", str(dog_jpg), "--json", str(target)]) == 2
        assert "is an input of this run" in capsys.readouterr().err
    assert victim.read_bytes() == nano_onnx.read_bytes()


def test_results_replace_only_an_earlier_json_file(tmp_path, nano_onnx, dog_jpg, capsys):
    other_model = tmp_path / "other.onnx"  # not an input of this run, but not a result either
    other_model.write_bytes(b"\x08\x07model bytes")
    assert compare_main([str(nano_onnx), "--images", str(dog_jpg), "--json", str(other_model)]) == 2
    assert "exists and is not a JSON file" in capsys.readouterr().err
    assert other_model.read_bytes() == b"\x08\x07model bytes"
    labels = tmp_path / "instances_val2017.json"  # another dataset's annotations are JSON too
    labels.write_text('{"images": [], "annotations": [], "categories": []}')
    assert compare_main([str(nano_onnx), "--images", str(dog_jpg), "--json", str(labels)]) == 2
    assert "exists and holds a COCO dataset's annotations" in capsys.readouterr().err
    earlier = tmp_path / "earlier.txt"
    earlier.write_text('{"rows": []}')
    assert compare_main([str(nano_onnx), "--images", str(dog_jpg), "--json", str(earlier)]) == 0
    assert json.loads(earlier.read_text())["images"] == 1


def test_json_through_a_symlink_writes_its_target(tmp_path, nano_onnx, dog_jpg):
    target = tmp_path / "results.json"
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert compare_main([str(nano_onnx), "--images", str(dog_jpg), "--json", str(link)]) == 0
    assert link.is_symlink() and json.loads(target.read_text())["images"] == 1


def _artefacts_with_20_classes(tmp_path, nano_model):

    from yolox_deploy import build_model
    from yolox_deploy.nn.checkpoint import save_checkpoint

    model = build_model("yolox-nano", num_classes=20, class_names=tuple(f"c{i}" for i in range(20)))
    sd = {k: v[:20] if "cls_preds" in k else v for k, v in nano_model.state_dict().items()}
    model.load_state_dict(sd)
    return save_checkpoint(model.eval(), tmp_path / "nano20.pth")


@pytest.mark.parametrize("case", ["corrupt second artefact", "other labels", "bad threshold"])
def test_failures_come_before_any_image_runs(tmp_path, nano_pth, nano_model, dog_jpg, capsys, monkeypatch, case):
    import yolox_deploy.eval.compare as compare_module

    ran = []
    monkeypatch.setattr(compare_module, "_run", lambda *a: ran.append(a) or pytest.fail("ran before failing"))
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    argv = {"corrupt second artefact": [str(nano_pth), str(tmp_path / "broken.onnx")],
            "other labels": [str(nano_pth), str(_artefacts_with_20_classes(tmp_path, nano_model))],
            "bad threshold": [str(nano_pth), str(nano_pth), "--conf", "-1"]}[case]
    assert compare_main([*argv, "--images", str(dog_jpg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err and not ran
    if case == "other labels":
        assert "has 20 classes (c0, c1, c2, ...), the reference" in err


def test_a_video_without_frames_is_refused(tmp_path, nano_pth, capsys):
    import cv2

    empty = tmp_path / "empty.avi"
    cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 64)).release()
    assert compare_main([str(nano_pth), "--images", str(empty)]) == 2
    assert "no frame could be read" in capsys.readouterr().err


def test_an_artefact_made_elsewhere_is_described_by_the_options(tmp_path, tiny_random_model, rng, capsys):
    """A decoding, dynamic-size ONNX of a 3-class model without metadata (another tool's export) against its
    checkpoint: the size, labels and decoded output are said on the command line, for that artefact only."""
    import cv2
    import onnx

    from yolox_deploy.export import ExportOptions, load_source
    from yolox_deploy.export.onnx import write_onnx
    from yolox_deploy.nn.checkpoint import save_checkpoint

    pth = save_checkpoint(tiny_random_model, tmp_path / "tiny.pth")
    bare = tmp_path / "bare.onnx"
    options = ExportOptions(img_size=(64, 96), dynamic=True, dynamic_hw=True, simplify=False)
    write_onnx(load_source(tiny_random_model), options, bare)
    graph = onnx.load(str(bare))
    del graph.metadata_props[:]
    onnx.save(graph, str(bare))
    image = tmp_path / "noise.png"
    cv2.imwrite(str(image), rng.integers(0, 256, (50, 80, 3), np.uint8))
    out = tmp_path / "cmp.json"
    base = [str(pth), str(bare), "--images", str(image), "--conf", "1e-5", "--json", str(out)]
    assert compare_main(base) == 2  # a dynamic size without metadata: no size to run it at
    assert "img_size" in capsys.readouterr().err
    sized = [*base, "--img-size", "64", "96"]
    assert compare_main(sized) == 2  # its labels, made up from the output width, are not the checkpoint's
    assert "cannot be compared" in capsys.readouterr().err
    assert compare_main([*sized, "--class-names", "a,b,c"]) == 0
    found = json.loads(out.read_text())["rows"][1]  # the graph's Exp says it decodes
    assert compare_main([*sized, "--class-names", "a,b,c", "--decode-in-graph", str(bare)]) == 0
    ref, row = json.loads(out.read_text())["rows"]
    assert row["max_abs_diff"] < 1e-3 and found["max_abs_diff"] < 1e-3
    assert ref["detections"] > 0 and row["agreement"] > 0.9 and found["agreement"] > 0.9  # random scores: near ties
    assert compare_main([*sized, "--decode-in-graph", str(tmp_path / "other.onnx")]) == 2
    assert "is not one of the artefacts compared" in capsys.readouterr().err
