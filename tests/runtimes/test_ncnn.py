"""NCNN backend: reading and checking param/bin files, metadata, batching, threads, devices, bad artefacts."""

import json
import os
import shutil
import threading

import numpy as np
import pytest

ncnn = pytest.importorskip("ncnn", reason="the ncnn backend needs ncnn (pip install 'yolox-deploy[ncnn]')")
pytest.importorskip("pnnx", reason="making NCNN test artefacts needs pnnx (pip install 'yolox-deploy[ncnn]')")

from yolox_deploy import Detector  # noqa: E402
from yolox_deploy.errors import ArtefactError, BackendUnavailable, InputError  # noqa: E402
from yolox_deploy.export import export  # noqa: E402
from yolox_deploy.io.synthetic import synthetic_scene  # noqa: E402
from yolox_deploy.runtimes import find_backend  # noqa: E402
from yolox_deploy.runtimes.detector import open_backend  # noqa: E402
from yolox_deploy.runtimes.ncnn import NcnnBackend, locate, read_param  # noqa: E402

from ..conftest import run_in_fork  # noqa: E402

SIZE = 64
ANCHORS = 8 * 8 + 4 * 4 + 2 * 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_random_model):
    """A 3-class random YOLOX-Nano as a raw-head NCNN folder (64x64, any size runs)."""
    out = tmp_path_factory.mktemp("ncnn") / "tiny_ncnn"
    return export(tiny_random_model, "ncnn", out, img_size=SIZE, decode_in_graph=False, dynamic=True,
                  dynamic_hw=True, verify=False).path


@pytest.fixture
def copy_of(tmp_path, tiny):
    dest = tmp_path / "copy_ncnn"
    shutil.copytree(tiny, dest)
    return dest


def _batch(n, rng, size=SIZE):
    return rng.uniform(0, 255, (n, 3, size, size)).astype(np.float32)


# --- the param file ----------------------------------------------------------------------------------------
PARAM = """7767517
4 4
Input            in0      0 1 in0 0=64 1=32 2=3
Convolution      conv_0   1 1 in0 1 0=4 1=3 11=3 5=1 6=108
Reshape          flat     1 1 1 2 6="*(0h,0w),4"
Swish            act      1 1 2 out0
"""


def test_read_param(tmp_path):
    p = tmp_path / "m.param"
    p.write_text(PARAM)
    g = read_param(p)
    assert [layer.type for layer in g.layers] == ["Input", "Convolution", "Reshape", "Swish"]
    assert g.input_blobs == ["in0"] and g.output_blobs == ["out0"] and g.input_hw() == (32, 64)
    assert g.layers[2].params[6] == '"*(0h,0w),4"'
    assert g.min_weight_bytes() == 4 + 108 + 4 * 4


@pytest.mark.parametrize("text, message", [
    ("", "magic number"),
    ("\x00\x01binary\xff", "binary content"),
    ("7767517\nfour 4\n", "layer and blob counts"),
    (PARAM.replace("4 4\n", "5 4\n"), "declares 5 layers but holds 4"),
    ("\n".join(PARAM.splitlines()[:4]), "truncated"),
    (PARAM.replace("1 1 2 out0", "1 1 nope out0"), "reads blob 'nope'"),
    (PARAM.replace("4 4\n", "4 2\n"), "declares 2 blobs"),
    (PARAM.replace("5=1", "5="), "line 4"),
    (PARAM.replace("Swish            act      1 1", "Swish act 1 x"), "not an NCNN layer line"),
])
def test_read_param_rejects_damaged_files(tmp_path, text, message):
    p = tmp_path / "m.param"
    p.write_bytes(text.encode("latin-1"))
    with pytest.raises(ArtefactError, match=message) as e:
        read_param(p)
    assert str(p) in str(e.value)


# --- opening artefacts -------------------------------------------------------------------------------------
def test_opens_folder_and_param_file(tiny):
    assert find_backend(tiny) is NcnnBackend and find_backend(tiny / "model.ncnn.param") is NcnnBackend
    assert locate(tiny) == (tiny / "model.ncnn.param", tiny / "model.ncnn.bin")
    with open_backend(tiny / "model.ncnn.param") as b:
        assert (b.input_name, b.output_name) == ("in0", "out0")
        assert b.meta.class_names == ("a", "b", "c") and b.meta.batch is None and b.meta.dynamic_hw


