"""Atomic outputs: whole or absent, through symbolic links, and straight into pipes and devices."""

import errno
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from yolox_deploy.errors import WriteError
from yolox_deploy.utils.files import atomic_write, staging_folder, temp_prefix, write_text_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    dest = tmp_path / "out.txt"
    dest.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert dest.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def _disk_full():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a failed write names no file


def test_a_full_disk_names_the_file_the_user_asked_for(tmp_path):
    dest = tmp_path / "out.txt"
    dest.write_text("old")
    with pytest.raises(WriteError, match=f"could not write {dest}: No space left on device \\(no part of it "
                                         r"was left\)"):
        with atomic_write(dest):
            raise _disk_full()
    with pytest.raises(WriteError, match=f"could not write {dest}: Permission denied"):
        with atomic_write(dest) as tmp:  # an error on the temporary file is named after the destination too
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp))
    assert dest.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with pytest.raises(FileNotFoundError):  # an error about another file is left as it is
        with atomic_write(dest):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(tmp_path / "input.jpg"))
    with pytest.raises(TimeoutError):  # as is an OSError that is no refused write (a network timeout)
        with atomic_write(dest):
            raise TimeoutError("timed out")
    # a folder where no file can be made: named after the file asked for, not the temporary one
    with pytest.raises(WriteError, match=re.escape("could not write /proc/out.json: No such file or directory")):
        with atomic_write("/proc/out.json"):
            pytest.fail("the block runs only when the temporary file exists")


def test_a_full_disk_in_a_staging_folder_names_the_target_and_leaves_nothing(tmp_path):
    out = tmp_path / "runs" / "detect"
    with pytest.raises(WriteError, match=f"could not write {out}: No space left"):
        with staging_folder(out) as stage:
            (stage / "a.json").write_text("{}")
            raise _disk_full()
    with pytest.raises(WriteError, match="could not write model.onnx: No space left"):
        with staging_folder(out, target="model.onnx"):
            raise _disk_full()
    assert list(tmp_path.iterdir()) == []


