"""The Detector pipeline: overrides, batching, streams, threads and memory.

Pipeline tests that run many images use our dynamic ONNX (ONNX Runtime) to stay fast; the torch backend
shares every line of the pipeline they exercise.
"""

import gc
import os
import re
import threading

import cv2
import numpy as np
import pytest

from yolox_deploy import Detector
from yolox_deploy.data.coco import COCO_CATEGORY_IDS
from yolox_deploy.errors import ArtefactError, InputError
from yolox_deploy.io.images import ensure_bgr, list_images, pil_to_bgr, read_image
from yolox_deploy.io.synthetic import synthetic_scene

from ..conftest import run_in_fork


@pytest.fixture(scope="module")
def val_images(coco_tiny):
    return [read_image(p) for p in list_images(coco_tiny / "val2017")]


@pytest.fixture(scope="module")
def det(nano_onnx_dynamic):
    return Detector(nano_onnx_dynamic, conf=0.3)


def test_batch_size_does_not_change_results(nano_pth, val_images):
    one = Detector(nano_pth, conf=0.3)(val_images[:7])
    many = Detector(nano_pth, conf=0.3, batch_size=4)(val_images[:7])
    for a, b in zip(one, many):
        assert a.class_ids.tolist() == b.class_ids.tolist()
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-2)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_img_size_override_and_threshold_validation(nano_pth, dog_jpg):
    det = Detector(nano_pth, img_size=320)
    assert det.meta.input_size == (320, 320)
    [d] = det(dog_jpg)
    assert "dog" in set(d.names)
    # the authors' COCO weights: detections carry COCO's category ids (dog 18, not its class index 16)
    assert det.category_ids == COCO_CATEGORY_IDS
    np.testing.assert_array_equal(d.category_ids, np.array(COCO_CATEGORY_IDS)[d.class_ids])
    assert {r["category_id"] for r in d.to_coco(1)} >= {18}
    with pytest.raises(InputError, match="multiple of 32"):
        Detector(nano_pth, img_size=300)
    with pytest.raises(InputError, match="thresholds must be numbers"):
        Detector(nano_pth, conf=1.5)
    with pytest.raises(InputError, match="max_det must be an integer >= 1"):
        Detector(nano_pth, max_det=-1)
    with pytest.raises(InputError, match="3 class names"):
        Detector(nano_pth, class_names=["a", "b", "c"])


def test_float_batches_of_any_memory_layout(nano_pth, nano_onnx):
    """A float model input that is a view with negative strides (a flipped array) runs on every backend."""
    x = np.random.default_rng(0).uniform(0, 255, (1, 3, 416, 416)).astype(np.float32)
    flipped = x[:, ::-1]
    assert flipped.strides[1] < 0
    for weights in (nano_pth, nano_onnx):
        with Detector(weights) as det:
            np.testing.assert_allclose(np.asarray(det.infer(flipped)[0]), np.asarray(det.infer(flipped.copy())[0]),
                                       atol=1e-4)


def test_a_fixed_batch_artefact_refuses_another_batch_size(nano_onnx, nano_onnx_dynamic):
    with pytest.raises(InputError, match="exported for batches of 1, not 4"):
        Detector(nano_onnx, batch_size=4)
    assert Detector(nano_onnx, batch_size=1).batch_size == 1
    assert Detector(nano_onnx_dynamic, batch_size=4).batch_size == 4


def test_model_option_must_agree_with_the_artefact(nano_onnx_dynamic):
    with pytest.raises(InputError, match="is yolox-nano, not yolox-s"):
        Detector(nano_onnx_dynamic, model="yolox-s")
    with pytest.raises(InputError, match="unknown model 'bogus'"):
        Detector(nano_onnx_dynamic, model="bogus")
    assert Detector(nano_onnx_dynamic, model="nano").meta.model == "yolox-nano"


@pytest.mark.parametrize("device", ["mps", "meta", "xla", "tpu"])
def test_torch_backend_refuses_devices_it_does_not_run_on(nano_pth, device):
    with pytest.raises(InputError, match="use cpu, cuda or cuda:N"):
        Detector(nano_pth, device=device)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message when there is no GPU")