def test_a_folder_of_another_converters_naming_is_found(tiny, tmp_path):
    """``model.param`` / ``model.bin`` (ncnn's own tools) mark a folder as NCNN, as ``*.ncnn.param`` do."""
    folder = tmp_path / "other_ncnn"
    folder.mkdir()
    for name in ("param", "bin"):
        shutil.copy(tiny / f"model.ncnn.{name}", folder / f"yolox_nano.{name}")
    assert find_backend(folder) is NcnnBackend
    with Detector(folder, num_classes=3, img_size=64) as det:
        assert det.meta.num_classes == 3 and len(det(np.zeros((64, 64, 3), np.uint8))) == 1


def test_fp32_artefact_runs_in_fp32(tiny, copy_of):
    with NcnnBackend(tiny) as b:
        o = b.net.opt
        assert not (o.use_fp16_storage or o.use_fp16_packed or o.use_fp16_arithmetic or o.use_bf16_storage)
        assert b.compute_precision == "fp32"
    side = copy_of / "model.ncnn.param.json"
    side.write_text(side.read_text().replace('"precision": "fp32"', '"precision": "fp16"'))
    # NCNN keeps activations in FP16 on ARM; its x86 layers run FP32 whatever the flags (outputs equal to the bit)
    fp16_here = "fp16" if b._ncnn.cpu_support_arm_vfpv4() or b._ncnn.cpu_support_arm_asimdhp() else "fp32"
    with NcnnBackend(copy_of) as b:
        o = b.net.opt
        assert o.use_fp16_storage and o.use_fp16_packed and not o.use_fp16_arithmetic
        assert b.compute_precision == fp16_here
    with NcnnBackend(copy_of, half=True) as b:
        assert b.net.opt.use_fp16_arithmetic and b.compute_precision == fp16_here
    with NcnnBackend(copy_of, half=False) as b:  # an FP16 artefact forced to FP32 says so
        assert b.meta.precision == "fp16" and b.compute_precision == "fp32"


def test_batch_loops_over_images(tiny, rng):
    x = _batch(3, rng)
    with NcnnBackend(tiny, threads=1) as b:
        [batched] = b.infer(x)
        singles = [b.infer(x[i:i + 1])[0] for i in range(3)]
        assert batched.shape == (3, ANCHORS, 8) and batched.dtype == np.float32
        np.testing.assert_array_equal(batched, np.concatenate(singles))
        [other] = b.infer(_batch(2, rng, 96))  # a raw-head graph runs other sizes
        assert other.shape == (2, 12 * 12 + 6 * 6 + 3 * 3, 8)
        with pytest.raises(InputError, match="multiple of 32"):
            b.infer(_batch(1, rng, 80))


def test_detector_batch_equals_single_calls(tiny):
    images = [synthetic_scene(480, 640, seed=s) for s in range(3)]
    with Detector(tiny, conf=0.0, nms=0.65, batch_size=3) as det:
        together = det(images)
        alone = [det(im)[0] for im in images]
    assert sum(len(d) for d in together) > 0
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_array_equal(a.xyxy, b.xyxy)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.class_ids, b.class_ids)


def test_concurrent_calls_share_one_net(tiny, rng):
    x = _batch(4, rng)
    with NcnnBackend(tiny, threads=1) as b:
        expected = [b.infer(x[i:i + 1])[0] for i in range(4)]
        results: dict[int, np.ndarray] = {}

        def work(i):
            for _ in range(3):
                results[i] = b.infer(x[i:i + 1])[0]

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i in range(4):
        np.testing.assert_array_equal(results[i], expected[i])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX's")
def test_a_process_forked_after_ncnn_ran_on_several_threads_runs_on_one(tiny, rng):
    """GNU OpenMP's threads do not survive a fork: a child of a process where NCNN ran on two threads (a
    multiprocessing Pool's worker on Linux) hung for ever in its first inference. There a new Detector runs on one
    thread, and one opened before the fork, or asked for more threads, is refused."""
    x = _batch(1, rng)
    with NcnnBackend(tiny, threads=2) as before_fork:
        expected = before_fork.infer(x)[0]

        def own():
            with NcnnBackend(tiny) as b:
                np.testing.assert_array_equal(b.infer(x)[0], expected)
                return b.net.opt.num_threads

        assert run_in_fork(own) == (0, "1")
        code, message = run_in_fork(lambda: before_fork.infer(x))
        assert code == 1 and "model.ncnn.param opened before the fork on 2 threads would hang" in message
        code, message = run_in_fork(lambda: NcnnBackend(tiny, threads=2))
        assert code == 1 and "forked after NCNN ran on several threads" in message and "spawn" in message
        np.testing.assert_array_equal(before_fork.infer(x)[0], expected)  # the parent keeps its threads


