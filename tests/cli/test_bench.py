"""``yolox-bench``: arguments, outputs, unavailable backends as rows, user errors as one line."""

from __future__ import annotations

import json
import sys

from yolox_deploy.cli.bench import build_parser, config_from_args, main


def test_precision_flags():
    args = build_parser().parse_args(["--half", "--int8", "--batch", "1,8", "--models", "nano,s"])
    cfg = config_from_args(args)
    assert cfg.precisions == ["fp32", "fp16", "int8"] and cfg.batches == [1, 8]
    assert cfg.models == ["yolox-nano", "yolox-s"]
    args = build_parser().parse_args(["--int8", "--only-reduced", "--images", "synthetic"])
    cfg = config_from_args(args)
    assert cfg.precisions == ["int8"] and cfg.images is None
    for argv, want in ((["--precisions", "int8", "--half", "--only-reduced"], ["int8", "fp16"]),
                       (["--precisions", "fp32,int8", "--half", "--only-reduced"], ["int8", "fp16"]),
                       (["--precisions", "fp16,int8", "--only-reduced"], ["fp16", "int8"])):
        assert config_from_args(build_parser().parse_args(argv)).precisions == want, argv


def test_cli_run_writes_table_csv_json_png(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # a known backend that cannot be imported: a row says so
    out = tmp_path / "bench"
    rc = main(["--models", "nano", "--backends", "torch,trt", "--iters", "3", "--warmup", "1",
               "--images", "synthetic", "--max-images", "2", "--img-size", "192", "--no-demo", "--quiet", "--output", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "YOLOX-Nano" in printed and "not available: the tensorrt backend needs" in printed
    for name in ("results.md", "results.csv", "results.json", "results.png"):
        assert (out / name).stat().st_size > 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["status"] for r in rows][0] == "ok"


def test_user_errors_exit_2(tmp_path, capsys):
    assert main(["--models", "yolox-q", "--output", str(tmp_path)]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["--images", str(tmp_path / "nope"), "--output", str(tmp_path)]) == 2
    assert "folder not found" in capsys.readouterr().err
    assert main(["--backends", "torch,not-a-runtime", "--output", str(tmp_path)]) == 2
    assert "unknown backend(s) not-a-runtime" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["--output", str(tmp_path / "afile")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    for argv, message in ((["--cache-dir", str(tmp_path / "afile")], "is a file, not a folder"),
                          (["--threads", "0"], "--threads must be >= 1"), (["--max-time", "-1"], "--max-time must be > 0"),
                          (["--only-reduced"], "give --half, --int8 or reduced --precisions"),
                          (["--backend-option", "openvino:hint=fastest"],
                           "hint option is one of latency, throughput, not 'fastest'"),
                          (["--backend-option", "onnxruntime:thread=2"],
                           "unknown option 'thread' for the onnxruntime backend"),
                          (["--backend-option", "onnx:threads=2"], "--backend-option for an unknown backend 'onnx'"),
                          (["--backend-option", "onnxruntime:threads=two"], "threads option is an integer >= 0"),
                          (["--device", "cdua"], "unknown device 'cdua'; the backends run on auto, cpu, "),
                          (["--device", "cuda:x"], "unknown device 'cuda:x'"),
                          (["--int8", "--calib-images", str(tmp_path / "empty")], "no images to calibrate INT8 on")):
        assert main([*argv, "--output", str(tmp_path / "out")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_matplotlib_is_said_before_any_timing(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["--models", "nano", "--backends", "torch", "--output", str(tmp_path / "b")]) == 2
    assert "--no-plot" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_an_option_for_a_backend_not_measured_is_said(caplog):
    config_from_args(build_parser().parse_args(["--backends", "onnxruntime", "--backend-option", "openvino:threads=1"]))
    assert "--backend-option for openvino, which this run does not measure (--backends onnxruntime)" in caplog.text


def test_backend_options():
    import pytest

    from yolox_deploy.cli.bench import parse_backend_options
    from yolox_deploy.errors import InputError

    opts = parse_backend_options(["openvino:hint=throughput", "ort:threads=1", "openvino:cache=false", "x:y=0.5"])
    assert opts == {"openvino": {"hint": "throughput", "cache": False}, "ort": {"threads": 1}, "x": {"y": 0.5}}
    cfg = config_from_args(build_parser().parse_args(["--backends", "onnxruntime", "--backend-option", "ort:threads=1"]))
    assert cfg.backend_options == {"onnxruntime": {"threads": 1}}
    for bad in ("openvino", "openvino:hint", ":a=b"):
        with pytest.raises(InputError):
            parse_backend_options([bad])


def test_failed_rows_make_a_non_zero_exit(tmp_path, capsys):
    """A row that fails (here: a weights folder holding a corrupt nano checkpoint) leaves the tables incomplete."""
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "yolox_nano.pth").write_bytes(b"\x80\x04not a checkpoint")
    out = tmp_path / "bench"
    rc = main(["--models", "nano", "--backends", "torch", "--iters", "2", "--warmup", "1", "--images", "synthetic",
               "--max-images", "1", "--img-size", "64", "--no-demo", "--no-plot", "--quiet", "--weights-dir",
               str(weights), "--output", str(out)])
    assert rc == 1 and "1 of 1 row(s) failed" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["rows"][0]["status"].startswith("failed")
