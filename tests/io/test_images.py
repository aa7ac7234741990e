from pathlib import Path

import cv2
import numpy as np
import pytest

from yolox_deploy.errors import InputError
from yolox_deploy.io.images import camera_index, ensure_bgr, is_video, iter_source, read_image


def test_read_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "missing.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_image(tmp_path / "empty.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(InputError, match="not a readable image"):
        read_image(tmp_path / "bad.jpg")
    with pytest.raises(InputError, match="folder"):
        read_image(tmp_path)


def test_truncated_jpeg_is_an_error_or_an_image(tmp_path, rng):
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    (tmp_path / "cut.jpg").write_bytes(buf.tobytes()[:100])
    try:
        out = read_image(tmp_path / "cut.jpg")
    except InputError:
        return
    assert out.shape == (64, 64, 3)


def test_conversions(tmp_path, rng):
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    assert ensure_bgr(gray).shape == (20, 30, 3)
    assert ensure_bgr(gray[..., None]).shape == (20, 30, 3)
    bgra = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    np.testing.assert_array_equal(ensure_bgr(bgra), bgra[..., :3])
    deep = (rng.integers(0, 65536, (5, 5, 3))).astype(np.uint16)
    np.testing.assert_array_equal(ensure_bgr(deep), (deep >> 8).astype(np.uint8))
    assert ensure_bgr(np.full((4, 4, 3), 0.5, np.float32)).max() == 128
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    for unit in (img.astype(np.float32) / 255, img / 255.0, (img / 255.0).astype(np.float16)):
        np.testing.assert_array_equal(ensure_bgr(unit), img)  # rounded, not truncated (0.999... -> 255)
    np.testing.assert_array_equal(ensure_bgr(img.astype(np.float32)), img)
    overshoot = img / 255.0
    overshoot[0, 0] = (1.07, -0.05, 0.5)  # what a cubic resize of a 0-1 image gives: still 0-1, clipped
    np.testing.assert_array_equal(ensure_bgr(overshoot)[1:], img[1:])
    assert ensure_bgr(overshoot)[0, 0].tolist() == [255, 0, 128]
    np.testing.assert_array_equal(ensure_bgr(img.astype(np.uint16)), img)  # an 8-bit image cast to uint16
    for bits in (10, 12):  # a sensor frame in uint16 keeps its brightness (>> 8 made a 10-bit one black)
        frame = img.astype(np.uint16) << (bits - 8)
        frame[0, 0, 0] = 2 ** bits - 1
        np.testing.assert_array_equal(ensure_bgr(frame)[1:], img[1:])
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    assert read_image(tmp_path / "g.png").shape == (20, 30, 3)
    assert read_image(tmp_path / "a.png").shape == (20, 30, 3)


def test_big_endian_uint16_and_float_images_are_converted_as_native_ones(rng):
    """A uint16 or float array in big-endian byte order (FITS, a raw sensor dump) is the same image: it was
    refused as an unsupported pixel type."""
    deep = rng.integers(0, 4096, (5, 6, 3)).astype(np.uint16)
    unit = rng.random((5, 6), dtype=np.float32)
    for image in (deep, unit, unit.astype(np.float64)):
        np.testing.assert_array_equal(ensure_bgr(image.astype(image.dtype.newbyteorder(">"))), ensure_bgr(image))