def test_input_is_not_modified(tiny, rng):
    x = _batch(1, rng)
    before = x.copy()
    with NcnnBackend(tiny) as b:
        b.infer(x)
    np.testing.assert_array_equal(x, before)


def test_without_metadata(copy_of, rng):
    (copy_of / "model.ncnn.param.json").unlink()
    with pytest.raises(ArtefactError, match="no metadata.*img_size"):
        NcnnBackend(copy_of)
    with NcnnBackend(copy_of, img_size=SIZE) as b:  # classes from the output width
        assert b.meta.num_classes == 3 and b.meta.input_size == (SIZE, SIZE) and not b.meta.decode_in_graph
        assert not b.meta.dynamic_hw
    with Detector(copy_of, img_size=SIZE, class_names=["x", "y", "z"]) as det:
        assert det.meta.class_names == ("x", "y", "z")


def test_without_metadata_an_input_size_the_graph_states_is_kept(copy_of):
    """An ``Input`` layer that states its size (``0=w 1=h``) fixes it: another img_size is refused (NCNN ran a
    fixed graph at it and read past its reshapes: a segmentation fault)."""
    (copy_of / "model.ncnn.param.json").unlink()
    param = copy_of / "model.ncnn.param"
    lines = param.read_text().splitlines()
    lines[2] += f" 0={SIZE} 1={SIZE} 2=3"
    param.write_text("\n".join(lines) + "\n")
    with NcnnBackend(copy_of) as b:
        assert b.meta.input_size == (SIZE, SIZE)
    with pytest.raises(InputError, match="made for 64x64 input .its Input layer., not 96x96"):
        NcnnBackend(copy_of, img_size=96)


def test_without_metadata_a_decoding_graph_is_taken_as_one(tmp_path, tiny_random_model, rng):
    """The .param and .bin copied without their .json: the decode's exp says the boxes are in pixels already
    (decoding them again gave boxes of thousands of pixels)."""
    with_meta = export(tiny_random_model, "ncnn", tmp_path / "dec_ncnn", img_size=SIZE, verify=False).path
    bare = tmp_path / "bare_ncnn"
    bare.mkdir()
    for name in ("model.ncnn.param", "model.ncnn.bin"):
        shutil.copy(with_meta / name, bare / name)
    image = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    with Detector(with_meta, conf=0.0) as a, Detector(bare, img_size=SIZE, conf=0.0) as b:
        assert b.meta.decode_in_graph
        [da], [db] = a(image), b(image)
        np.testing.assert_allclose(db.xyxy, da.xyxy, atol=1e-3)
    with pytest.raises(InputError, match="bare_ncnn decodes its boxes"):  # said otherwise: refused, as ONNX
        NcnnBackend(bare, img_size=SIZE, decode_in_graph=False)


def test_options_and_devices(tiny):
    with pytest.raises(InputError, match="threads option is an integer >= 0"):
        NcnnBackend(tiny, threads="2")
    with NcnnBackend(tiny, threads=0) as b:  # NCNN's choice
        assert b.net.opt.num_threads > 0
    with pytest.raises(InputError, match="'cpu' or 'vulkan"):
        NcnnBackend(tiny, device="cuda")


def test_vulkan_without_gpu_is_unavailable(tiny, capfd):
    if ncnn.get_gpu_count() > 0:
        pytest.skip("this machine has a Vulkan GPU")
    capfd.readouterr()
    with pytest.raises(BackendUnavailable, match="Vulkan"):
        NcnnBackend(tiny, device="vulkan")
    with pytest.raises(BackendUnavailable, match="Vulkan"):
        NcnnBackend.check_device("vulkan:1")
    assert capfd.readouterr().err == ""  # ncnn's own lines about each driver it failed to load are not shown


@pytest.mark.gpu
def test_vulkan_matches_cpu(tiny, rng):
    if ncnn.get_gpu_count() == 0:
        pytest.skip("no Vulkan GPU visible to ncnn")
    x = _batch(2, rng)
    with NcnnBackend(tiny) as cpu, NcnnBackend(tiny, device="vulkan") as gpu:
        assert not gpu.thread_safe
        np.testing.assert_allclose(gpu.infer(x)[0], cpu.infer(x)[0], atol=1e-2)


