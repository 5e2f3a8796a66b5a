"""Reading clips (hoiguide.videoio): frame folders (no extra needed) and video files written
by the test with PyAV (the optional extra ``video``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from hoiguide.videoio import (
    DEFAULT_MAX_FRAMES,
    VideoError,
    is_frame_folder,
    is_video_file,
    read_frames,
    select_indices,
)


def gray(k: int, size=(24, 32)) -> np.ndarray:
    """A frame whose every pixel is 10 k (k < 25): its index can be read back."""
    return np.full((*size, 3), 10 * k, np.uint8)


def write_folder(folder: Path, n: int, name="frame{}.png", size=(24, 32)) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.fromarray(gray(k, size)).save(folder / name.format(k))
    return folder


def write_video(path: Path, frames, fps: int = 10, codec: str = "libx264") -> Path:
    """Frames into a video file with PyAV (lossless H.264, 4:4:4: grey levels survive)."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height = frames[0].shape[1], frames[0].shape[0]
        s.pix_fmt = "yuv444p" if codec == "libx264" else "yuv420p"
        if codec == "libx264":
            s.options = {"qp": "0"}
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def levels(frames) -> list[int]:
    return [int(round(float(f.mean()) / 10)) for f in frames]


# ====================================================================== frame folders
def test_folder_in_natural_order_with_every(tmp_path):
    """frame2 before frame10; every=3 keeps source frames 0, 3, 6, 9; times at 30 fps;
    hidden files and other files are ignored."""
    d = write_folder(tmp_path / "clip", 12)
    (d / ".hidden.png").write_bytes(b"junk")
    (d / "notes.txt").write_text("not a frame")
    frames, info = read_frames(d, every=3)
    assert levels(frames) == [0, 3, 6, 9]
    assert all(f.shape == (24, 32, 3) and f.dtype == np.uint8 for f in frames)
    assert info["files"] == ["frame0.png", "frame3.png", "frame6.png", "frame9.png"]
    assert info["frame_indices"] == [0, 3, 6, 9] and info["source_frames"] == 12
    assert info["kind"] == "frames" and (info["width"], info["height"]) == (32, 24)
    np.testing.assert_allclose(info["times"], [0.0, 0.1, 0.2, 0.3])
    assert info["subsampled"] is False and info["max_frames"] == DEFAULT_MAX_FRAMES
    frames, info = read_frames(d, fps=12.0)
    assert len(frames) == 12 and info["times"][1] == pytest.approx(1 / 12)


def test_folder_rgba_frames_follow_the_photo_rules(tmp_path):
    from PIL import Image

    d = tmp_path / "rgba"
    d.mkdir()
    for k in range(2):
        a = np.zeros((20, 20, 4), np.uint8)
        a[..., 3] = 0                                   # fully transparent -> white
        Image.fromarray(a).save(d / f"{k}.png")
    frames, info = read_frames(d)
    assert all((f == 255).all() for f in frames)
    assert "RGBA composited onto white" in info["conversions"]


def test_many_frames_are_subsampled_evenly_with_a_warning(tmp_path, caplog):
    d = write_folder(tmp_path / "long", 21, size=(16, 16))
    with caplog.at_level(logging.WARNING, logger="hoiguide.videoio"):
        frames, info = read_frames(d, max_frames=5)
    assert info["frame_indices"] == [0, 5, 10, 15, 20] and levels(frames) == [0, 5, 10, 15, 20]
    assert info["subsampled"] is True
    assert "21 frames after every=1 exceed max_frames=5: keeping 5 frames" in caplog.text
    # 10,000 source frames: the default cap, first and last kept, evenly spread
    idx, sub = select_indices(10_000)
    assert sub and len(idx) == DEFAULT_MAX_FRAMES and idx[0] == 0 and idx[-1] == 9_999
    steps = np.diff(idx)
    assert steps.max() - steps.min() <= 1
    idx, sub = select_indices(10_000, every=500)
    assert idx == list(range(0, 10_000, 500)) and not sub