def test_asking_for_a_gpu_is_not_answered_with_the_cpu(nano_pth):
    from yolox_deploy.errors import BackendUnavailable

    for device in ("gpu", "cuda", "cuda:1"):
        with pytest.raises(BackendUnavailable, match="no CUDA GPU"):
            Detector(nano_pth, device=device)
    assert Detector(nano_pth, device="auto").backend.output_device == "cpu"


def test_an_installed_package_that_does_not_import_is_one_message(tmp_path, monkeypatch):
    from yolox_deploy.runtimes.base import BackendInfo

    (tmp_path / "yolox_broken_runtime").mkdir()
    (tmp_path / "yolox_broken_runtime" / "__init__.py").write_text("raise ImportError('libfoo.so: cannot open')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    info = BackendInfo("broken", package="yolox_broken_runtime", extra="broken")
    assert info.available() == (True, "")
    ok, reason = info.importable()
    assert not ok and "installed but does not import (libfoo.so: cannot open)" in reason
    assert "pip install 'yolox-deploy[broken]'" in reason
    missing = BackendInfo("gone", package="yolox_no_such_runtime", extra="gone")
    assert missing.importable() == missing.available() and not missing.available()[0]


def test_a_backend_override_must_open_that_kind_of_file(nano_onnx):
    with pytest.raises(InputError, match="the ncnn backend opens .param files or their folders, not yolox_nano.onnx"):
        Detector(nano_onnx, backend="ncnn")


@pytest.mark.parametrize("kwargs,message", [
    ({"conff": 0.9}, "unknown option 'conff' for the onnxruntime backend; it takes"),
    ({"conf": "0.5"}, "thresholds must be numbers in [0, 1]: conf='0.5'"),
    ({"max_det": 2.5}, "max_det must be an integer >= 1"),
    ({"batch_size": 2.0}, "batch size must be an integer >= 1"),
    ({"class_names": list(range(80))}, "class names must be strings"),
    ({"threads": "x"}, "the onnxruntime backend's threads option is an integer >= 0 (0: the runtime's choice), not 'x'"),
    ({"threads": -1}, "threads option is an integer >= 0"),
    ({"threads": 1.7}, "threads option is an integer >= 0"),
    ({"legacy": "no"}, "the onnxruntime backend's legacy option is True or False, not 'no'"),
    ({"spin_between_runs": 1}, "spin_between_runs option is True or False"),
    ({"class_agnostic": "no"}, "class_agnostic is True or False, not 'no'"),
    ({"clip": None}, "clip is True or False"),
    ({"model": "yolox-nan0"}, "unknown model 'yolox-nan0'"),
])
def test_arguments_of_the_wrong_kind_are_one_message(nano_onnx_dynamic, kwargs, message):
    with pytest.raises(InputError, match=re.escape(message)):
        Detector(nano_onnx_dynamic, **kwargs)


def test_class_names_may_be_any_sequence(nano_onnx_dynamic):
    names = np.array([f"c{i}" for i in range(80)])
    assert Detector(nano_onnx_dynamic, class_names=names).meta.class_names[:2] == ("c0", "c1")


@pytest.mark.parametrize("fuse", [True, False])
def test_an_in_memory_model_is_left_as_the_caller_had_it(fuse):
    """Fused or not, the runtime works on a copy: a training model keeps its mode and its decoding, and the
    metadata is the one exports record (the head's strides included)."""
    from yolox_deploy import build_model

    model = build_model("yolox-nano", num_classes=3).train()
    with Detector(model, fuse=fuse, img_size=64) as det:
        assert det.meta.strides == tuple(model.head.strides) and det.meta.num_classes == 3
        det(np.zeros((64, 64, 3), np.uint8))
    assert model.training and model.head.decode_in_inference


def test_an_in_memory_model_on_a_file_backend_is_refused():
    """It reached ONNX Runtime as a path: "TypeError: expected str, bytes or os.PathLike object, not YOLOX"."""
    from yolox_deploy import build_model

    with pytest.raises(InputError, match="a YOLOX model in memory runs on the torch backend, not onnxruntime"):
        Detector(build_model("yolox-nano", num_classes=3), backend="onnxruntime")


def test_an_in_memory_model_checks_the_count_of_class_names(tiny_random_model):
    """Class names of another count than the model's head were taken (the first call then failed with "re-export
    it"), as a checkpoint's are not."""
    with pytest.raises(InputError, match=r"^1 class names given for a model with 3 classes$"):
        Detector(tiny_random_model, class_names=["x"])
    with pytest.raises(InputError, match="4 class names given for a model with 3 classes"):
        Detector(tiny_random_model, class_names=list("wxyz"), num_classes=4)


def test_an_option_refused_for_an_in_memory_model_is_one_line(tiny_random_model):
    """The message named the model by its whole module repr (tens of thousands of characters, over many lines)."""
    with pytest.raises(InputError, match=r"^the model has a raw output") as err:
        Detector(tiny_random_model, decode_in_graph=True)
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


def test_arguments_refused_after_opening_close_the_runtime(nano_onnx_dynamic, monkeypatch):
    import yolox_deploy.runtimes.detector as detector_module

    opened, real = [], detector_module.open_backend

    def recording(*args, **kwargs):
        opened.append(real(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(detector_module, "open_backend", recording)
    with pytest.raises(InputError, match="batch size must be an integer"):  # refused before anything is opened
        Detector(nano_onnx_dynamic, batch_size=0)
    assert opened == []
    for kwargs, message in (({"num_classes": 3}, "the model has 80 classes, not 3"),
                            ({"model": "yolox-s"}, "is yolox-nano, not yolox-s"),
                            ({"class_names": ["a"]}, "1 class names given")):
        with pytest.raises(InputError, match=message):
            Detector(nano_onnx_dynamic, **kwargs)
        assert opened[-1]._closed
    assert len(opened) == 3


def test_a_stream_yields_the_frames_read_before_a_corrupt_one(nano_onnx_dynamic, dog_jpg, tmp_path):
    """With batches of 3, a corrupt second file lost the first frame's result too."""
    folder = tmp_path / "shots"
    folder.mkdir()
    for name in ("a.jpg", "c.jpg", "d.jpg"):
        (folder / name).write_bytes(dog_jpg.read_bytes())
    (folder / "b.jpg").write_bytes(b"\xff\xd8\xffnot a jpeg")
    got = []
    with Detector(nano_onnx_dynamic, batch_size=3) as det, pytest.raises(InputError, match="b.jpg"):
        for result in det.stream(folder):
            got.append(result.frame.name)
    assert got == ["a"]


def test_lookups_follow_a_change_of_metadata(nano_onnx_dynamic, dog_jpg):
    """The label table, category ids and expected head shape are made once per metadata, not once per call."""
    det = Detector(nano_onnx_dynamic)
    [before] = det(dog_jpg)
    assert "dog" in set(before.names) and 18 in before.category_ids.tolist()
    assert det._tables() is det._tables()  # the same lookups while the metadata stays
    det.meta = det.meta.with_(class_names=tuple(f"c{i}" for i in range(80)))
    [after] = det(dog_jpg)
    assert after.names.tolist() == [f"c{i}" for i in before.class_ids] and after.category_ids is None
    det.meta = det.meta.with_(class_names=("a", "b"))
    with pytest.raises(ArtefactError, match=re.escape("not the [N, 3549, 7]")):
        det(dog_jpg)


@pytest.mark.parametrize("weights,source", [(None, None), (3, None), ("ok", None), ("ok", 5), ("ok", b"dog.jpg"),
                                            ("ok", memoryview(np.zeros((4, 4, 3), np.uint8))),
                                            ("ok", {"a": np.zeros((4, 4, 3), np.uint8)})])
def test_weights_and_sources_of_the_wrong_type(nano_onnx_dynamic, weights, source):
    with pytest.raises(InputError, match="weights are a checkpoint|expected an image path"):
        Detector(nano_onnx_dynamic if weights == "ok" else weights)(source)


def test_an_empty_batch_is_no_detections_or_one_message(nano_onnx_dynamic):
    """Dynamic-batch runtimes failed inside on zero images (ONNX Runtime's Reshape)."""
    with Detector(nano_onnx_dynamic) as det:
        assert det.run_batch([]) == [] and det([]) == []
        for empty in (np.zeros((0, 416, 416, 3), np.uint8), np.zeros((0, 3, 416, 416), np.float32)):
            with pytest.raises(InputError, match="an empty batch"):
                det.infer(empty)


def test_a_closed_detector_says_so(nano_onnx_dynamic, dog_jpg):
    det = Detector(nano_onnx_dynamic)
    det.close()
    with pytest.raises(InputError, match="this onnxruntime backend was closed"):
        det(dog_jpg)
    with pytest.raises(InputError, match="this onnxruntime backend was closed"):  # a RuntimeError of its own
        _ = det.backend.session


def test_a_closed_backend_releases_its_runtime_and_never_takes_it_again(tiny_random_model, tmp_path):
    """The PyTorch backend kept its model after close (freed only with the Detector); OpenVINO compiled its IR
    again when asked its precision after close, NCNN raised AttributeError."""
    import weakref

    from yolox_deploy.export import export
    from yolox_deploy.runtimes.detector import open_backend

    with open_backend(tiny_random_model) as backend:
        model = weakref.ref(backend.model)
    assert backend.model is None and model() is None
    ir = export(tiny_random_model, "openvino", tmp_path / "t_openvino", img_size=64, verify=False).path
    ncnn = export(tiny_random_model, "ncnn", tmp_path / "t_ncnn", img_size=64, verify=False).path
    for path in (ir, ncnn):
        backend = open_backend(path)
        backend.close()
        with pytest.raises(InputError, match=f"this {backend.info.name} backend was closed"):
            _ = backend.compute_precision
        if backend.info.name == "openvino":
            assert backend._plain is None and backend._canvas is None  # not compiled again
    # the read IR was kept after close: its .bin stayed open and mapped (and its .xml open until a GC pass)
    held = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")} | {line.split()[-1] for line in open("/proc/self/maps")
                                                         if len(line.split()) > 5}
    assert not [p for p in held if p.startswith(str(ir))]


def test_unknown_artefact_kinds(tmp_path):
    (tmp_path / "model.xyz").write_text("x")
    with pytest.raises(ArtefactError, match="don't know how to run model.xyz"):
        Detector(tmp_path / "model.xyz")
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(ArtefactError, match="no model artefact in folder"):
        Detector(tmp_path / "empty_folder")
    with pytest.raises(InputError, match="not found"):
        Detector(tmp_path / "missing.onnx")


@pytest.mark.parametrize("shape", [(1, 1, 3), (3, 20000, 3), (20000, 2, 3), (2000, 2000)])
def test_extreme_image_shapes(det, shape):
    img = np.full(shape, 128, np.uint8)
    [d] = det(img)
    assert d.image_size == shape[:2]
    assert np.isfinite(d.xyxy).all()
    assert (d.xyxy[:, 2] <= shape[1]).all() and (d.xyxy[:, 3] <= shape[0]).all()


def test_huge_image(det):
    img = np.zeros((20000, 20000, 3), np.uint8)
    img[5000:15000, 5000:15000] = 200
    [d] = det(img)
    assert d.image_size == (20000, 20000)
    del img
    gc.collect()


def test_run_batch_converts_images_as_a_call_does(det, dog_jpg):
    """run_batch and preprocess took arrays as they were: float and uint16 images were cast to black canvases
    (no detections), gray and BGRA ones failed inside numpy."""
    import cv2

    img = cv2.imread(str(dog_jpg))
    [want] = det(img)
    for other in (img / 255.0, img.astype(np.uint16) * 257, cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)):
        [got] = det.run_batch([other])
        assert got.class_ids.tolist() == want.class_ids.tolist() and np.allclose(got.xyxy, want.xyxy, atol=1.0)
    [gray] = det.run_batch([cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)])
    assert gray.image_size == want.image_size and len(gray) > 0
    with pytest.raises(InputError, match="image 1: unsupported pixel type int32"):
        det.preprocess([img, img.astype(np.int32)])


