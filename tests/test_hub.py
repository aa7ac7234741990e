"""Fetching the authors' released checkpoints, against a local server standing in for the release host."""

import http.server
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from yolox_deploy import Detector, build_model
from yolox_deploy.errors import CheckpointError, InputError
from yolox_deploy.hub import MIRROR_ENV, fetch_weights, released_variant, resolve_weights
from yolox_deploy.nn.checkpoint import read_checkpoint


class Release:
    """An HTTP server on 127.0.0.1 serving ``files`` (name -> bytes); ``short`` names files whose body stops
    halfway through the length announced; ``requests`` counts what was asked for."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.short: set[str] = set()
        self.requests: list[str] = []
        self.delay = 0.0  # seconds before each answer
        release = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                release.requests.append(name)
                time.sleep(release.delay)
                body = release.files.get(name)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:len(body) // 2] if name in release.short else body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/releases/download/0.1.1rc0"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def checkpoint_bytes(tmp_path, name="yolox-nano", num_classes=80) -> bytes:
    torch.manual_seed(0)
    path = tmp_path / f"{name}-{num_classes}.pth"
    torch.save({"model": build_model(name, num_classes).state_dict(), "start_epoch": 300}, path)
    return path.read_bytes()


@pytest.fixture
def release(tmp_path, monkeypatch):
    server = Release()
    monkeypatch.setenv(MIRROR_ENV, server.url)
    monkeypatch.setenv("YOLOX_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    yield server
    server.close()


def cached(tmp_path) -> list[str]:
    folder = tmp_path / "cache" / "weights"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_which_names_are_released_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, variant in (("yolox-s", "yolox-s"), ("yolox_s", "yolox-s"), ("YOLOX-Nano", "yolox-nano"),
                          ("yolox_darknet.pth", "yolox-darknet53"), ("yolox-darknet", "yolox-darknet53")):
        assert released_variant(name) == variant
    for name in ("models/yolox_s.pth", "yolox_s.onnx", "yolox-q", "my_model.pth", "", 5, None,
                 "s", "x", "tiny", "nano", "darknet", " yolox-s"):  # short names may be a missing file's
        assert released_variant(name) is None
    (tmp_path / "yolox_s.pth").write_bytes(b"mine")  # a file of that name here is the user's, never replaced
    assert released_variant("yolox_s.pth") is None and resolve_weights("yolox_s.pth") == "yolox_s.pth"


def test_fetched_once_checked_and_kept_in_the_cache(release, tmp_path):
    release.files["yolox_nano.pth"] = data = checkpoint_bytes(tmp_path)
    path = fetch_weights("yolox-nano", progress=False)
    assert path == tmp_path / "cache" / "weights" / "yolox_nano.pth" and path.read_bytes() == data
    assert resolve_weights("yolox_nano.pth") == path and release.requests == ["yolox_nano.pth"]  # not fetched again
    assert read_checkpoint("yolox-nano").source == path
    with Detector("yolox-nano", conf=0.0) as det:  # the same call as with a file at hand
        assert det.backend.info.name == "torch" and det.meta.model == "yolox-nano"
        [dets] = det(np.full((64, 80, 3), 114, np.uint8))
        assert dets.image_size == (64, 80)
    assert release.requests == ["yolox_nano.pth"] and cached(tmp_path) == ["yolox_nano.pth"]


def test_processes_sharing_the_cache_fetch_once(release, tmp_path):
    """Ranks of a distributed run (here: threads, each with its own lock on the folder) ask at once: one
    downloads, the others wait for it and take its file."""
    release.files["yolox_nano.pth"] = checkpoint_bytes(tmp_path)
    release.delay = 0.5
    paths, errors = [], []

    def fetch():
        try:
            paths.append(fetch_weights("yolox-nano", progress=False))
        except Exception as e:  # pragma: no cover - shown by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(paths)) == 1 and len(paths) == 3
    assert release.requests == ["yolox_nano.pth"] and cached(tmp_path) == ["yolox_nano.pth"]


def test_export_takes_a_released_name_and_writes_here(release, tmp_path):
    pytest.importorskip("onnx")
    from yolox_deploy.export import export

    release.files["yolox_nano.pth"] = checkpoint_bytes(tmp_path)
    result = export("yolox-nano", "onnx", img_size=64, verify=False)
    # written where the user is (the current folder), not into the weights cache
    assert result.meta.model == "yolox-nano" and result.path == tmp_path / "yolox_nano.onnx" and result.path.is_file()
    assert cached(tmp_path) == ["yolox_nano.pth"]


def test_a_released_name_of_another_variant_is_refused_before_it_is_fetched(release, tmp_path):
    pytest.importorskip("onnx")
    from yolox_deploy.export import export
    from yolox_deploy.nn.checkpoint import load_model
    from yolox_deploy.train import TrainConfig, Trainer

    release.files["yolox_s.pth"] = b"never asked for"
    calls = (lambda: Detector("yolox-s", model="yolox-nano"), lambda: load_model("yolox-s", "yolox-nano"),
             lambda: export("yolox_s.pth", "onnx", model="nano", verify=False),
             lambda: read_checkpoint("yolox-s", "yolox-nano"),
             lambda: Trainer(TrainConfig("yolox-nano", tmp_path / "data", tmp_path / "run", weights="yolox-s")))
    for call in calls:
        with pytest.raises(InputError, match="released yolox-s weights, which do not fit yolox-nano; give --model"):
            call()
    assert release.requests == [] and cached(tmp_path) == []


@pytest.mark.parametrize("case,error,message", [
    ("missing", InputError, "HTTP 404"),
    ("short", InputError, "stopped after|IncompleteRead"),
    ("not a checkpoint", CheckpointError, "did not give a checkpoint"),
    ("an ONNX model", CheckpointError, r"gave an ONNX model, not the yolox-nano checkpoint \(.pth\); nothing was kept$"),
    ("another variant", CheckpointError, "gave yolox-tiny weights with 80 classes, not the 80-class yolox-nano"),
    ("another class count", CheckpointError, "gave yolox-nano weights with 3 classes"),
])
def test_a_download_that_is_not_the_checkpoint_leaves_nothing(release, tmp_path, case, error, message):
    if case == "short":
        release.files["yolox_nano.pth"] = checkpoint_bytes(tmp_path)
        release.short.add("yolox_nano.pth")
    elif case == "not a checkpoint":
        release.files["yolox_nano.pth"] = b"<html>rate limited</html>"
    elif case == "an ONNX model":
        onnx = pytest.importorskip("onnx")
        from onnx import TensorProto, helper

        io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "xy"]
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", io[:1], io[1:])
        release.files["yolox_nano.pth"] = onnx.helper.make_model(graph).SerializeToString()
    elif case == "another variant":
        release.files["yolox_nano.pth"] = checkpoint_bytes(tmp_path, "yolox-tiny")
    elif case == "another class count":
        release.files["yolox_nano.pth"] = checkpoint_bytes(tmp_path, num_classes=3)
    with pytest.raises(error, match=message):
        fetch_weights("yolox-nano", progress=False)
    assert cached(tmp_path) == []  # no partial or wrong file under the final name, no temporary
    assert not (tmp_path / "cache").exists()  # nor the cache folders made for it


def test_a_folder_or_a_file_url_serves_as_the_mirror(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "yolox_nano.pth").write_bytes(checkpoint_bytes(tmp_path))
    for base in (str(mirror), mirror.as_uri()):
        monkeypatch.setenv(MIRROR_ENV, base)
        root = tmp_path / f"cache{len(base)}"
        assert fetch_weights("yolox-nano", root=root, progress=False).read_bytes() == (mirror / "yolox_nano.pth").read_bytes()
    monkeypatch.setenv(MIRROR_ENV, "://nowhere")
    with pytest.raises(InputError, match="not an address urllib reads"):
        fetch_weights("yolox-nano", root=tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()  # the cache folder made for it is gone too


def test_an_unreachable_host_is_one_sentence_with_what_to_do(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{port}")
    with pytest.raises(InputError, match=f"cannot fetch http://127.0.0.1:{port}/yolox_s.pth .*set \\${MIRROR_ENV}"):
        fetch_weights("yolox-s", root=tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()  # the cache folder made for it is gone too


def test_a_slow_host_times_out(tmp_path):
    import socket

    with socket.socket() as s:  # accepts the connection, never answers
        s.bind(("127.0.0.1", 0))
        s.listen()
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(InputError, match="cannot fetch .*timed out"):
            fetch_weights("yolox-s", root=tmp_path / "w", url=url, timeout=0.5, progress=False)
    assert not (tmp_path / "w").exists()  # the cache folder made for it is gone too


def test_what_a_killed_download_left_is_swept_by_the_next(release, tmp_path):
    """A killed process's temporary file stayed in the cache for good (up to the checkpoint's size each time);
    one written to a moment ago may be another download under way and is kept."""
    import os
    import time

    release.files["yolox_nano.pth"] = checkpoint_bytes(tmp_path)
    folder = tmp_path / "cache" / "weights"
    folder.mkdir(parents=True)
    stale, live = folder / ".yolox_nano.pth.abcd1234.part", folder / ".yolox_nano.pth.efgh5678.part"
    stale.write_bytes(b"half a download")
    live.write_bytes(b"a download under way")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fetch_weights("yolox-nano", progress=False)
    assert cached(tmp_path) == [live.name, "yolox_nano.pth"]


def test_failures_through_a_proxy_or_a_redirect_loop_are_one_line_naming_it(release, tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    import urllib.request

    release.files["yolox_nano.pth"] = checkpoint_bytes(tmp_path)
    monkeypatch.setenv("HTTP_PROXY", dead)  # the mirror is up; the proxy is not
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)  # urlopen's opener reads the proxies once, when made
    with pytest.raises(InputError, match=f"cannot fetch {release.url}/yolox_nano.pth through the proxy {dead}") as e:
        fetch_weights("yolox-nano", progress=False)
    assert "\n" not in str(e.value)
    monkeypatch.delenv("HTTP_PROXY")

    import urllib.error

    def loop(*args, **kwargs):
        raise urllib.error.HTTPError(release.url, 302, "The HTTP server returned a redirect error that would lead "
                                     "to an infinite loop.\nThe last 30x error message was:\nFound", {}, None)

    monkeypatch.setattr("urllib.request.urlopen", loop)
    with pytest.raises(InputError, match="HTTP 302 The HTTP server .* infinite loop. The last 30x error message "
                                         "was: Found; download it by hand") as e:
        fetch_weights("yolox-nano", progress=False)
    assert "\n" not in str(e.value)


def test_the_cache_is_one_folder_wherever_the_command_runs(tmp_path, monkeypatch):
    """A relative $YOLOX_DEPLOY_CACHE made a cache in every folder, "~/c" a folder named "~"; a relative
    $XDG_CACHE_HOME is ignored, as its specification says."""
    from yolox_deploy.utils.files import cache_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("YOLOX_DEPLOY_CACHE", "rel")
    assert cache_dir() == tmp_path / "rel"
    monkeypatch.setenv("YOLOX_DEPLOY_CACHE", "~/c")
    assert cache_dir() == tmp_path / "home" / "c"
    monkeypatch.delenv("YOLOX_DEPLOY_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "xdg")
    assert cache_dir() == tmp_path / "home" / ".cache" / "yolox-deploy"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "yolox-deploy"
    monkeypatch.setenv("YOLOX_DEPLOY_CACHE", "~no-such-user-here/c")  # expanduser raised a RuntimeError
    with pytest.raises(InputError, match="names the home folder of a user unknown here"):
        cache_dir()
    # a container's arbitrary uid: no $HOME and no passwd entry (Path.home() raised a RuntimeError)
    monkeypatch.delenv("YOLOX_DEPLOY_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: (_ for _ in ()).throw(RuntimeError("no home"))))
    with pytest.raises(InputError, match=r"there is no home folder; set \$YOLOX_DEPLOY_CACHE"):
        cache_dir()
    from yolox_deploy.export import export  # an export beside its weights needs no cache

    pytest.importorskip("onnx")
    weights = tmp_path / "w" / "nano.pth"
    weights.parent.mkdir()
    torch.save({"model": build_model("yolox-nano", 3).state_dict()}, weights)
    assert export(weights, "onnx", img_size=64, verify=False).path == tmp_path / "w" / "nano.onnx"


def test_no_progress_bar_where_stderr_is_not_a_terminal(release, tmp_path, capfd):
    """Its redraws went into logs (yolox-train --no-progress 2>&1 | cat showed five)."""
    release.files["yolox_nano.pth"] = checkpoint_bytes(tmp_path)
    fetch_weights("yolox-nano")
    assert capfd.readouterr().err == ""
