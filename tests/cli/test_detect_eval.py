"""yolox-detect / yolox-eval end to end, and their handling of bad inputs (one line, exit 2, no traceback)."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest

from yolox_deploy.cli.detect import RECORD
from yolox_deploy.cli.detect import main as detect_main
from yolox_deploy.cli.eval import main as eval_main


def _results(folder):
    """The names in an output folder but yolox-detect's record of what it wrote there."""
    return sorted(p.name for p in folder.iterdir() if p.name != RECORD)


def _recorded(folder, *names):
    """Files in ``folder`` that an earlier run wrote (its record says so)."""
    (folder / RECORD).write_text(json.dumps({"results": list(names)}))


def test_detect_writes_picture_and_json(tmp_path, nano_pth, dog_jpg, capsys):
    rc = detect_main([str(nano_pth), "--model", "yolox-nano", "--source", str(dog_jpg), "--output", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "dog.json").read_text())
    names = {d["name"] for d in data["detections"]}
    assert {"dog", "bicycle"} <= names and ({"car", "truck"} & names)
    assert data["image_size"] == [576, 768]
    img = cv2.imread(str(tmp_path / "dog.jpg"))
    assert img.shape == (576, 768, 3)
    assert "dog" in capsys.readouterr().out


def test_detect_on_a_folder_and_a_video(tmp_path, nano_pth, dog_jpg):
    src = tmp_path / "src"
    src.mkdir()
    dog = cv2.imread(str(dog_jpg))
    cv2.imwrite(str(src / "one.jpg"), dog)
    cv2.imwrite(str(src / "two.png"), cv2.cvtColor(dog, cv2.COLOR_BGR2GRAY))  # grayscale is converted
    out = tmp_path / "out"
    assert detect_main([str(nano_pth), "--source", str(src), "--output", str(out)]) == 0
    assert _results(out) == ["one.jpg", "one.json", "two.jpg", "two.json"]

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (384, 288))
    for _ in range(3):
        writer.write(cv2.resize(dog, (384, 288)))
    writer.release()
    vout = tmp_path / "vout"
    assert detect_main([str(nano_pth), "--source", str(video), "--output", str(vout)]) == 0
    frames = json.loads((vout / "clip.json").read_text())["frames"]
    assert len(frames) == 3 and all(f["detections"] for f in frames)
    assert (vout / "clip.mp4").stat().st_size > 0
    assert not [p for p in vout.iterdir() if p.name.startswith(".") and p.name != RECORD]


def test_a_picture_wider_than_a_jpeg_can_hold_is_scaled_to_fit(tmp_path, nano_pth, dog_jpg):
    """A 70000x8 image was detected, then the whole run failed on "could not encode wide.jpg"."""
    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "wide.png"), cv2.resize(cv2.imread(str(dog_jpg)), (70000, 8)))
    assert detect_main([str(nano_pth), "--source", str(src), "--output", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "wide.json").read_text())["image_size"] == [8, 70000]
    assert cv2.imread(str(tmp_path / "out" / "wide.jpg")).shape == (7, 65500, 3)


def _bad_inputs(tmp_path, nano_pth):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xffnot really a jpeg")
    (tmp_path / "text.pth").write_text("hi\n")
    with open(tmp_path / "pickle.pth", "wb") as f:
        pickle.dump({"hello": "world"}, f)
    return {
        "missing weights": ([str(tmp_path / "nope.pth"), "--source", str(tmp_path / "empty.jpg")], "not found"),
        "missing image": ([str(nano_pth), "--source", str(tmp_path / "nope.jpg")], "not found"),
        "zero-byte image": ([str(nano_pth), "--source", str(tmp_path / "empty.jpg")], "empty"),
        "unreadable image": ([str(nano_pth), "--source", str(tmp_path / "corrupt.jpg")], "not a readable image"),
        "wrong variant": ([str(nano_pth), "--model", "yolox-s", "--source", str(tmp_path / "x.jpg")],
                          "checkpoint is for yolox-nano, model is yolox-s"),
        "not a checkpoint": ([str(tmp_path / "pickle.pth"), "--model", "yolox-nano", "--source", str(tmp_path / "x.jpg")],
                             "not a PyTorch checkpoint"),
        "text file": ([str(tmp_path / "text.pth"), "--model", "yolox-nano", "--source", str(tmp_path / "x.jpg")],
                      "not a PyTorch checkpoint"),
        "bad size": ([str(nano_pth), "--img-size", "400", "--source", str(tmp_path / "x.jpg")], "multiple of 32"),
        "unknown model": ([str(nano_pth), "--model", "yolox-huge", "--source", str(tmp_path / "x.jpg")], "unknown model"),
        "max-det 0": ([str(nano_pth), "--max-det", "0", "--source", str(tmp_path / "x.jpg")],
                                  "--max-det must be an integer >= 1, got 0"),
    }