def test_empty_image_is_refused(det):
    with pytest.raises(InputError, match="empty"):
        det(np.zeros((0, 0, 3), np.uint8))


def test_stream_is_in_order_and_equals_single_calls(nano_onnx_dynamic, coco_tiny, val_images):
    det = Detector(nano_onnx_dynamic, conf=0.3, batch_size=3)
    results = list(det.stream(coco_tiny / "val2017"))
    names = [p.stem for p in list_images(coco_tiny / "val2017")]
    assert [r.frame.name for r in results] == names
    single = Detector(nano_onnx_dynamic, conf=0.3)
    for r, img in zip(results[:10], val_images[:10]):
        [ref] = single(img)
        assert r.detections.class_ids.tolist() == ref.class_ids.tolist()
        np.testing.assert_allclose(r.detections.xyxy, ref.xyxy, atol=1e-2)


def test_stream_video_and_early_close(tmp_path, det, dog_jpg):
    video = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    dog = cv2.resize(cv2.imread(str(dog_jpg)), (320, 240))
    for _ in range(12):
        writer.write(dog)
    writer.release()
    stream = det.stream(video)
    first = next(stream)
    assert first.frame.index == 0 and "dog" in set(first.detections.names)
    stream.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("yolox-stream")]
    assert len(list(det.stream(video))) == 12


