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


def test_a_checkpoint_that_does_not_load_is_refused_before_any_timing(tmp_path, capsys):
    """A damaged or misnamed checkpoint in --weights-dir failed every row of its model, after the others ran."""
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "yolox_nano.pth").write_bytes(b"\x80\x04not a checkpoint")
    out = tmp_path / "bench"
    rc = main(["--models", "nano", "--backends", "torch", "--iters", "2", "--images", "synthetic", "--img-size", "64",
               "--no-demo", "--no-plot", "--quiet", "--weights-dir", str(weights), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and f"{weights / 'yolox_nano.pth'} is not a PyTorch checkpoint" in err and "--weights-dir" in err
    assert not (out / "results.json").exists() and not (out / "results.partial.json").exists()


def _quick(out, backends="onnxruntime", *extra):
    return main(["--models", "nano", "--backends", backends, "--iters", "2", "--warmup", "0", "--images", "synthetic",
                 "--max-images", "1", "--img-size", "64", "--no-demo", "--no-plot", "--quiet", "--output", str(out),
                 *extra])


def test_failed_rows_make_a_non_zero_exit(tmp_path, capsys):
    """A row that fails (here: its cached export damaged after a first run) leaves the tables incomplete."""
    out = tmp_path / "bench"
    assert _quick(out) == 0
    [onnx] = (out / "cache").rglob("*.onnx")
    with open(onnx, "r+b") as f:
        f.truncate(1000)
    capsys.readouterr()
    assert _quick(out) == 1 and "1 of 1 row(s) failed" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["rows"][0]["status"].startswith("failed")


def test_a_table_without_a_measured_row_makes_a_non_zero_exit(tmp_path, capsys, monkeypatch):
    """Every row "not available" (the runtime is missing) exited 0: a script took the empty table for a result."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert _quick(tmp_path / "bench", "trt") == 1
    assert "no row could be measured here; their status column says why" in capsys.readouterr().err
    [row] = json.loads((tmp_path / "bench" / "results.json").read_text())["rows"]
    assert row["status"].startswith("not available")


def test_earlier_results_stay_until_a_run_replaces_them(tmp_path, monkeypatch):
    """A second run into the same folder emptied its tables at once (and removed results.png): an interrupted
    one lost the first run's rows. Rows so far go to results.partial.* now."""
    from yolox_deploy.bench import runner

    out = tmp_path / "bench"
    assert _quick(out, "torch") == 0
    first = (out / "results.json").read_text()
    (out / "results.png").write_bytes(b"an earlier plot")
    real = runner.run_isolated

    def interrupted(*args, **kwargs):  # Ctrl-C while the first row runs
        assert json.loads((out / "results.json").read_text()) == json.loads(first)  # untouched while running
        assert json.loads((out / "results.partial.json").read_text())["rows"] == []
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_isolated", interrupted)
    assert _quick(out, "torch") == 130
    assert (out / "results.json").read_text() == first and (out / "results.png").exists()
    monkeypatch.setattr(runner, "run_isolated", real)
    assert _quick(out, "torch") == 0  # a finished run replaces them, and its partial files go
    assert sorted(p.name for p in out.iterdir() if p.name != "cache") == ["results.csv", "results.json", "results.md"]


def test_files_it_did_not_write_are_refused(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.csv").write_text("precious")
    (out / "results.png").write_bytes(b"a photo")
    assert _quick(out, "torch") == 2
    assert "already holds results.csv, results.png, which yolox-bench did not write" in capsys.readouterr().err
    assert (out / "results.csv").read_text() == "precious" and (out / "results.png").exists()


def test_repeated_names_are_measured_once_and_units_are_named():
    cfg = config_from_args(build_parser().parse_args(["--models", "nano,yolox_nano,tiny", "--backends",
                                                      "torch,pytorch", "--batch", "1,1,2"]))
    assert (cfg.models, cfg.backends, cfg.batches) == (["yolox-nano", "yolox-tiny"], ["torch"], [1, 2])
    from yolox_deploy.bench.results import BenchRow

    header = BenchRow.CSV_FIELDS
    assert {"ap_pct", "ap50_pct", "published_ap_pct"} <= set(header) and "ap" not in header