def test_memory_of_the_kept_frames_is_warned_about(tmp_path, caplog, monkeypatch):
    import hoiguide.videoio as vio

    d = write_folder(tmp_path / "clip", 3, size=(16, 16))
    monkeypatch.setattr(vio, "MEMORY_WARNING_BYTES", 3 * 16 * 16 * 3 - 1)
    with caplog.at_level(logging.WARNING, logger="hoiguide.videoio"):
        read_frames(d, max_frames=2)
    assert "GiB of memory" not in caplog.text             # 2 frames: under the limit
    with caplog.at_level(logging.WARNING, logger="hoiguide.videoio"):
        read_frames(d)
    assert "keeping 3 frames of 16x16 takes 0.0 GiB of memory" in caplog.text


def test_folder_errors_name_the_input(tmp_path):
    from PIL import Image

    d = write_folder(tmp_path / "mixed", 2)
    Image.fromarray(gray(2, (30, 32))).save(d / "frame2.png")
    with pytest.raises(VideoError, match=r"frames of different sizes: frame0.png is 32x24 but "
                                         r"frame2.png is 32x30"):
        read_frames(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    with pytest.raises(VideoError, match="holds no image frames"):
        read_frames(empty)
    bad = write_folder(tmp_path / "bad", 1)
    (bad / "frame1.png").write_text("not a png")
    with pytest.raises(VideoError, match=r"frame frame1.png: cannot read"):
        read_frames(bad)
    with pytest.raises(FileNotFoundError, match="no such video file or frame folder"):
        read_frames(tmp_path / "missing.mp4")
    with pytest.raises(VideoError, match="is one image, not a clip"):
        read_frames(d / "frame0.png")
    for kw, msg in (({"every": 0}, "every: expected an integer >= 1, got 0"),
                    ({"max_frames": 0}, "max_frames: expected an integer >= 1"),
                    ({"every": 1.5}, "every: expected an integer"),
                    ({"fps": -1.0}, "fps: expected a positive number")):
        with pytest.raises(VideoError, match=msg):
            read_frames(d, **kw)


def test_what_counts_as_a_clip(tmp_path):
    d = write_folder(tmp_path / "frames", 2)
    assert is_frame_folder(d)
    assert not is_frame_folder(write_folder(tmp_path / "one", 1))
    (tmp_path / "scene").mkdir()
    write_folder(tmp_path / "scene", 3)
    (tmp_path / "scene" / "scene.json").write_text("{}")
    assert not is_frame_folder(tmp_path / "scene")          # a synthetic scene
    out = write_folder(tmp_path / "out", 3)
    (out / "result.json").write_text("{}")
    assert not is_frame_folder(out)                         # an output folder
    (tmp_path / "v.MP4").write_bytes(b"")
    assert is_video_file(tmp_path / "v.MP4") and not is_video_file(d / "frame0.png")


def test_video_without_pyav_names_the_extra(tmp_path, monkeypatch):
    p = tmp_path / "clip.mp4"
    p.write_bytes(b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "av", None)            # as if PyAV were not installed
    with pytest.raises(ImportError, match=r"pip install 'hoiguide\[video\]'"):
        read_frames(p)


# ====================================================================== video files
def test_video_is_decoded_every_nth_frame_with_timestamps(tmp_path):
    pytest.importorskip("av")
    p = write_video(tmp_path / "clip.mp4", [gray(k, (32, 48)) for k in range(12)], fps=10)
    frames, info = read_frames(p, every=2)
    assert levels(frames) == [0, 2, 4, 6, 8, 10]
    assert frames[0].shape == (32, 48, 3) and frames[0].dtype == np.uint8
    assert info["kind"] == "video" and info["fps"] == pytest.approx(10.0)
    assert info["source_frames"] == 12 and info["frame_indices"] == [0, 2, 4, 6, 8, 10]
    np.testing.assert_allclose(info["times"], [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], atol=1e-6)
    assert info["codec"] == "h264"


def test_phone_video_is_turned_upright(tmp_path):
    """A landscape-stored video with a display rotation of -90 degrees (a phone held
    upright): decoded frames are turned clockwise, the stored top rows become the right
    columns. (Writing a display matrix needs PyAV 18's set_display_rotation.)"""
    av = pytest.importorskip("av", minversion="18")
    f = np.zeros((16, 32, 3), np.uint8)
    f[:4] = 200                                          # the stored top rows
    p = tmp_path / "phone.mp4"
    with av.open(str(p), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt, s.options = 32, 16, "yuv444p", {"qp": "0"}
        s.set_display_rotation(-90)
        for pkt in [*s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")), *s.encode()]:
            c.mux(pkt)
    frames, info = read_frames(p)
    assert frames[0].shape == (32, 16, 3) and (info["width"], info["height"]) == (16, 32)
    assert frames[0][:, -4:].mean() > 190 and frames[0][:, :-4].mean() < 10
    assert info["conversions"] == ["display rotation -90 degrees applied"]


def test_display_rotation_turns_frames_counterclockwise():
    """The display matrix's angle is counter-clockwise; only quarter turns are applied."""
    from hoiguide.videoio import _upright

    a = np.arange(6, dtype=np.uint8).reshape(2, 3, 1).repeat(3, -1)   # [[0 1 2], [3 4 5]]
    notes: list[str] = []
    np.testing.assert_array_equal(_upright(a, 90, notes)[..., 0], [[2, 5], [1, 4], [0, 3]])
    np.testing.assert_array_equal(_upright(a, -90, notes)[..., 0], [[3, 0], [4, 1], [5, 2]])
    np.testing.assert_array_equal(_upright(a, 180, notes)[..., 0], [[5, 4, 3], [2, 1, 0]])
    assert _upright(a, 0, notes) is a and _upright(a, 45, notes) is a
    assert _upright(a, None, notes) is a
    assert notes == ["display rotation 90 degrees applied",
                     "display rotation -90 degrees applied",
                     "display rotation 180 degrees applied"]


def test_long_video_keeps_only_the_selected_frames(tmp_path):
    """A Matroska file (no frame count in its header: the packets are counted first) of 300
    frames with max_frames=4: four frames evenly spread, first and last included."""
    pytest.importorskip("av")
    p = write_video(tmp_path / "long.mkv", [gray(k % 25, (16, 16)) for k in range(300)],
                    fps=30)
    frames, info = read_frames(p, max_frames=4)
    assert info["source_frames"] == 300 and info["frame_indices"] == [0, 100, 199, 299]
    assert len(frames) == 4 and levels(frames) == [0, 0, 24, 24]
    assert info["subsampled"] is True
    np.testing.assert_allclose(info["times"], [0.0, 100 / 30, 199 / 30, 299 / 30], atol=2e-3)


def test_bad_videos_are_clear_errors(tmp_path):
    av = pytest.importorskip("av")
    junk = tmp_path / "junk.mp4"
    junk.write_text("this is not a video")
    with pytest.raises(VideoError, match=r"cannot read .*junk.mp4 as a video"):
        read_frames(junk)
    # zero-length: a container with a video stream and no frame
    for name, codec in (("empty.avi", "mpeg4"), ("empty.mp4", "libx264")):
        p = tmp_path / name
        c = av.open(str(p), "w")
        s = c.add_stream(codec, rate=10)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        c.start_encoding()
        c.close()
        with pytest.raises(VideoError, match="zero-length"):
            read_frames(p)
    with pytest.raises(VideoError, match="megapixels"):
        read_frames(write_video(tmp_path / "big.mp4", [gray(1, (64, 64))]), max_megapixels=0.001)