def test_closing_a_detector_stops_its_streams(tmp_path, nano_onnx_dynamic, dog_jpg):
    """A stream outlived its Detector's close (and a with block): its threads ran on and its video or camera
    stayed open until the generator was collected."""
    video = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for _ in range(12):
        writer.write(cv2.resize(cv2.imread(str(dog_jpg)), (320, 240)))
    writer.release()
    with Detector(nano_onnx_dynamic) as det:
        stream = det.stream(video)
        next(stream)
    assert not [t for t in threading.enumerate() if t.name.startswith("yolox-stream")]
    assert not [fd for fd in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{fd}") == str(video)]
    with pytest.raises(InputError, match="the Detector of this stream was closed"):
        list(stream)


def test_a_stream_closed_during_a_slow_inference_is_waited_for_at_exit(tmp_path, tiny_random_model, monkeypatch):
    """Closing waited 5 s, then forgot a thread still inside its runtime: the exit did not wait for it, and NCNN
    aborted the process (a yolox-x batch takes longer than 5 s on a small CPU)."""
    from yolox_deploy.runtimes import streaming

    for k in range(3):
        cv2.imwrite(str(tmp_path / f"{k}.png"), np.full((64, 64, 3), 100, np.uint8))
    det = Detector(tiny_random_model, img_size=64)
    real, release = det.infer, threading.Event()

    def slow(batch):  # the second call is still running when the stream is closed
        if calls.append(1) or len(calls) > 1:
            release.wait(10)
        return real(batch)

    calls: list = []
    monkeypatch.setattr(det, "infer", slow)
    monkeypatch.setattr(streaming, "CLOSE_WAIT_SECONDS", 0.1)
    stream = det.stream(tmp_path)
    next(stream)
    stream.close()
    live = [s.threads for s in streaming._LIVE.values()]
    assert any(t.is_alive() and t.name == "yolox-stream-infer" for threads in live for t in threads)
    release.set()
    streaming._stop_live_pipelines()  # what the interpreter's exit runs: it waits for the call to end
    assert not any(t.is_alive() for threads in live for t in threads)
    assert len(list(det.stream(tmp_path))) == 3  # the next stream drops the entries of ended threads
    assert not any(s.threads in live for s in streaming._LIVE.values())
    det.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX's")
def test_a_child_forked_during_a_call_can_close_its_copy(tiny_random_model, monkeypatch):
    """A child forked while a thread of its parent was inside a call inherited the count of calls in flight: its
    close (and a with block's end) waited forever for a call that no thread of it runs."""
    det = Detector(tiny_random_model, img_size=64)
    entered, release = threading.Event(), threading.Event()

    def held(batch):
        entered.set()
        release.wait(10)
        return []

    monkeypatch.setattr(det.backend, "_checked_infer", held)
    t = threading.Thread(target=det.infer, args=(np.zeros((1, 64, 64, 3), np.uint8),))
    t.start()
    assert entered.wait(10)
    try:
        assert run_in_fork(det.close, seconds=20) == (0, "None")
    finally:
        release.set()
        t.join()
    det.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX's")
def test_a_process_forked_after_pytorch_ran_on_several_threads_runs_on_one(tiny_random_model):
    """GNU OpenMP's threads do not survive a fork: a child of a process where the torch backend ran on two threads
    (a multiprocessing Pool's worker on Linux) hung for ever in its first inference, with its own Detector or the
    parent's."""
    import torch

    threads = torch.get_num_threads()
    image = synthetic_scene(416, 416, seed=0)
    try:
        det = Detector(tiny_random_model, img_size=416, threads=2)
        expected = det(image)[0]

        def in_child():
            own = Detector(tiny_random_model, img_size=416)
            for got in (own(image)[0], det(image)[0]):
                assert len(got) == len(expected) and np.allclose(got.xyxy, expected.xyxy, atol=1e-3)
            return torch.get_num_threads()

        assert run_in_fork(in_child) == (0, "1")
        code, message = run_in_fork(lambda: Detector(tiny_random_model, img_size=416, threads=2))
        assert code == 1 and "forked after PyTorch ran on several threads" in message and "spawn" in message
        assert torch.get_num_threads() == 2  # the parent keeps its threads
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("source,queue_size,message", [
    (-1, 2, "a camera index is >= 0"), (True, 2, "not True"), (1.5, 2, "not 1.5"), (None, 2, "not None"),
    (np.zeros((4, 4, 3), np.uint8), 2, "not an object of type ndarray (the Detector itself takes arrays)"),
    ("0", 0, "queue_size must be an integer >= 1"),
])
def test_stream_refuses_sources_and_queue_sizes_it_cannot_use(det, source, queue_size, message):
    """A negative camera index crashed the process inside OpenCV; an unbounded queue would let memory grow.
    Both are refused by the call, not when the stream is first asked for a frame."""
    with pytest.raises(InputError, match=re.escape(message)):
        det.stream(source, queue_size=queue_size)


def test_a_missing_source_or_a_closed_detector_is_refused_by_the_call(tmp_path, tiny_random_model):
    det = Detector(tiny_random_model, img_size=64)
    with pytest.raises(InputError, match="source not found"):
        det.stream(tmp_path / "nope.mp4")
    det.close()
    with pytest.raises(InputError, match="this torch backend was closed"):
        det.stream(tmp_path)


def test_stream_errors_reach_the_caller(tmp_path, det):
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), np.zeros((32, 32, 3), np.uint8))
    (folder / "b.jpg").write_bytes(b"broken")
    it = det.stream(folder)
    assert next(it).frame.name == "a"
    with pytest.raises(InputError, match="b.jpg"):
        next(it)