def test_an_annotation_entry_of_no_size_is_named_not_a_division_by_zero(tmp_path, rng):
    from yolox_deploy.io.images import check_annotated_size

    path = tmp_path / "a.png"
    cv2.imwrite(str(path), rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    for entry in ((20, 0), (0, 30), (0, 0)):
        with pytest.raises(InputError, match="the annotation file says .*; the file or its width/height entry is "
                                             "not the one annotated"):
            check_annotated_size(read_image(path), path, entry)


@pytest.mark.parametrize("bad", [np.zeros((0, 0, 3), np.uint8), np.zeros((0, 5), np.uint8), np.zeros((5, 5, 2), np.uint8),
                                 np.zeros((5,), np.uint8), np.zeros((5, 5, 3), np.int32), "not an array"])
def test_unusable_arrays(bad):
    with pytest.raises(InputError):
        ensure_bgr(bad)


def test_an_empty_file_in_a_folder_is_named_before_its_first_frame(tmp_path, rng):
    """It failed the run after every image before it had gone through."""
    cv2.imwrite(str(tmp_path / "a.jpg"), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    (tmp_path / "zz_empty.jpg").write_bytes(b"")
    with pytest.raises(InputError, match="zz_empty.jpg is empty"):
        next(iter_source(tmp_path))


def test_iter_folder_and_video(tmp_path, rng):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("b.jpg", "a.png"):
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("x")
    assert [f.name for f in iter_source(folder)] == ["a", "b"]
    cv2.imwrite(str(folder / "b.png"), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    assert [f.name for f in iter_source(folder)] == ["a", "b.jpg", "b.png"]  # shared stems: full file names
    cv2.imwrite(str(folder / "b.jpg.png"), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    # its stem is b.jpg's name: every frame keeps a name of its own
    assert [f.name for f in iter_source(folder)] == ["a", "b.jpg", "b.jpg.png", "b.png"]
    ok, gif = cv2.imencode(".gif", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    if ok:  # an OpenCV built with GIF: read in a folder as it is read alone (it was left out of folders)
        (folder / "c.gif").write_bytes(gif.tobytes())
        assert [f.name for f in iter_source(folder)][-1] == "c" and read_image(folder / "c.gif").shape == (16, 16, 3)

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for i in range(5):
        writer.write(np.full((24, 32, 3), i * 40, np.uint8))
    writer.release()
    frames = list(iter_source(video))
    assert [f.name for f in frames] == [f"clip_{i:06d}" for i in range(5)]
    assert frames[0].image.shape == (24, 32, 3)


def _gray_ramp_video(path, frames):
    """An MJPG video of ``frames`` 64x48 frames, frame i a flat gray of level 20 i."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), i * 20, np.uint8))
    writer.release()
    return path


def test_a_truncated_video_is_read_as_far_as_it_goes_with_a_warning(tmp_path, caplog):
    video = _gray_ramp_video(tmp_path / "clip.avi", 10)
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[:len(data) * 9 // 10])
    with caplog.at_level("WARNING"):
        assert len(list(iter_source(video))) == 10 and not caplog.records
        n = len(list(iter_source(cut)))
    assert 0 < n < 10
    assert f"{cut}: read {n} of the 10 frames its header announces" in caplog.text  # the path, not only its stem


def test_a_damaged_frame_is_skipped_and_the_video_read_on(tmp_path, caplog):
    """The first frame that did not decode ended the video (a damaged first frame refused it whole), though
    the frames after it read."""
    data = _gray_ramp_video(tmp_path / "clip.avi", 12).read_bytes()
    starts = [k for k in range(len(data) - 1) if data[k:k + 2] == b"\xff\xd8"]  # each frame's JPEG
    assert len(starts) == 12
    for bad in (0, 5):
        damaged = bytearray(data)
        damaged[starts[bad] + 2:starts[bad] + 202] = bytes(200)
        path = tmp_path / f"damaged{bad}.avi"
        path.write_bytes(bytes(damaged))
        caplog.clear()
        with caplog.at_level("WARNING"):
            frames = list(iter_source(path))
        assert [f.index for f in frames] == [k for k in range(12) if k != bad]
        assert [round(f.image.mean() / 20) for f in frames] == [f.index for f in frames]  # each at its place
        assert frames[-1].name == f"damaged{bad}_000011"
        assert f"{path}: 1 frame(s) could not be decoded and were skipped (first: frame {bad})" in caplog.text
        assert "of the 12 frames" in caplog.text  # read 11 of them


def test_a_header_announcing_more_frames_than_there_are_does_not_keep_the_reader_going(tmp_path, monkeypatch):
    """A damaged frame is skipped; a header announcing two billion frames kept the reader retrying past the end
    (and a list of the failed positions growing) for good."""
    from yolox_deploy.io import images

    class Endless:  # ten frames, then nothing, under a header that announces 2**31 - 1
        def __init__(self):
            self.reads = 0

        def get(self, prop):
            return 2 ** 31 - 1 if prop == cv2.CAP_PROP_FRAME_COUNT else 10.0

        def read(self):
            self.reads += 1
            return (True, np.zeros((8, 8, 3), np.uint8)) if self.reads <= 10 else (False, None)

        def release(self):
            pass

    capture = Endless()
    assert len(list(images._iter_video(capture, "clip", "clip.avi"))) == 10
    assert capture.reads == 10 + images.MAX_BAD_FRAMES_IN_A_ROW + 1


def test_source_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        list(iter_source(tmp_path / "nope"))
    with pytest.raises(InputError, match="no images"):
        list(iter_source(tmp_path))
    with pytest.raises(InputError, match="the source is empty"):  # not the current folder
        list(iter_source(" "))


@pytest.mark.parametrize("name", ["pipe.mp4", "pipe.jpg"])
def test_a_named_pipe_is_refused_before_it_is_opened(tmp_path, name):
    """A pipe named as a video blocked in OpenCV's reader, where neither Ctrl-C nor SIGTERM reached it; one
    named as an image was "empty (0 bytes)"."""
    import os

    fifo = tmp_path / name
    os.mkfifo(fifo)
    for read in (lambda: list(iter_source(fifo)), lambda: read_image(fifo)):
        with pytest.raises(InputError, match=f"{name} is a named pipe, not an image or video file"):
            read()


def test_a_dangling_link_in_a_folder_is_said_to_be_gone(tmp_path, rng):
    """It was left out of the run without a word; then named only after every image before it had gone
    through: now before the first frame."""
    cv2.imwrite(str(tmp_path / "a.png"), rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "moved" / "gone.jpg")
    frames = iter_source(tmp_path)
    with pytest.raises(InputError, match=r"image not found: .*gone.jpg \(a link to .*moved/gone.jpg, which does not "
                                         r"exist\)"):
        next(frames)


def test_a_folder_named_by_digits_is_a_folder_not_a_camera(tmp_path, monkeypatch, rng):
    monkeypatch.chdir(tmp_path)
    assert camera_index("2024") == 2024 and camera_index(0) == 0
    Path("2024").mkdir()
    cv2.imwrite("2024/a.jpg", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    assert camera_index("2024") is None
    assert [f.name for f in iter_source("2024")] == ["a"]


def _png_header_only(width, height):
    """A PNG whose (valid) IHDR announces ``width`` x ``height`` pixels, followed by no image data."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_an_image_announcing_too_many_pixels_is_refused(tmp_path):
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header_only(40000, 40000))
    with pytest.raises(InputError, match="huge.png is not a readable image"):
        read_image(huge)


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """``jpeg`` with an APP1 Exif segment holding only the Orientation tag (little-endian TIFF)."""
    import struct

    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_exif_orientation_is_applied_as_cv2_imread_does(tmp_path, rng):
    """A phone picture stored sideways with an orientation tag is read upright, as the authors' cv2.imread."""
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_with_exif_orientation(buf.tobytes(), 6))  # 6: rotate 90 degrees clockwise to view
    assert cv2.imread(str(path)).shape == (30, 20, 3)
    np.testing.assert_array_equal(read_image(path), cv2.imread(str(path)))


def test_what_is_read_as_a_video(tmp_path):
    """Cameras and files with a video suffix, MPEG-TS, FLV and 3GP among them; a folder named like a video is a
    folder of images. An image reader given a video or a folder says what reads it."""
    clip = tmp_path / "clip.flv"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"FLV1"), 25, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), i * 60, np.uint8))
    writer.release()
    assert is_video(clip) and is_video("0") and is_video(3) and is_video("a.TS") and is_video("b.3gp")
    assert [f.index for f in iter_source(clip)] == [0, 1, 2]
    shots = tmp_path / "shots.mp4"
    shots.mkdir()
    cv2.imwrite(str(shots / "a.png"), np.zeros((8, 8, 3), np.uint8))
    assert not is_video(shots) and [f.path for f in iter_source(shots)] == [shots / "a.png"]
    with pytest.raises(InputError, match=r"is a video, not an image: Detector.stream\(\)"):
        read_image(clip)
    with pytest.raises(InputError, match=r"is a folder, not an image \(Detector.stream\(\)"):
        read_image(shots)