# --- damaged artefacts -------------------------------------------------------------------------------------
def _damage(folder, how):
    param, weights = folder / "model.ncnn.param", folder / "model.ncnn.bin"
    if how == "garbage param":
        param.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    elif how == "truncated param":
        param.write_bytes(param.read_bytes()[:700])
    elif how == "missing bin":
        weights.unlink()
    elif how == "truncated bin":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif how == "bin short of its last bytes":  # passes the graph's size bound, not the sidecar's record
        weights.write_bytes(weights.read_bytes()[:-8])
    elif how == "bin short, no metadata":  # nothing records the size: NCNN's own loader reports it
        weights.write_bytes(weights.read_bytes()[:-8])
        (folder / "model.ncnn.param.json").unlink()
    elif how == "bin of another export":  # loads and runs in NCNN; the sidecar's record tells them apart
        weights.write_bytes(weights.read_bytes() + bytes(8))
    elif how == "bin of another export, same size":  # as an FP32 raw-head export's beside a decoding one's
        data = bytearray(weights.read_bytes())
        data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
        weights.write_bytes(bytes(data))
    elif how == "unknown layer":
        param.write_text(param.read_text().replace("\nSwish ", "\nTensor.slice ", 1))
    elif how == "sidecar of another export":  # a decoding graph's beside a raw head: boxes would be garbage
        sidecar = folder / "model.ncnn.param.json"
        meta = json.loads(sidecar.read_text())
        assert meta["decode_in_graph"] is False
        sidecar.write_text(json.dumps({**meta, "decode_in_graph": True}))
    elif how == "corrupt metadata":
        (folder / "model.ncnn.param.json").write_text("{not json")
    elif how == "empty folder":
        param.unlink()
        weights.unlink()
    return param


CASES = {"garbage param": "not an NCNN param file", "truncated param": "truncated or damaged",
         "missing bin": "model.ncnn.bin.*missing", "truncated bin": "truncated",
         "bin short of its last bytes": "not the [0-9]+ exported with model.ncnn.param",
         "bin short, no metadata": "could not load the weights",
         "bin of another export": "belong to another export",
         "bin of another export, same size": "not the .bin exported with model.ncnn.param .its SHA-256 differs",
         "unknown layer": "Tensor.slice", "sidecar of another export": "its sidecar says the graph decodes its boxes, and the graph does not",
         "corrupt metadata": "model.ncnn.param.json.*not valid JSON",
         "empty folder": "no model artefact in folder"}


@pytest.mark.parametrize("how", list(CASES))
def test_damaged_artefacts_raise_artefact_error(copy_of, how):
    _damage(copy_of, how)
    with pytest.raises(ArtefactError, match=CASES[how]) as e:
        open_backend(copy_of)
    assert str(copy_of) in str(e.value)


@pytest.mark.parametrize("how", ["garbage param", "missing bin", "truncated bin", "empty folder"])
def test_detect_cli_exits_2_on_damaged_artefacts(copy_of, how, tmp_path, capsys):
    import cv2

    from yolox_deploy.cli.detect import main

    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), synthetic_scene())
    _damage(copy_of, how)
    assert main([str(copy_of), "--source", str(image), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(copy_of) in err and "Traceback" not in err


def test_the_interpreter_exits_cleanly_with_a_stream_left_open(tiny, tmp_path):
    """The stream's threads are stopped at exit: left inside NCNN while the interpreter shut down, they
    aborted the process ("terminate called without an active exception")."""
    import subprocess
    import sys

    import cv2

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(12):
        cv2.imwrite(str(frames / f"{i:02d}.png"), synthetic_scene(240, 320, seed=i))
    script = ("from yolox_deploy import Detector\n"
              f"det = Detector({str(tiny)!r})\n"
              f"stream = det.stream({str(frames)!r})\n"
              "next(stream)\n"
              "print('left open', flush=True)\n")
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout == "left open\n", proc.stderr[-500:]


def test_without_metadata_a_size_other_than_the_heads_is_refused(tmp_path, tiny_random_model):
    """pnnx writes no size in the Input layer, but a fixed graph's head flattens each level to the cells of the
    size it was made for: another img_size is refused at open (NCNN read past those reshapes: a smaller size was
    a segmentation fault, a larger one ran without a word until the pipeline's shape check)."""
    made = export(tiny_random_model, "ncnn", tmp_path / "fixed_ncnn", img_size=SIZE, decode_in_graph=False,
                  verify=False).path
    (made / "model.ncnn.param.json").unlink()
    with NcnnBackend(made, img_size=SIZE) as b:
        assert b.meta.input_size == (SIZE, SIZE) and b.meta.num_classes == 3
    with pytest.raises(InputError, match=r"made for another input size than 96x96 \(its head flattens \[64, 16, 4\] "
                                         r"cells per level, not \[144, 36, 9\]\)"):
        NcnnBackend(made, img_size=96)