@pytest.mark.parametrize("weights", ["nano_onnx_dynamic", "nano_pth"])
def test_threads_never_mix_results(weights, request, val_images):
    """4 threads x 50 images through one Detector equal the sequential results."""
    det = Detector(request.getfixturevalue(weights), conf=0.3, img_size=320)
    images = (val_images * 2)[:50]
    expected = [det(img)[0] for img in images]
    got: dict[int, list] = {}

    def work(k: int) -> None:
        n = len(images)
        order = [(i + 13 * k) % n for i in range(n)] if k % 2 == 0 else list(reversed(range(n)))
        got[k] = [(i, det(images[i])[0]) for i in order]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        assert len(got[k]) == 50
        for i, d in got[k]:
            assert d.class_ids.tolist() == expected[i].class_ids.tolist()
            np.testing.assert_allclose(d.xyxy, expected[i].xyxy, atol=1e-3)


def test_memory_stays_flat(nano_onnx_dynamic, val_images):
    """2,000 images through one Detector: resident memory grows by no more than a small bound."""
    psutil = pytest.importorskip("psutil")
    det = Detector(nano_onnx_dynamic, img_size=64, conf=0.3)  # the pipeline is under test, not the model
    small = [cv2.resize(im, (80, 60)) for im in val_images[:40]]
    proc = psutil.Process()
    for im in small * 5:  # warm up allocator pools and caches
        det(im)
    gc.collect()
    before = proc.memory_info().rss
    for i in range(2000):
        det(small[i % len(small)])
    gc.collect()
    growth_mb = (proc.memory_info().rss - before) / 2**20
    assert growth_mb < 25, f"RSS grew by {growth_mb:.1f} MiB over 2000 images"