@pytest.mark.parametrize("case", ["missing weights", "missing image", "zero-byte image", "unreadable image",
                                  "wrong variant", "not a checkpoint", "text file", "bad size", "unknown model",
                                  "max-det 0"])
def test_detect_bad_inputs(tmp_path, nano_pth, capsys, case):
    argv, message = _bad_inputs(tmp_path, nano_pth)[case]
    out = tmp_path / "out"
    rc = detect_main([*argv, "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert not out.exists()  # nothing written, not even the folder


def test_detect_never_writes_into_the_folder_of_its_source(tmp_path, nano_pth, dog_jpg, capsys):
    """Results go to <name>.jpg / <name>.json: in the source's own folder they could replace the source, or a
    picture beside it (x.bmp's result x.jpg over the user's x.jpg), so that folder is refused."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "x.jpg").write_bytes(dog_jpg.read_bytes())
    cv2.imwrite(str(src / "x.bmp"), cv2.imread(str(dog_jpg)))
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    for source in (src, src / "x.jpg", src / "x.bmp"):
        for extra in ([], ["--no-images"]):
            assert detect_main([str(nano_pth), "--source", str(source), "--output", str(src), *extra]) == 2
            assert "is the folder of the source" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


def test_a_folder_holding_models_of_two_runtimes_is_not_opened_with_either_unasked(tmp_path, dog_jpg, capsys):
    """A folder with an OpenVINO IR and an NCNN model: which one runs is the user's choice (--backend), not
    the order the runtimes were registered in."""
    from yolox_deploy.errors import ArtefactError
    from yolox_deploy.runtimes import find_backend

    folder = tmp_path / "both"
    folder.mkdir()
    for name in ("m.xml", "m.bin", "model.ncnn.param", "model.ncnn.bin"):
        (folder / name).write_bytes(b"x")
    with pytest.raises(ArtefactError, match="several runtimes"):
        find_backend(folder)
    out = tmp_path / "out"
    assert detect_main([str(folder), "--source", str(dog_jpg), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "openvino, ncnn" in err or "ncnn, openvino" in err
    assert "--backend" in err and not out.exists()


def test_a_failed_run_leaves_nothing_and_keeps_earlier_results(tmp_path, nano_pth, dog_jpg, capsys):
    """Results are staged and move into place only when the whole source went through: a corrupt last image
    leaves neither the results of the images before it nor the folders made for them."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(dog_jpg.read_bytes())
    (src / "zzz.jpg").write_bytes(b"\xff\xd8\xffnot really a jpeg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.json").write_text("an earlier result")
    _recorded(out, "a.json")
    for output in (out, tmp_path / "new" / "deep"):
        assert detect_main([str(nano_pth), "--source", str(src), "--output", str(output)]) == 2
        assert "zzz.jpg is not a readable image" in capsys.readouterr().err
    assert _results(out) == ["a.json"] and (out / "a.json").read_text() == "an earlier result"
    assert not (tmp_path / "new").exists()


def test_detect_replaces_its_own_earlier_results_and_nothing_else(tmp_path, nano_pth, dog_jpg, capsys, monkeypatch):
    """A file of a result's name that yolox-detect did not write (the user's own picture, notes, a video) is
    never replaced: refused before any work. Its own earlier results are (a second run into the folder)."""
    import yolox_deploy.cli.detect as detect_module

    src = tmp_path / "src"
    src.mkdir()
    (src / "pic.jpg").write_bytes(dog_jpg.read_bytes())
    out = tmp_path / "mine"
    out.mkdir()
    (out / "pic.json").write_text('{"my": "notes"}')
    (out / ".pic.json.old").mkdir()  # a hidden entry of the name a replacement once stepped aside to
    (out / ".pic.json.old" / "data.txt").write_text("precious")
    monkeypatch.setattr(detect_module, "Detector", None)  # refused before a model is opened
    assert detect_main([str(nano_pth), "--source", str(src), "--output", str(out)]) == 2
    assert "already holds pic.json, which yolox-detect did not write there" in capsys.readouterr().err
    assert (out / "pic.json").read_text() == '{"my": "notes"}'
    monkeypatch.undo()
    (out / "pic.json").unlink()
    for _ in range(2):  # the second run replaces the first one's results
        assert detect_main([str(nano_pth), "--source", str(src), "--output", str(out)]) == 0
    assert _results(out) == [".pic.json.old", "pic.jpg", "pic.json"]
    assert (out / ".pic.json.old" / "data.txt").read_text() == "precious"
    (out / "pic.json").unlink()
    (out / "pic.json").mkdir()  # a folder where a result goes: refused before any work too
    assert detect_main([str(nano_pth), "--source", str(src), "--output", str(out)]) == 2
    assert "already holds pic.json" in capsys.readouterr().err


def test_ctrl_c_while_results_move_lets_them_finish_and_be_recorded(tmp_path, nano_pth, dog_jpg, monkeypatch):
    import os
    import signal

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(dog_jpg.read_bytes())
    out = tmp_path / "out"
    real_replace = os.replace

    def interrupting(a, b):
        os.kill(os.getpid(), signal.SIGINT)
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", interrupting)
    assert detect_main([str(nano_pth), "--source", str(src), "--output", str(out)]) == 130
    monkeypatch.setattr(os, "replace", real_replace)
    assert _results(out) == ["a.jpg", "a.json"]
    assert detect_main([str(nano_pth), "--source", str(src), "--output", str(out)]) == 0  # its own results


def test_results_written_before_the_record_existed_are_its_own(tmp_path, nano_pth, dog_jpg):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(dog_jpg.read_bytes())
    out = tmp_path / "out"
    assert detect_main([str(nano_pth), "--source", str(src), "--output", str(out)]) == 0
    (out / RECORD).unlink()  # a folder of results from before the record
    assert detect_main([str(nano_pth), "--source", str(src), "--output", str(out)]) == 0
    assert json.loads((out / RECORD).read_text())["results"] == ["a.jpg", "a.json"]


def test_detect_refuses_the_folder_its_source_links_into_and_overlong_names(tmp_path, nano_pth, dog_jpg, capsys):
    photos, selection = tmp_path / "photos", tmp_path / "selection"
    photos.mkdir()
    selection.mkdir()
    (photos / "dog.jpg").write_bytes(dog_jpg.read_bytes())
    (selection / "dog.jpg").symlink_to(photos / "dog.jpg")
    assert detect_main([str(nano_pth), "--source", str(selection), "--output", str(photos)]) == 2
    assert "is the folder of the source" in capsys.readouterr().err
    assert [p.name for p in photos.iterdir()] == ["dog.jpg"] and (photos / "dog.jpg").read_bytes() == dog_jpg.read_bytes()
    long = tmp_path / ("x" * 251 + ".jpg")  # a name of 255 bytes: its result x...x.json would be 256
    long.write_bytes(dog_jpg.read_bytes())
    assert detect_main([str(nano_pth), "--source", str(long), "--output", str(tmp_path / "out")]) == 2
    assert "longer than 241 bytes" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_detect_never_writes_into_the_folder_of_a_linked_source_image(tmp_path, nano_pth, dog_jpg, capsys):
    """A source image that is a link: the folder it is named in is its folder too (there x.png's result x.jpg
    would replace the user's x.jpg beside a result-like x.json), not only the folder it links to."""
    photos, selection = tmp_path / "photos", tmp_path / "selection"
    photos.mkdir()
    selection.mkdir()
    cv2.imwrite(str(photos / "x.png"), cv2.imread(str(dog_jpg)))
    (selection / "x.png").symlink_to(photos / "x.png")
    cv2.imwrite(str(selection / "x.jpg"), np.full((8, 8, 3), 255, np.uint8))
    (selection / "x.json").write_text(json.dumps({"source": "x.jpg", "detections": []}))
    before = {p.name: p.read_bytes() for p in selection.iterdir() if not p.is_symlink()}
    assert detect_main([str(nano_pth), "--source", str(selection / "x.png"), "--output", str(selection)]) == 2
    assert "is the folder of the source" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in selection.iterdir() if not p.is_symlink()} == before


def test_detect_keeps_files_sharing_a_stem_apart(tmp_path, nano_pth, dog_jpg):
    src = tmp_path / "src"
    src.mkdir()
    dog = cv2.imread(str(dog_jpg))
    cv2.imwrite(str(src / "dog.jpg"), dog)
    cv2.imwrite(str(src / "dog.png"), dog[:, ::-1])
    out = tmp_path / "out"
    assert detect_main([str(nano_pth), "--source", str(src), "--output", str(out)]) == 0
    assert _results(out) == ["dog.jpg.jpg", "dog.jpg.json", "dog.png.jpg", "dog.png.json"]
    assert json.loads((out / "dog.png.json").read_text())["source"] == str(src / "dog.png")


@pytest.mark.parametrize("live, signum", [(True, signal.SIGINT), (True, signal.SIGTERM), (False, signal.SIGINT)])
def test_ctrl_c_ends_a_camera_but_not_a_file(tmp_path, nano_pth, dog_jpg, monkeypatch, capsys, live, signum):
    """Ctrl-C is how a camera stream is stopped: after the frame in hand, so the video, the JSON and the table
    hold the same frames. SIGTERM (timeout, systemd, docker stop) keeps them too (it threw them away), exiting
    143. A file run stops at once with nothing."""
    import os

    import yolox_deploy.cli.detect as detect_module
    from yolox_deploy.io.images import Frame

    dog = cv2.imread(str(dog_jpg))[:331, :501]  # odd sizes: the video is padded to even ones

    def frames(source):
        for i in range(6):
            if i == 2:
                os.kill(os.getpid(), signum)
            yield Frame(f"f{i}", dog, i, 10.0)

    monkeypatch.setattr(detect_module, "iter_source", frames)
    out = tmp_path / "out"
    source = "0" if live else str(tmp_path / "clip.mp4")
    rc = detect_main([str(nano_pth), "--source", source, "--output", str(out)])
    if live:
        assert rc == (0 if signum == signal.SIGINT else 143)
        assert "stopped; writing the frames seen" in capsys.readouterr().err
        assert [f["frame"] for f in json.loads((out / "camera0.json").read_text())["frames"]] == [0, 1, 2]
        video = cv2.VideoCapture(str(out / "camera0.mp4"))
        assert [video.get(p) for p in (cv2.CAP_PROP_FRAME_COUNT, cv2.CAP_PROP_FRAME_WIDTH,
                                       cv2.CAP_PROP_FRAME_HEIGHT)] == [3, 502, 332]
        video.release()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    else:
        assert rc == 130 and not out.exists()  # nothing written, not even the folder


def test_a_long_run_keeps_no_list_of_its_frames(tmp_path, nano_pth, dog_jpg, monkeypatch, capsys):
    """A camera's run has no end: its JSON is written a frame at a time and its table keeps the first and
    last rows (both grew by every frame until the end, and a failure after hours lost them all)."""
    import yolox_deploy.cli.detect as detect_module
    from yolox_deploy.io.images import Frame

    dog = cv2.resize(cv2.imread(str(dog_jpg)), (96, 72))
    monkeypatch.setattr(detect_module, "iter_source", lambda source: (Frame(f"f{i}", dog, i) for i in range(30)))
    seen = []
    monkeypatch.setattr(detect_module._Rows, "add", lambda self, row, add=detect_module._Rows.add: (
        seen.append((len(self.head), len(self.rest))), add(self, row)))
    out = tmp_path / "out"
    assert detect_main([str(nano_pth), "--source", "0", "--output", str(out), "--no-images"]) == 0
    assert max(h + r for h, r in seen) == 20  # at most 20 rows held, for any number of frames
    printed = capsys.readouterr().out
    assert "30 frame(s)" in printed and "f9 " in printed and "f25 " in printed and "f29 " in printed
    assert "f10 " not in printed and "f24 " not in printed and "..." in printed
    data = json.loads((out / "camera0.json").read_text())
    assert data["source"] == "0" and [f["frame"] for f in data["frames"]] == list(range(30))


def test_a_second_ctrl_c_abandons_a_camera_run(tmp_path, nano_pth, dog_jpg, monkeypatch, caplog):
    import os
    import signal

    import yolox_deploy.cli.detect as detect_module
    from yolox_deploy.io.images import Frame

    dog = cv2.imread(str(dog_jpg))

    def frames(source):
        yield Frame("f0", dog, 0)
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # e.g. a camera that delivers no more frames
        yield Frame("f1", dog, 1)

    monkeypatch.setattr(detect_module, "iter_source", frames)
    out = tmp_path / "out"
    assert detect_main([str(nano_pth), "--source", "0", "--output", str(out)]) == 130
    assert "Ctrl-C again to abandon the run" in caplog.text and not out.exists()


def test_a_folder_named_like_a_video_is_a_folder(tmp_path, nano_pth, dog_jpg):
    shots = tmp_path / "shots.mp4"
    shots.mkdir()
    dog = cv2.imread(str(dog_jpg))
    cv2.imwrite(str(shots / "a.jpg"), dog)
    cv2.imwrite(str(shots / "b.jpg"), dog[:200, :300])  # another size: no video could hold both
    out = tmp_path / "out"
    assert detect_main([str(nano_pth), "--source", str(shots), "--output", str(out), "--no-images"]) == 0
    assert _results(out) == ["a.json", "b.json"]
    assert json.loads((out / "a.json").read_text())["source"] == str(shots / "a.jpg")


def test_output_paths_are_checked_before_any_work(tmp_path, nano_pth, dog_jpg, coco_tiny, capsys):
    (tmp_path / "afile").write_text("x")
    runs = {
        "detect into a file": (detect_main, [str(nano_pth), "--source", str(dog_jpg), "--output", str(tmp_path / "afile")],
                               "is a file, not a folder"),
        "detect below a file": (detect_main, [str(nano_pth), "--source", str(dog_jpg), "--output",
                                              str(tmp_path / "afile" / "sub")], "is a file, not a folder"),
        "eval JSON into a folder": (eval_main, [str(nano_pth), "--data", str(coco_tiny), "--json", str(tmp_path)],
                                    "is a folder"),
    }
    for name, (main, argv, message) in runs.items():
        assert main(argv) == 2, name
        out, err = capsys.readouterr()
        assert message in err and "Traceback" not in err and "images of" not in out, name


def test_an_output_folder_that_is_a_link_to_nothing_is_refused_before_any_work(tmp_path, nano_pth, dog_jpg, capsys,
                                                                              monkeypatch):
    """It passed the check, and the run failed after the model had loaded: "cannot write to LINK: File exists"."""
    from yolox_deploy.cli import detect

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(detect, "Detector", no_loading)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    for out in (link, link / "sub"):
        assert detect_main([str(nano_pth), "--source", str(dog_jpg), "--output", str(out)]) == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and f"{link} is a symbolic link to {tmp_path / 'gone'}, which does not exist" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link"]


def test_file_system_errors_are_one_line():
    from yolox_deploy.cli.common import cli_entry

    @cli_entry
    def main(argv):
        raise PermissionError(13, "Permission denied", "/somewhere/out.json")

    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main([]) == 2
    assert err.getvalue().strip() == "error: Permission denied: /somewhere/out.json"


@pytest.mark.parametrize("reader_left", [True, False])
def test_a_reader_that_left_early_stops_the_command_quietly(reader_left):
    """`yolox-export ... | head -1`: the export's summary, printed after the reader left, ended the command with
    "error: Broken pipe" and exit 2 (its file was written); a broken pipe that is not standard output's stays
    an error."""
    code = ("import sys\nfrom yolox_deploy.cli.common import cli_entry\n@cli_entry\ndef main(argv):\n"
            + ("    for i in range(100000):\n        print('line', i)\n" if reader_left
               else "    raise BrokenPipeError(32, 'Broken pipe')\n")
            + "sys.exit(main(None))\n")
    read_end, write_end = os.pipe()
    if reader_left:
        os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-c", code], stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=120)
    finally:
        os.close(write_end)
        if not reader_left:
            os.close(read_end)
    if reader_left:
        assert (proc.returncode, proc.stderr) == (128 + signal.SIGPIPE, "")
    else:
        assert (proc.returncode, proc.stderr.strip()) == (2, "error: Broken pipe")


def test_eval_cli_prints_the_authors_numbers(tmp_path, nano_pth, coco_tiny, capsys):
    out = tmp_path / "metrics.json"
    rc = eval_main([str(nano_pth), "--model", "yolox-nano", "--data", str(coco_tiny), "--img-size", "416",
                    "--conf", "0.01", "--nms", "0.65", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "AP @[IoU=0.50:0.95 | area=all | maxDets=100]     0.305" in text
    assert "AP @[IoU=0.50 | area=all | maxDets=100]          0.478" in text
    assert "giraffe" in text  # per-class table
    metrics = json.loads(out.read_text())
    assert abs(metrics["AP"] - 0.3052) <= 0.001 and {"AP50", "AP75"} <= set(metrics)
    assert metrics["settings"] == {"conf": 0.01, "nms": 0.65, "class_agnostic": False, "max_det": None}


def test_eval_figures_outlive_a_json_file_that_cannot_be_written(tmp_path, nano_onnx, coco_tiny, capsys, monkeypatch):
    """A full disk at the end of an evaluation lost every figure: the JSON was written before the tables."""
    import yolox_deploy.cli.eval as eval_cli
    from yolox_deploy.errors import WriteError

    few = tmp_path / "few"
    ann = json.loads((coco_tiny / "annotations" / "instances_val2017.json").read_text())
    keep = {im["id"] for im in ann["images"][:3]}
    ann = {**ann, "images": [im for im in ann["images"] if im["id"] in keep],
           "annotations": [a for a in ann["annotations"] if a["image_id"] in keep]}
    (few / "annotations").mkdir(parents=True)
    (few / "annotations" / "instances_val2017.json").write_text(json.dumps(ann))
    (few / "val2017").symlink_to(coco_tiny / "val2017")

    def full(path, text):
        raise WriteError(path, "No space left on device")

    monkeypatch.setattr(eval_cli, "write_text_atomic", full)
    assert eval_main([str(nano_onnx), "--data", str(few), "--json", str(tmp_path / "m.json")]) == 2
    captured = capsys.readouterr()
    assert "AP @[IoU=0.50:0.95" in captured.out and "AP50" in captured.out
    assert "could not write" in captured.err and "m.json" in captured.err
    assert eval_main([str(nano_onnx), "--data", str(few / "annotations" / "instances_val2017.json")]) == 2
    assert "instances_val2017.json is a file, not a dataset folder" in capsys.readouterr().err


def test_eval_cli_bad_dataset(tmp_path, nano_pth, capsys):
    rc = eval_main([str(nano_pth), "--data", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "not a COCO folder" in err and "Traceback" not in err


def test_console_scripts_exit_2(tmp_path):
    """The installed entry point itself (not only main()) exits 2 on a user error."""
    import shutil
    import subprocess

    exe = shutil.which("yolox-detect")
    if exe is None:
        pytest.skip("yolox-detect is not installed in this environment")
    proc = subprocess.run([exe, str(tmp_path / "nope.pth"), "--source", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


@pytest.mark.parametrize("delay", [0.3, 0.9])
def test_ctrl_c_while_a_command_loads_is_one_word(tmp_path, dog_jpg, delay):
    """Torch and OpenCV take a second or two to import; a Ctrl-C then ended in Python's traceback."""
    import shutil
    import signal
    import subprocess
    import time

    exe = shutil.which("yolox-detect")
    if exe is None:
        pytest.skip("yolox-detect is not installed in this environment")
    proc = subprocess.Popen([exe, "yolox-nano-missing.pth", "--source", str(dog_jpg), "--output", str(tmp_path / "o")],
                            stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 2:  # this machine loaded everything and reported the missing file first
        pytest.skip("the command had finished loading before the signal")
    assert proc.returncode == 130 and err.strip().splitlines() == ["interrupted"], err


def test_a_corrupt_video_is_one_line_on_stderr(tmp_path, nano_pth):
    """FFmpeg and OpenCV print their own complaints straight to the terminal; the CLI keeps only its error."""
    import os
    import subprocess
    import sys

    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_FFMPEG_LOGLEVEL"}
    proc = subprocess.run([sys.executable, "-m", "yolox_deploy.cli.detect", str(nano_pth), "--source", str(bad),
                           "--output", str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [f"error: cannot open video {bad} (a damaged or "
                                                                  "truncated file, or a format this OpenCV build "
                                                                  "does not read)"]


def test_detector_accepts_arrays_and_lists(nano_pth, dog_jpg):
    from yolox_deploy import Detector

    det = Detector(nano_pth)
    img = cv2.imread(str(dog_jpg))
    [a] = det(img)
    [b] = det(str(dog_jpg))
    assert a == b
    batch = Detector(nano_pth, batch_size=3)(
        [img, dog_jpg, np.ascontiguousarray(img[:, ::-1]), cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)])
    assert len(batch) == 4
    np.testing.assert_allclose(batch[0].xyxy, a.xyxy, atol=1e-3)
    np.testing.assert_allclose(batch[3].xyxy, a.xyxy, atol=1e-3)  # alpha dropped
    assert set(batch[2].names) & {"dog"}


def _video(path, image, frames, fps):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (image.shape[1], image.shape[0]))
    for _ in range(frames):
        writer.write(image)
    writer.release()
    return path


def test_annotated_video_keeps_the_source_frame_rate(tmp_path, nano_pth, dog_jpg):
    clip = _video(tmp_path / "clip.avi", cv2.resize(cv2.imread(str(dog_jpg)), (192, 144)), 3, 10)
    out = tmp_path / "out"
    assert detect_main([str(nano_pth), "--source", str(clip), "--output", str(out)]) == 0
    written = cv2.VideoCapture(str(out / "clip.mp4"))
    assert written.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0) and written.get(cv2.CAP_PROP_FRAME_COUNT) == 3
    written.release()


def test_a_video_written_short_is_not_committed(tmp_path, nano_pth, dog_jpg, monkeypatch, capsys):
    """OpenCV's writer reports no error (a full disk): the video is read back before it is renamed into place."""
    import yolox_deploy.cli.detect as detect_module

    clip = _video(tmp_path / "clip.avi", cv2.resize(cv2.imread(str(dog_jpg)), (192, 144)), 3, 10)
    real_writer = cv2.VideoWriter

    class DroppingWriter:
        def __init__(self, *args):
            self.inner, self.n = real_writer(*args), 0

        def isOpened(self):
            return self.inner.isOpened()

        def write(self, frame):
            self.n += 1
            if self.n != 2:  # the second frame is lost
                self.inner.write(frame)

        def release(self):
            self.inner.release()

    monkeypatch.setattr(detect_module.cv2, "VideoWriter", DroppingWriter)
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip.mp4").write_bytes(b"an earlier good result")
    _recorded(out, "clip.mp4")
    assert detect_main([str(nano_pth), "--source", str(clip), "--output", str(out)]) == 2
    assert "could not be written whole (2 of 3 frames readable" in capsys.readouterr().err
    assert _results(out) == ["clip.mp4"]
    assert (out / "clip.mp4").read_bytes() == b"an earlier good result"


def test_sigterm_leaves_no_partial_video(tmp_path, nano_pth, dog_jpg, monkeypatch, capsys):
    import os
    import signal

    import yolox_deploy.cli.detect as detect_module
    from yolox_deploy.io.images import Frame

    dog = cv2.imread(str(dog_jpg))

    def frames(source):
        for i in range(3):
            yield Frame(f"f{i}", dog, i, 10.0)
        os.kill(os.getpid(), signal.SIGTERM)  # what `timeout` or `docker stop` sends
        yield Frame("f3", dog, 3, 10.0)

    monkeypatch.setattr(detect_module, "iter_source", frames)
    out = tmp_path / "out"
    assert detect_main([str(nano_pth), "--source", str(tmp_path / "clip.mp4"), "--output", str(out)]) == 143
    assert "terminated" in capsys.readouterr().err
    assert not out.exists() or not list(out.iterdir())
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the CLI's handler is gone again


def test_a_video_without_frames_is_an_error(tmp_path, nano_pth, capsys):
    empty = tmp_path / "empty.avi"
    cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 64)).release()
    out = tmp_path / "out"
    assert detect_main([str(nano_pth), "--source", str(empty), "--output", str(out)]) == 2
    assert f"no frame could be read from {empty} " in capsys.readouterr().err and not out.exists()


def test_batch_option_batches_a_folder(tmp_path, nano_onnx, nano_onnx_dynamic, dog_jpg, monkeypatch, capsys):
    from yolox_deploy.runtimes.detector import Detector

    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"{i}.jpg").write_bytes(dog_jpg.read_bytes())
    (src / "._0.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")  # macOS metadata: not an image of the set
    shapes = []
    infer = Detector.infer
    monkeypatch.setattr(Detector, "infer", lambda self, batch: shapes.append(batch.shape[0]) or infer(self, batch))
    out = tmp_path / "out"
    assert detect_main([str(nano_onnx_dynamic), "--source", str(src), "--output", str(out), "--batch", "4"]) == 0
    assert shapes == [4, 1] and len(list(out.glob("*.json"))) == 5
    assert detect_main([str(nano_onnx), "--source", str(src), "--output", str(out), "--batch", "4"]) == 2
    assert "exported for batches of 1, not 4" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["m.onnx", "m.pth"])
def test_an_artefact_it_may_not_read_is_said_so(tmp_path, nano_onnx, nano_pth, dog_jpg, name):
    """A model file without read permission is named as such, not as a damaged model to re-export."""
    import os
    import shutil
    import subprocess
    import sys

    model = tmp_path / name
    shutil.copy(nano_onnx if name.endswith(".onnx") else nano_pth, model)
    model.chmod(0)
    cmd = [sys.executable, "-m", "yolox_deploy.cli.detect", str(model), "--source", str(dog_jpg),
           "--output", str(tmp_path / "out")]
    if os.geteuid() == 0:  # root reads any file unless it gives up the capability to
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: mode 000 does not stop reading")
        cmd = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.stderr.startswith("setpriv:"):
        pytest.skip(f"cannot drop the file-reading capability here ({proc.stderr.strip()})")
    assert proc.returncode == 2 and proc.stderr.splitlines() == [f"error: cannot read {model}: Permission denied"]
    assert not (tmp_path / "out").exists()


def test_class_names_files_with_a_byte_order_mark_or_missing(tmp_path):
    from yolox_deploy.cli.common import class_names_argument
    from yolox_deploy.errors import InputError

    bom = tmp_path / "names.txt"
    bom.write_text("person\nbicycle\n", encoding="utf-8-sig")  # as Windows editors save "UTF-8"
    assert class_names_argument(str(bom)) == ["person", "bicycle"]
    for missing, what in ((tmp_path / "nmaes.txt", "not found"), (tmp_path, "a folder")):
        with pytest.raises(InputError, match=f"class names file {missing}: {what}"):
            class_names_argument(str(missing))
    assert class_names_argument("cat") == ["cat"]  # one name is still a list of one


def test_class_names_as_a_comma_list_longer_than_a_file_name():
    from yolox_deploy.cli.common import class_names_argument
    from yolox_deploy.data.coco import COCO_CLASSES

    listed = ",".join(COCO_CLASSES)
    assert len(listed) > 255 and class_names_argument(listed) == list(COCO_CLASSES)


def test_labels_and_a_decoded_output_of_an_artefact_without_metadata(tmp_path, nano_onnx, nano_pth, dog_jpg, capsys):
    import onnx

    from yolox_deploy.data.coco import COCO_CLASSES
    from yolox_deploy.export import export

    names = tmp_path / "names.txt"
    names.write_text("\n".join(n.upper() for n in COCO_CLASSES) + "\n")
    assert detect_main([str(nano_onnx), "--source", str(dog_jpg), "--output", str(tmp_path / "a"),
                        "--class-names", str(names)]) == 0
    labelled = json.loads((tmp_path / "a" / "dog.json").read_text())["detections"]
    assert {"DOG", "BICYCLE"} <= {d["name"] for d in labelled}
    assert detect_main([str(nano_onnx), "--source", str(dog_jpg), "--output", str(tmp_path / "b"),
                        "--class-names", "cat,dog"]) == 2
    assert "2 class names given, the model has 80 classes" in capsys.readouterr().err

    decoded = export(nano_pth, "onnx", tmp_path / "decoded.onnx", model="yolox-nano", verify=False).path
    model = onnx.load(str(decoded))
    del model.metadata_props[:]  # as another tool would write it
    onnx.save(model, str(tmp_path / "foreign.onnx"))
    assert detect_main([str(tmp_path / "foreign.onnx"), "--source", str(dog_jpg), "--output", str(tmp_path / "c"),
                        "--decode-in-graph"]) == 0
    boxes = [d["xyxy"] for d in json.loads((tmp_path / "c" / "dog.json").read_text())["detections"]]
    assert boxes == [d["xyxy"] for d in labelled]  # the same boxes as the raw graph decoded by the pipeline


def test_a_rerun_without_pictures_removes_its_own_earlier_pictures(tmp_path, nano_pth, dog_jpg):
    """The picture of a run at --conf 0.05 stayed beside the JSON of a run at --conf 0.8 --no-images: a pair that
    showed other detections than it listed. A picture yolox-detect did not write is never removed."""
    out = tmp_path / "out"
    assert detect_main([str(nano_pth), "--source", str(dog_jpg), "--output", str(out), "--conf", "0.05"]) == 0
    assert _results(out) == ["dog.jpg", "dog.json"]
    assert detect_main([str(nano_pth), "--source", str(dog_jpg), "--output", str(out), "--conf", "0.8",
                        "--no-images"]) == 0
    assert _results(out) == ["dog.json"] and json.loads((out / RECORD).read_text())["results"] == ["dog.json"]
    (out / "mine.jpg").write_bytes(b"a picture of mine")
    other = tmp_path / "mine.jpg"
    shutil.copy(dog_jpg, other)
    assert detect_main([str(nano_pth), "--source", str(other), "--output", str(out), "--no-images"]) == 0
    assert (out / "mine.jpg").read_bytes() == b"a picture of mine"


def test_a_stream_address_is_read_as_a_live_video(tmp_path, nano_pth, dog_jpg, capsys):
    """An IP camera or a video on a server (here: a local HTTP server): read through OpenCV's FFmpeg, results
    named after its host and path, the password of the address kept out of names, records and messages."""
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    _video(served / "clip.avi", cv2.resize(cv2.imread(str(dog_jpg)), (192, 144)), 3, 10)
    handler = functools.partial(type("Quiet", (http.server.SimpleHTTPRequestHandler,),
                                     {"log_message": lambda *a: None}), directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        out = tmp_path / "out"
        url = f"http://viewer:secret@127.0.0.1:{port}/clip.avi"
        assert detect_main([str(nano_pth), "--source", url, "--output", str(out)]) == 0
        stem = f"127.0.0.1_{port}_clip.avi"
        assert _results(out) == [f"{stem}.json", f"{stem}.mp4"]
        data = json.loads((out / f"{stem}.json").read_text())
        assert data["source"] == f"http://viewer:***@127.0.0.1:{port}/clip.avi" and len(data["frames"]) == 3
        assert "dog" in {d["name"] for d in data["frames"][0]["detections"]}
        capsys.readouterr()
        rc = detect_main([str(nano_pth), "--source", f"http://viewer:secret@127.0.0.1:{port}/gone.avi",
                          "--output", str(tmp_path / "none")])
        err = capsys.readouterr().err
        assert rc == 2 and f"cannot open stream http://viewer:***@127.0.0.1:{port}/gone.avi" in err
        assert "secret" not in err and not (tmp_path / "none").exists()
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("command", ["bench", "compare", "detect", "eval", "export", "train"])
def test_help_shows_no_markup(command):
    """The descriptions printed the docstrings' reST literals (``yolox-eval``) as they are."""
    import importlib

    text = importlib.import_module(f"yolox_deploy.cli.{command}").build_parser().format_help()
    assert f"yolox-{command}" in text and "``" not in text
