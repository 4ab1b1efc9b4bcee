"""Tests for ml.serving.video: every input is made here with the real ffmpeg (lavfi testsrc / sine)."""
import shutil
import subprocess

import numpy as np
import pytest

from ml.serving import video
from ml.serving.video import VideoError, is_video_container, probe_video, sample_frames

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg on PATH")

FPS = 25
PATTERN = f"testsrc2=size=64x64:rate={FPS}:duration=2"  # noisier than testsrc: compresses less, cuts land mid-data
# Luma 16 + 2n in frame n (lossless H.264), so a decoded frame tells which frame it is.
INDEXED = f"nullsrc=s=64x64:r={FPS}:d=3,geq=lum='16+2*N':cb=128:cr=128"


def make(path, *args, video=f"testsrc=size=64x64:rate={FPS}:duration=2", audio=None):
    """Encode lavfi sources into ``path`` with the given output options."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    if video:
        cmd += ["-f", "lavfi", "-i", video]
    if audio:
        cmd += ["-f", "lavfi", "-i", audio]
    subprocess.run([*cmd, *args, str(path)], check=True)
    return path


def truncate(src, dst, fraction=0.5):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def frame_index(frames: np.ndarray, path) -> np.ndarray:
    """Frame number of each frame of the INDEXED video at ``path``: the frame whose grey level is closest."""
    decode = ["ffmpeg", "-v", "error", "-i", str(path), "-vf", "scale=8:8"]
    raw = subprocess.run([*decode, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    levels = np.frombuffer(raw, np.uint8).reshape(-1, 8 * 8 * 3).mean(axis=1)
    assert len(np.unique(levels)) == len(levels)  # every frame tells itself apart
    return np.abs(frames.reshape(len(frames), -1).mean(axis=1)[:, None] - levels[None]).argmin(axis=1)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    sine = "sine=frequency=440:duration=2"
    return {
        "mp4": make(d / "a.mp4", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", audio=sine),
        "mov": make(d / "a.mov", "-c:v", "libx264", "-pix_fmt", "yuv420p"),
        "webm": make(d / "a.webm", "-c:v", "libvpx-vp9", "-deadline", "realtime", "-c:a", "libopus", audio=sine),
        "mkv": make(d / "a.mkv", "-c:v", "libvpx", "-deadline", "realtime"),
        "indexed": make(d / "indexed.mp4", "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p", video=INDEXED),
    }


@pytest.mark.parametrize(
    "name, format_name, codec, has_audio",
    [
        ("mp4", "mov,mp4,m4a,3gp,3g2,mj2", "h264", True),
        ("mov", "mov,mp4,m4a,3gp,3g2,mj2", "h264", False),
        ("webm", "matroska,webm", "vp9", True),
        ("mkv", "matroska,webm", "vp8", False),
    ],
)
def test_probe_accepts_supported_containers(videos, name, format_name, codec, has_audio):
    info = probe_video(videos[name], max_bytes=10_000_000, max_duration=60)
    assert info.format_name == format_name and is_video_container(info.format_name)
    assert (info.codec, info.has_audio) == (codec, has_audio)
    assert (info.width, info.height) == (64, 64)
    assert info.duration == pytest.approx(2.0, abs=0.05)
    assert info.fps == pytest.approx(FPS, rel=0.05)
    assert info.frame_count == 2 * FPS
    assert info.keyframe_count >= 1
    assert info.size_bytes == videos[name].stat().st_size


@pytest.mark.parametrize("name", ["mp4", "mov", "webm", "mkv"])
def test_sample_frames_shapes_and_timestamps(videos, name):
    sampled = sample_frames(videos[name], num_frames=8, size=32)
    assert sampled.frames.shape == (8, 32, 32, 3) and sampled.frames.dtype == np.uint8
    ts = sampled.timestamps
    assert len(ts) == 8 and all(0 < a < b < 2.0 for a, b in zip(ts, ts[1:]))
    assert ts[0] == pytest.approx(2.0 / 16)  # centre of the first of 8 segments
    # testsrc moves over time: consecutive samples are different pictures.
    diffs = np.abs(np.diff(sampled.frames.astype(int), axis=0)).mean(axis=(1, 2, 3))
    assert (diffs > 1).all()


@pytest.mark.parametrize("seek", [True, False], ids=["seek", "one-pass"])
def test_both_strategies_take_first_frame_at_or_after_each_centre(videos, monkeypatch, seek):
    monkeypatch.setattr(video, "_seeking_is_cheaper", lambda info, num_frames: seek)
    sampled = sample_frames(videos["indexed"], num_frames=8, size=16)
    expected = [int(np.ceil(t * FPS)) for t in sampled.timestamps]
    assert frame_index(sampled.frames, videos["indexed"]).tolist() == expected


def test_more_frames_than_the_video_has_repeats_frames(videos):
    sampled = sample_frames(videos["indexed"], num_frames=100, size=8)  # 75 frames in the video
    indices = frame_index(sampled.frames, videos["indexed"])
    assert len(indices) == 100 and (np.diff(indices) >= 0).all()
    assert len(set(indices.tolist())) < 100  # some repeated
    assert indices[0] <= 1 and indices[-1] == 74  # spans the whole video


def test_center_crop_keeps_the_middle_of_a_wide_video(tmp_path):
    # 128x64: red left quarter, blue right quarter, green middle square.
    wide = "color=green:s=128x64:r=25:d=1,drawbox=0:0:32:64:red:fill,drawbox=96:0:32:64:blue:fill"
    path = make(tmp_path / "wide.mp4", "-c:v", "libx264", "-pix_fmt", "yuv420p", video=wide)
    frames = sample_frames(path, num_frames=2, size=16).frames.astype(int)
    red, green, blue = frames[..., 0].mean(), frames[..., 1].mean(), frames[..., 2].mean()
    assert green > 100 and red < 30 and blue < 30


def test_rotated_video_reports_displayed_size(tmp_path):
    src = make(tmp_path / "wide.mp4", "-c:v", "libx264", video="testsrc=size=96x64:rate=25:duration=1")
    path = tmp_path / "rotated.mp4"
    rotate = ["-c", "copy", "-metadata:s:v:0", "rotate=90"]  # how ffmpeg 5 writes the display matrix phones use
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(src), *rotate, str(path)], check=True)
    info = probe_video(path)
    assert (info.width, info.height) == (64, 96)
    assert sample_frames(path, 4, 24, info).frames.shape == (4, 24, 24, 3)


def test_webm_without_duration_in_header(tmp_path):
    # What a browser's MediaRecorder produces: streamed WebM, no duration, no cues.
    path = tmp_path / "streamed.webm"
    with open(path, "wb") as f:
        cmd = ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=25:duration=2"]
        subprocess.run([*cmd, "-c:v", "libvpx", "-deadline", "realtime", "-f", "webm", "pipe:1"], stdout=f, check=True)
    info = probe_video(path)
    assert info.duration == pytest.approx(2.0, abs=0.05)
    assert sample_frames(path, 4, 16, info).frames.shape == (4, 16, 16, 3)


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_audio_longer_than_video_is_not_taken_for_truncation(tmp_path, ext):
    path = make(tmp_path / f"long_audio.{ext}", "-c:v", "libx264", "-c:a", "aac", audio="sine=duration=3")
    info = probe_video(path)
    assert info.duration == pytest.approx(2.0, abs=0.05)


# --- inputs that must be refused ---------------------------------------------------------------


def expect_error(path, *fragments, **limits):
    with pytest.raises(VideoError) as caught:
        probe_video(path, **limits)
    message = str(caught.value)
    assert all(fragment in message for fragment in fragments), message
    return message


def test_empty_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    expect_error(tmp_path / "empty.mp4", "file is empty")


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.mp4", "not found")


def test_text_file_named_mp4(tmp_path):
    (tmp_path / "notes.mp4").write_text("these are not moving pictures\n" * 20)
    expect_error(tmp_path / "notes.mp4", "not a video", "not recognised")


def test_mp4_without_moov_atom(videos, tmp_path):
    # ffmpeg writes the moov atom at the end: cutting the file loses it.
    expect_error(truncate(videos["mp4"], tmp_path / "cut.mp4"), "truncated or corrupt", "moov atom not found")


@pytest.mark.parametrize("ext", ["mp4", "webm"])
def test_data_cut_off_after_a_valid_header(tmp_path, ext):
    # mp4 with its moov atom in front, so the header survives the cut; webm always has it in front.
    options = ["-c:v", "libx264", "-movflags", "+faststart"] if ext == "mp4" else ["-c:v", "libvpx"]
    full = make(tmp_path / f"full.{ext}", *options, video=PATTERN)
    expect_error(truncate(full, tmp_path / f"cut.{ext}"), "truncated or corrupt")


@pytest.mark.parametrize("name", ["audio.m4a", "audio.mp3"])
def test_audio_only(tmp_path, name):
    path = make(tmp_path / name, video=None, audio="sine=duration=1")
    expect_error(path, "not a video", "no video stream")


@pytest.mark.parametrize("image, saved_as", [("png", "png"), ("png", "mp4"), ("jpg", "jpg"), ("jpg", "mp4")])
def test_still_image(tmp_path, image, saved_as):
    src = make(tmp_path / f"still.{image}", "-frames:v", "1", video="testsrc=size=64x64")
    path = tmp_path / f"upload.{saved_as}"
    path.write_bytes(src.read_bytes())
    expect_error(path, "not a video", "still image")


def test_single_frame_video(tmp_path):
    path = make(tmp_path / "one.mp4", "-frames:v", "1", "-c:v", "libx264")
    expect_error(path, "not a video", "single frame")


def test_unsupported_container(tmp_path):
    path = make(tmp_path / "a.avi", "-c:v", "mpeg4")
    expect_error(path, "unsupported container", "avi")


def test_file_over_max_bytes_is_refused_before_ffprobe_runs(videos, monkeypatch):
    monkeypatch.setattr(video.subprocess, "Popen", lambda *a, **k: pytest.fail("ffprobe ran"))
    size = videos["mp4"].stat().st_size
    expect_error(videos["mp4"], "the limit is", max_bytes=size - 1)


def test_video_over_max_duration(videos):
    assert expect_error(videos["mp4"], max_duration=1.5) == "video is 2.0 s long; the limit is 1.5 s"


# --- decoding failures -------------------------------------------------------------------------


def test_data_cut_off_mid_stream_while_decoding(tmp_path):
    # The file is cut after probing (or its data is unreadable past some point): decoding must say so.
    full = make(tmp_path / "full.mp4", "-c:v", "libx264", "-movflags", "+faststart", video=PATTERN)
    info = probe_video(full)
    cut = truncate(full, tmp_path / "cut.mp4")
    with pytest.raises(VideoError, match="truncated or corrupt"):
        sample_frames(cut, 8, 16, info)


def test_no_frames_decoded(videos, tmp_path):
    info = probe_video(videos["mp4"])
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\0" * 4096)
    with pytest.raises(VideoError, match="could not decode video") as caught:
        sample_frames(junk, 4, 16, info)
    assert "Traceback" not in str(caught.value) and "\n" not in str(caught.value)


def test_sample_frames_probes_when_not_given_info(tmp_path):
    (tmp_path / "empty.webm").write_bytes(b"")
    with pytest.raises(VideoError, match="file is empty"):
        sample_frames(tmp_path / "empty.webm", 4, 16)


def test_decoding_times_out(videos):
    with pytest.raises(VideoError, match="timed out"):
        sample_frames(videos["mp4"], 4, 16, probe_video(videos["mp4"]), timeout=0.001)