def test_close_waits_for_the_calls_in_flight(nano_pth):
    """A runtime freed under a running call can crash the process (NCNN's does): close() lets running calls
    finish on what they started with, and later calls are refused."""
    import time

    from yolox_deploy.runtimes.detector import open_backend

    backend = open_backend(nano_pth)
    events = []
    run, release = backend._infer_canvas, backend._close

    def slow(batch):
        events.append("call")
        time.sleep(0.3)
        out = run(batch)
        events.append("returned")
        return out

    backend._infer_canvas = slow
    backend._close = lambda: (events.append("closed"), release())
    canvas = np.full((1, 416, 416, 3), 114, np.uint8)
    caller = threading.Thread(target=backend.infer, args=(canvas,))
    caller.start()
    time.sleep(0.1)
    backend.close()
    caller.join()
    assert events == ["call", "returned", "closed"]
    with pytest.raises(InputError, match="was closed"):
        backend.infer(canvas)


def test_half_on_the_cpu_says_it_runs_fp32(nano_pth, caplog):
    with Detector(nano_pth, half=True) as det:
        assert det.meta.precision == "fp32"
    assert "half applies on CUDA only; the model runs in FP32 on cpu" in caplog.text


def test_settings_changed_after_construction_are_checked_as_the_constructor_checks_them(nano_onnx_dynamic, dog_jpg):
    """conf / nms / max_det / class_agnostic / batch_size are public attributes: a value the constructor refuses is
    refused when set too (a text conf reached numpy, a negative one kept every anchor, batch_size 0 reached range())."""
    det = Detector(nano_onnx_dynamic)
    for name, value in (("conf", "0.5"), ("conf", -1), ("conf", 5), ("conf", float("nan")), ("conf", None),
                        ("nms", 2), ("nms", None), ("max_det", 0), ("class_agnostic", "yes"), ("clip", "no"),
                        ("batch_size", 0)):
        with pytest.raises(InputError):
            setattr(det, name, value)
    det.conf, det.max_det = 0.5, 2
    [d] = det(dog_jpg)
    assert len(d) == 2 and d.scores.min() >= 0.5 and (det.conf, det.max_det) == (0.5, 2)