def test_a_refused_write_in_a_relative_staging_folder_names_the_target(tmp_path, monkeypatch):
    """A nested write named its file by its real path and the staging folder was relative: the error named the
    hidden temporary file (could not write /abs/small/.a.onnx.x.part/a.onnx)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WriteError, match=r"^could not write small/a\.onnx: Permission denied \(no part of it was left\)$"):
        with staging_folder("small", target="small/a.onnx") as stage:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.path.realpath(stage / "a.onnx"))
    assert list(tmp_path.iterdir()) == []


def test_a_symlink_is_followed_and_kept(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_text_atomic(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_pipe_is_written_directly_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    write_text_atomic(fifo, "through the pipe")
    reader.join(timeout=10)
    assert got == ["through the pipe"]
    assert fifo.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


@pytest.mark.skipif(not Path("/dev/stdout").exists(), reason="no /dev/stdout on this system")
def test_dev_stdout_is_written_as_a_stream_into_a_pipe_or_a_file(tmp_path):
    """``--json /dev/stdout`` piped on, or with stdout redirected to a file: the text reaches it either way."""
    code = ("from yolox_deploy.cli.common import json_output; from yolox_deploy.utils.files import write_text_atomic; "
            "print('before'); write_text_atomic(json_output('/dev/stdout'), '{\"ap\": 1}'); print('after')")
    expected = 'before\n{"ap": 1}after\n'  # in order: a second handle on a redirected stdout wrote over the rest
    piped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and piped.stdout == expected, piped.stderr
    out = tmp_path / "out.txt"
    with out.open("w") as f:
        redirected = subprocess.run([sys.executable, "-c", code], stdout=f, stderr=subprocess.PIPE, text=True,
                                    timeout=120)
    assert redirected.returncode == 0 and out.read_text() == expected, redirected.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_replacement_interrupted_between_its_renames_puts_the_old_entry_back(tmp_path, monkeypatch):
    from yolox_deploy.utils.files import move_into

    out = tmp_path / "out"
    out.mkdir()
    (out / "model_openvino").mkdir()
    (out / "model_openvino" / "old.xml").write_text("the old model")
    staged = tmp_path / "staging" / "model_openvino"
    staged.mkdir(parents=True)
    (staged / "new.xml").write_text("the new model")
    real_replace, calls = os.replace, []

    def interrupted(src, dst):
        calls.append(Path(dst).name)
        if len(calls) == 2:  # the old one has stepped aside, the new one is not in yet
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        move_into([staged], out)
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(p.name for p in out.iterdir()) == ["model_openvino"]
    assert (out / "model_openvino" / "old.xml").read_text() == "the old model"
    assert move_into([staged], out) == [out / "model_openvino"]
    assert sorted(p.name for p in out.iterdir()) == ["model_openvino"]
    assert (out / "model_openvino" / "new.xml").read_text() == "the new model"


def test_ctrl_c_while_results_move_into_place_waits_until_all_have(tmp_path, monkeypatch):
    import signal

    from yolox_deploy.utils.files import move_into

    staged = tmp_path / "staging"
    staged.mkdir()
    for name in ("a.json", "b.json", "c.json"):
        (staged / name).write_text(name)
    out = tmp_path / "out"
    out.mkdir()
    real_replace, calls = os.replace, []

    def interrupted(src, dst):
        calls.append(dst)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        move_into(sorted(staged.iterdir()), out)
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "b.json", "c.json"]  # whole, then interrupted
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_held_back_is_delivered_however_the_block_ends():
    import signal

    from yolox_deploy.utils.signals import deferred

    with pytest.raises(KeyboardInterrupt):
        with deferred():
            os.kill(os.getpid(), signal.SIGINT)
            raise OSError("a failed rename")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_insisting_second_ctrl_c_is_not_held():
    """A conversion that swallows the first Ctrl-C is held to its end; pressing again tries to stop it at once."""
    import signal

    from yolox_deploy.utils.signals import deferred

    steps = []
    with pytest.raises(KeyboardInterrupt):
        with deferred(insist=True):
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("held")
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("not reached")
    assert steps == ["held"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        with deferred():  # without insist, both wait for the end of the block
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("both held")
    assert steps[-1] == "both held"


def test_a_name_of_up_to_255_bytes_can_be_written(tmp_path):
    """The temporary file beside it took the whole name: names of 241-255 bytes were refused as too long."""
    for name in ("x" * 250 + ".json", "é" * 125 + ".txt"):  # 255 and 254 bytes
        write_text_atomic(tmp_path / name, "{}")
        assert (tmp_path / name).read_text() == "{}"
    with staging_folder(tmp_path, prefix=temp_prefix("y" * 255)) as staging:
        assert len(staging.name.encode()) <= 255
    assert sorted(len(p.name.encode()) for p in tmp_path.iterdir()) == [254, 255]


def test_staging_folders_a_killed_run_left_are_removed_once_untouched_for_a_day(tmp_path, tiny_random_model):
    """A SIGKILLed export (or detect run) left its .NAME.*.part folder for ever."""
    import time

    from yolox_deploy.export import export

    old, fresh, busy = (tmp_path / f".m.onnx.{k}.part" for k in ("old", "fresh", "busy"))
    for folder in (old, fresh, busy):
        folder.mkdir()
        (folder / "m.onnx").write_bytes(b"half")
    day_ago = time.time() - 25 * 3600
    for p in (old, old / "m.onnx", busy):  # busy: an old folder whose file is still being written
        os.utime(p, (day_ago, day_ago))
    export(tiny_random_model, "onnx", tmp_path / "m.onnx", img_size=64, verify=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [busy.name, fresh.name, "m.onnx"]


def test_a_name_with_glob_characters_removes_only_its_own_stale_staging_folders(tmp_path, tiny_random_model):
    """The name went into the glob unescaped: an export to m[1].onnx kept its own killed run's folder for ever
    and removed that of m1.onnx."""
    import time

    from yolox_deploy.export import export

    own, other = tmp_path / ".m[1].onnx.old.part", tmp_path / ".m1.onnx.old.part"
    day_ago = time.time() - 25 * 3600
    for folder in (own, other):
        folder.mkdir()
        (folder / "m.onnx").write_bytes(b"half")
        for p in (folder / "m.onnx", folder):
            os.utime(p, (day_ago, day_ago))
    export(tiny_random_model, "onnx", tmp_path / "m[1].onnx", img_size=64, verify=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "m[1].onnx"]


def test_a_link_to_nothing_on_the_way_to_an_output_is_refused_before_any_work(tmp_path):
    """A folder cannot be made through it: yolox-detect --output LINK (or LINK/sub, or yolox-export --output
    LINK/m.onnx) failed after the model had loaded, with "cannot write to LINK: File exists"."""
    from yolox_deploy.errors import InputError
    from yolox_deploy.utils.files import check_creatable, check_folder_writable

    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    message = f"{re.escape(str(link))} is a symbolic link to {re.escape(str(tmp_path / 'gone'))}, which does not exist"
    for check, path in ((check_folder_writable, link), (check_folder_writable, link / "sub"),
                        (check_creatable, link / "m.onnx")):
        with pytest.raises(InputError, match=message):
            check(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link"]