def test_an_image_it_may_not_read_is_an_input_error(tmp_path, monkeypatch):
    """Permissions fail as one InputError, which calibration and folder readers skip like a corrupt file."""
    path = tmp_path / "locked.jpg"
    path.write_bytes(b"\xff\xd8 not really")

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(np, "fromfile", denied)
    with pytest.raises(InputError, match=f"cannot read {path}: Permission denied"):
        read_image(path)


def test_a_folder_that_cannot_be_listed_is_one_message(tmp_path):
    from yolox_deploy.io.images import list_images

    not_a_folder = tmp_path / "file.jpg"
    not_a_folder.write_bytes(b"x")
    with pytest.raises(InputError, match=f"cannot read folder {not_a_folder}: Not a directory"):
        list_images(not_a_folder)


def test_a_video_without_a_video_suffix_is_said_to_be_one(tmp_path):
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (64, 48))
    for _ in range(2):
        writer.write(np.full((48, 64, 3), 90, np.uint8))
    writer.release()
    bare = clip.rename(tmp_path / "clip")
    with pytest.raises(InputError, match="no image but reads as a video: give it a video suffix"):
        list(iter_source(bare))
    (tmp_path / "notes").write_text("not an image")  # neither: the image message
    with pytest.raises(InputError, match="not a readable image"):
        list(iter_source(tmp_path / "notes"))


def test_an_address_is_not_taken_for_a_missing_file():
    with pytest.raises(InputError, match=r"^https://example.com/bus.jpg: images are read from files, not fetched"):
        read_image("https://example.com/bus.jpg")


def test_an_address_keeps_its_secrets_out_of_names_and_messages():
    from yolox_deploy.io.images import check_source, shown_url, stream_stem

    assert shown_url("rtsp://admin:p@ss@10.0.0.5/live") == "rtsp://admin:***@10.0.0.5/live"  # FFmpeg's last @
    assert shown_url("http://cam.local/video.cgi?user=admin&pwd=secret&x=1") == \
        "http://cam.local/video.cgi?user=admin&pwd=***&x=1"
    assert shown_url("rtsp://cam/live?token=abc") == "rtsp://cam/live?token=***"
    assert stream_stem("http://u:pw@cam.local:8080/video.cgi?pwd=secret") == "cam.local_8080_video.cgi"
    with pytest.raises(InputError, match="images are read from files, not fetched"):  # an image, not a stream
        check_source("http://u:pw@cam.local/snapshot.jpg?pwd=secret")