def test_a_list_of_paths_is_decoded_one_batch_at_a_time(nano_onnx_dynamic, dog_jpg, monkeypatch):
    """A call on many paths held every decoded image before the first inference (N full-size images in memory)."""
    import yolox_deploy.runtimes.detector as detector_module

    det = Detector(nano_onnx_dynamic, batch_size=2)
    held = []
    real_run_batch = det.run_batch
    reads = []
    real_read = detector_module.read_image
    monkeypatch.setattr(detector_module, "read_image", lambda p: reads.append(p) or real_read(p))

    def run_batch(images):
        held.append(len(reads))
        return real_run_batch(images)

    det.run_batch = run_batch
    out = det([dog_jpg] * 5)
    assert len(out) == 5 and held == [2, 4, 5]
    with pytest.raises(InputError, match="image 3: expected a path"):  # kinds are still checked before any work
        det([dog_jpg, dog_jpg, dog_jpg, 7])
    held.clear()
    with pytest.raises(InputError, match="image not found: .*missing.jpg"):  # and paths: no batch ran
        det([dog_jpg, dog_jpg, dog_jpg, "missing.jpg"])
    assert held == []


def test_a_pil_image_is_taken_in_its_rgb_order(det, dog_jpg):
    """ultralytics and torchvision users hold PIL images: np.asarray of one is RGB, which the Detector would take
    for BGR; a PIL image itself is converted (gray, palette and alpha modes by Pillow)."""
    Image = pytest.importorskip("PIL.Image")
    pil = Image.fromarray(read_image(dog_jpg)[..., ::-1])  # the file's pixels as OpenCV decodes them, in RGB
    [from_pil, from_rgba] = det([pil, pil.convert("RGBA")])
    [from_file] = det(dog_jpg)
    assert from_pil == from_file and from_rgba == from_file
    assert det.class_names[16] == "dog" and "dog" in from_file.names
    with pytest.raises(InputError, match="image 1: image is empty"):
        det([dog_jpg, Image.new("RGB", (0, 0))])
    deep = np.arange(0, 4096, 16, np.uint16).reshape(16, 16)  # 16-bit and float gray: scaled, not clipped by Pillow
    np.testing.assert_array_equal(pil_to_bgr(Image.fromarray(deep)), ensure_bgr(deep))
    unit = np.full((8, 8), 0.5, np.float32)
    np.testing.assert_array_equal(pil_to_bgr(Image.fromarray(unit)), ensure_bgr(unit))
    with pytest.raises(InputError, match="image 0: expected a path, a BGR uint8 array or a PIL image, got dict"):
        det([{}])
