"""Validate user micro-videos and decode a few uniformly spaced frames from them, with ffmpeg.

Two steps, both of which turn anything a user can upload into either a result or a ``VideoError``
that says what is wrong with the file (never a traceback, never a hang):

- ``probe_video`` runs one ``ffprobe`` that reads the container header and every packet of the
  file (demuxing only, no decoding: ~30 ms more than the header alone for a 20 MB 1080p file).
  The packet scan gives the real duration (browser-recorded WebM has none in its header), the
  frame and keyframe counts, and catches files whose data was cut off after a valid header.
- ``sample_frames`` decodes the frames at the centres of ``num_frames`` equal segments in a single
  ``ffmpeg`` process and pipes them out as ``rgb24``. Each frame is the first one at or after its
  centre, centre-cropped to a square and scaled to ``size`` (a crop keeps the product at its true
  aspect and at more pixels than a letterbox would).
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np

# ffprobe's ``format_name`` for the containers we accept: mp4/mov and mkv/webm.
ALLOWED_CONTAINERS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"})
# Demuxers ffprobe uses for still images (a PNG renamed to .mp4 is still probed as png_pipe).
IMAGE_FORMATS = frozenset({"image2", "image2pipe"})
# Top-level boxes an MP4/MOV file starts with; used to tell a cut-off MP4 from a non-video file.
MP4_LEADING_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")
# Messages of demuxers that reach the end of the data before the header says they should.
TRUNCATION_MARKERS = ("partial file", "ended prematurely", "truncat")

PROBE_TIMEOUT_S = 30.0
DECODE_TIMEOUT_S = 120.0
# Seeking costs about this many decoded frames per sampled frame on top of the frames between the
# keyframe and the target (opening the input again, probing its streams); measured at 1080p.
SEEK_OVERHEAD_FRAMES = 20
MAX_SEEK_PIXELS = 16 * 1920 * 1080  # ~0.6 GB of decoders


class VideoError(ValueError):
    """The file is not a video we can use; the message says why, in words fit for the uploader."""


@dataclass
class VideoInfo:
    duration: float  # seconds of video, from the first video packet to the end of the last
    width: int  # as displayed, i.e. after the rotation phones record in the metadata
    height: int
    fps: float
    codec: str
    format_name: str  # ffprobe's demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    size_bytes: int
    has_audio: bool
    frame_count: int  # video packets in the file: frames, unless the codec splits fields
    keyframe_count: int
    stream_index: int = 0  # the video stream decoded (cover art and extra tracks are skipped)
    start_time: float = 0.0  # where the video starts on ffmpeg's timeline (s); usually 0


@dataclass
class SampledFrames:
    frames: np.ndarray  # uint8 [T, size, size, 3], RGB
    timestamps: list[float]  # segment centres (s from the start of the video), increasing


def is_video_container(format_name: str) -> bool:
    return format_name in ALLOWED_CONTAINERS


def is_image_format(format_name: str) -> bool:
    return format_name in IMAGE_FORMATS or format_name.endswith("_pipe")


def probe_video(
    path: str | os.PathLike,
    *,
    max_bytes: int | None = None,
    max_duration: float | None = None,
    timeout: float = PROBE_TIMEOUT_S,
) -> VideoInfo:
    """Describe the video at ``path``, or raise ``VideoError`` if it is not one we accept."""
    path = Path(path)
    if not path.is_file():
        raise VideoError("file not found")
    size_bytes = path.stat().st_size
    if size_bytes == 0:
        raise VideoError("file is empty")
    if max_bytes is not None and size_bytes > max_bytes:  # before ffprobe reads any of it
        raise VideoError(f"file is {_megabytes(size_bytes)}; the limit is {_megabytes(max_bytes)}")

    probe, stderr = _ffprobe(path, timeout)
    streams = probe.get("streams", [])
    video = next(
        (s for s in streams if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")),
        None,
    )
    if video is None:
        raise VideoError("not a video: no video stream found")
    format_name = probe.get("format", {}).get("format_name", "")
    packets = [p for p in probe.get("packets", []) if p.get("stream_index") == video["index"]]
    if is_image_format(format_name):
        raise VideoError(f"not a video: file is a still image ({format_name})")
    if len(packets) <= 1:
        raise VideoError("not a video: it has a single frame, like a still image")
    if not is_video_container(format_name):
        raise VideoError(f"unsupported container '{format_name}'; upload mp4, mov, webm or mkv")

    first = min(_seconds(p.get("pts_time")) or 0.0 for p in packets)
    end = max((_seconds(p.get("pts_time")) or 0.0) + (_seconds(p.get("duration_time")) or 0.0) for p in packets)
    duration = end - first
    if duration <= 0:
        raise VideoError("could not decode video: its frames have no timestamps")
    declared = _declared_duration(video, probe["format"])
    cut_off = declared is not None and duration < declared - max(0.5, 0.05 * declared)
    if cut_off or any(marker in stderr.lower() for marker in TRUNCATION_MARKERS):
        detail = f"video data ends at {duration:.2f} s of {declared:.2f} s" if cut_off else _last_line(stderr, path)
        raise VideoError(f"could not decode video: file is truncated or corrupt ({detail})")
    if max_duration is not None and duration > max_duration:
        raise VideoError(f"video is {duration:.1f} s long; the limit is {max_duration:g} s")

    width, height = int(video.get("width", 0)), int(video.get("height", 0))
    if _rotation(video) % 180 == 90:
        width, height = height, width
    format_start = _seconds(probe["format"].get("start_time")) or 0.0
    return VideoInfo(
        duration=duration,
        width=width,
        height=height,
        fps=len(packets) / duration,
        codec=video.get("codec_name", "unknown"),
        format_name=format_name,
        size_bytes=size_bytes,
        has_audio=any(s.get("codec_type") == "audio" for s in streams),
        frame_count=len(packets),
        keyframe_count=sum("K" in p.get("flags", "") for p in packets),
        stream_index=int(video["index"]),
        start_time=max(0.0, first - format_start),
    )


def sample_frames(
    path: str | os.PathLike,
    num_frames: int,
    size: int,
    info: VideoInfo | None = None,
    *,
    timeout: float = DECODE_TIMEOUT_S,
) -> SampledFrames:
    """Decode ``num_frames`` frames at the centres of equal segments of the video, as [T, size, size, 3] uint8.

    One ffmpeg process either seeks to each centre (one input per frame) or decodes the video once
    and trims a copy of the stream at each centre, whichever decodes fewer frames for this file's
    keyframe spacing: both pick the same frames. A video with fewer frames than ``num_frames``
    yields repeated frames.
    """
    if num_frames < 1 or size < 1:
        raise ValueError("num_frames and size must be positive")
    info = info or probe_video(path)
    step = info.duration / num_frames
    centres = [(i + 0.5) * step for i in range(num_frames)]
    starts = [info.start_time + t for t in centres]  # on ffmpeg's timeline

    segments = (_seek_segments if _seeking_is_cheaper(info, num_frames) else _trim_segments)(path, info, starts)
    stream = (
        ffmpeg.concat(*segments, v=1, a=0)
        .setpts("N")  # repeated frames share a timestamp; the muxer would drop them
        .filter("crop", "min(iw,ih)", "min(iw,ih)")
        .filter("scale", size, size)
        .output("pipe:", format="rawvideo", pix_fmt="rgb24", vsync="passthrough", **{"frames:v": num_frames})
        .global_args("-nostdin", "-v", "error")
    )
    process = stream.run_async(pipe_stdout=True, pipe_stderr=True)
    out, err = _communicate(process, timeout, "decoding")
    stderr = err.decode("utf-8", "replace")
    frame_bytes = size * size * 3
    decoded = len(out) // frame_bytes
    if process.returncode != 0:
        raise VideoError(f"could not decode video: {_last_line(stderr, path)}")
    if decoded == 0:
        raise VideoError(f"could not decode video: no frames decoded ({_last_line(stderr, path) or 'empty stream'})")
    if decoded < num_frames and centres[decoded] < info.duration - 2 / info.fps:  # frames stopped early
        detail = _last_line(stderr, path) or f"{decoded} of {num_frames} frames decoded"
        raise VideoError(f"could not decode video: file is truncated or corrupt ({detail})")
    frames = np.frombuffer(out, np.uint8, count=decoded * frame_bytes).reshape(decoded, size, size, 3)
    # Fewer frames than centres: the last centres lie past the last frame's timestamp, so hold that frame.
    # (Indexing also copies out of the read-only pipe buffer.)
    frames = frames[np.minimum(np.arange(num_frames), decoded - 1)]
    return SampledFrames(frames=frames, timestamps=centres)


def _seeking_is_cheaper(info: VideoInfo, num_frames: int) -> bool:
    """Seek when it decodes fewer frames than one pass, and its decoders fit in memory.

    A seek decodes from the keyframe before its target (half a keyframe interval on average) plus
    a fixed cost of opening the input again. Each input keeps its decoder until ffmpeg exits
    (25-40 MB per 1080p input, measured), so the number of pixels seeked at once is capped.
    """
    frames_per_keyframe = info.frame_count / max(1, info.keyframe_count)
    seek_cost = num_frames * (frames_per_keyframe / 2 + SEEK_OVERHEAD_FRAMES)
    return seek_cost < info.frame_count and num_frames * info.width * info.height <= MAX_SEEK_PIXELS


def _seek_segments(path, info: VideoInfo, starts: list[float]) -> list:
    """One input per frame, each seeking to its start: decodes from the keyframe before each start."""
    return [
        ffmpeg.input(str(path), ss=f"{start:.6f}")[str(info.stream_index)].trim(end_frame=1)
        for start in starts
    ]


def _trim_segments(path, info: VideoInfo, starts: list[float]) -> list:
    """One pass over the video, split into one branch per frame, each keeping its first frame at or after start."""
    video = ffmpeg.input(str(path))[str(info.stream_index)].split()
    # Two trims: within one trim, end_frame counts from the start of the stream, not from ``start``.
    return [video[i].trim(start=f"{start:.6f}").trim(end_frame=1) for i, start in enumerate(starts)]


def _ffprobe(path: Path, timeout: float) -> tuple[dict, str]:
    """``ffmpeg.probe`` plus the packet list, with a timeout (ffmpeg-python's probe has none) and readable errors."""
    args = [
        "ffprobe", "-v", "error", "-of", "json",
        "-show_format", "-show_streams", "-show_entries", "packet=stream_index,pts_time,duration_time,flags",
        str(path),
    ]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = _communicate(process, timeout, "reading the video")
    stderr = err.decode("utf-8", "replace")
    if process.returncode != 0:
        if "moov atom not found" in stderr and _looks_like_mp4(path):
            raise VideoError("could not decode video: file is truncated or corrupt (moov atom not found)")
        if "Invalid data found" in stderr or "moov atom not found" in stderr:
            raise VideoError("not a video: the file format is not recognised")
        raise VideoError(f"could not read video: {_last_line(stderr, path)}")
    return json.loads(out), stderr


def _communicate(process: subprocess.Popen, timeout: float, what: str) -> tuple[bytes, bytes]:
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise VideoError(f"{what} timed out after {timeout:g} s") from None


def _looks_like_mp4(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(8)[4:8] in MP4_LEADING_BOXES


def _last_line(stderr: str, path: str | os.PathLike = "") -> str:
    """ffmpeg's last message, without our file path, ``[demuxer @ 0x...]`` prefixes and closing boilerplate."""
    if path:
        stderr = stderr.replace(f"{path}: ", "")
    lines = [re.sub(r"^\[[^\]]+ @ 0x[0-9a-f]+\]\s*", "", line).strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line and line != "Conversion failed!"]
    return lines[-1][:300] if lines else ""


def _declared_duration(video: dict, fmt: dict) -> float | None:
    """The video's length as its header states it: stream duration (mp4), DURATION tag (mkv) or container's."""
    tag = re.fullmatch(r"(\d+):(\d+):([\d.]+)", video.get("tags", {}).get("DURATION", ""))
    if tag:
        return int(tag[1]) * 3600 + int(tag[2]) * 60 + float(tag[3])
    return _seconds(video.get("duration")) or _seconds(fmt.get("duration"))


def _rotation(video: dict) -> int:
    """Degrees the player turns the picture (and ffmpeg's autorotate with it)."""
    for side_data in video.get("side_data_list", []):
        if "rotation" in side_data:
            return round(_seconds(side_data["rotation"]) or 0) % 360
    return round(_seconds(video.get("tags", {}).get("rotate")) or 0) % 360


def _seconds(value) -> float | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) else None


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
