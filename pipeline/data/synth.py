"""A small synthetic video dataset written in an official layout (UCF101, HMDB51 or Charades).

What a clip shows: a cluttered background of random-coloured blocks drifting in a random direction, a few small
distractor shapes in neutral colours (grey, white, black, brown) moving across it, and large *key objects*, each an
object type = shape x saturated colour (``NUM_OBJECT_TYPES`` of them, ``object_name``).

Classes (``class_objects``):
- mode ``"set"`` (UCF101/HMDB51 layouts): a class is an unordered pair of object types {a, b}; one of them is
  shown during the first half of the clip, the other during the second half, in random order. The pairs form a
  cycle (class i = {t_i, t_i+1 mod n}), so every object type belongs to two classes: no single frame decides the
  class, the set of frames does. An order-blind model (STPA's attention, TSN averaging) can learn it. Needs at
  least 3 classes.
- mode ``"order"``: classes come in pairs (2j, 2j + 1) that show the same pair of object types a-then-b and
  b-then-a: a clip of class 2j + 1 is a clip of class 2j played backwards, frame for frame (same set of frames,
  reversed order), so no order-blind model can beat 50% within a pair. Needs an even number of classes.
- Charades layout (multi-label, mode ``"set"`` only): class k is object type k; a video has 0 to 3 actions, each
  an object present during [start, end] seconds (it is drawn in frame i when start <= (i + 0.5) / fps <= end, see
  ``visible_frames``); one video in five has none.

Files written (byte-compatible with the official ones):
- UCF101: ``UCF-101/<Class>/v_<Class>_gNN_c01.avi`` and ``ucfTrainTestlist/`` with ``classInd.txt``,
  ``trainlist01-03.txt`` (``<Class>/<file> <label>``), ``testlist01-03.txt``, all CRLF.
- HMDB51: ``hmdb51_org/<class>/<video>.avi`` and ``testTrainMulti_7030_splits/<class>_test_split1-3.txt``
  (``<video>.avi <0|1|2> `` with the trailing space, LF).
- Charades: ``Charades_v1_480/<id>.mp4``, ``Charades_v1_train.csv`` / ``Charades_v1_test.csv`` with the official
  header (QUOTE_MINIMAL quoting, LF) and ``Charades_v1_classes.txt`` (``cNNN <name>``).
AVI files hold MPEG-4 Part 2 video (FFmpeg's ``mpeg4`` encoder, the format of UCF101's xvid files): decord
decodes MPEG-4 Part 2 in AVI right with sparse access, whereas H.264 in AVI is the case where it returns wrong
frames (DESIGN.md). MP4 files hold H.264 (libx264, preset ultrafast: the slower presets' analysis is not
bit-reproducible here even single-threaded, 24 distinct outputs in 100 encodes of the same frames at veryfast).
``gop`` sets the keyframe interval of either.

Everything is determined by ``seed``: the same call writes the same frames, labels and bytes.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

import numpy as np

from pipeline import storage
from pipeline.data.datasets import charades as charades_format
from pipeline.data.datasets.records import Segment
from pipeline.video.encode import encode_video

LAYOUTS = ("ucf101", "hmdb51", "charades")
MODES = ("set", "order")

SHAPES = ("square", "disk", "triangle", "cross", "ring", "diamond")
COLOURS = {
    "red": (225, 30, 30),
    "green": (30, 200, 45),
    "blue": (35, 65, 235),
    "yellow": (240, 225, 30),
    "magenta": (225, 40, 225),
    "cyan": (35, 225, 225),
}
COLOUR_NAMES = tuple(COLOURS)
NUM_OBJECT_TYPES = len(SHAPES) * len(COLOURS)
DISTRACTOR_COLOURS = ((128, 128, 128), (245, 245, 245), (15, 15, 15), (140, 90, 40))
NUM_DISTRACTORS = 4
NUM_SPLITS = 3  # UCF101 and HMDB51 publish three train/test splits


# --- object types and classes ------------------------------------------------------------------------------------
def object_name(object_type: int) -> tuple[str, str]:
    """(colour, shape) of an object type in [0, NUM_OBJECT_TYPES): shapes cycle fastest, colours shift each cycle."""
    shape = object_type % len(SHAPES)
    colour = (shape + object_type // len(SHAPES)) % len(COLOURS)
    return COLOUR_NAMES[colour], SHAPES[shape]


def object_pairs(num_pairs: int) -> list[tuple[int, int]]:
    """``num_pairs`` distinct unordered pairs of object types in which (from 3 pairs on) every type used is in two.

    1-2 pairs: disjoint pairs; 3..NUM_OBJECT_TYPES: the cycle {t_i, t_(i+1) mod n}; more: circulant pairs
    {t_i, t_(i+d)} over all types for d = 1, 2, ...
    """
    if num_pairs <= 2:
        return [(0, 1), (2, 3)][:num_pairs]
    if num_pairs <= NUM_OBJECT_TYPES:
        return [(i, (i + 1) % num_pairs) for i in range(num_pairs)]
    pairs: list[tuple[int, int]] = []
    seen: set[frozenset[int]] = set()
    for offset in range(1, NUM_OBJECT_TYPES // 2 + 1):
        for i in range(NUM_OBJECT_TYPES):
            pair = (i, (i + offset) % NUM_OBJECT_TYPES)
            if frozenset(pair) not in seen:
                seen.add(frozenset(pair))
                pairs.append(pair)
            if len(pairs) == num_pairs:
                return pairs
    raise ValueError(f"at most {len(pairs)} pairs of object types exist, {num_pairs} asked")


def class_objects(mode: str, num_classes: int) -> list[tuple[int, int]]:
    """The object types of each class: ``(a, b)`` = shown as a then b ("order") or in either order ("set")."""
    if mode == "set":
        return object_pairs(num_classes)
    pairs = object_pairs(num_classes // 2)
    return [pair if reverse == 0 else pair[::-1] for pair in pairs for reverse in (0, 1)]


def class_name(layout: str, mode: str, objects: tuple[int, ...]) -> str:
    """A readable class name in the layout's style: ``RedSquareAndGreenDisk`` (UCF101), ``red_square_and_green_disk``
    (HMDB51), ``red square`` (Charades); ``Then`` instead of ``And`` in mode "order"."""
    words = [object_name(t) for t in objects]
    joiner = "then" if mode == "order" else "and"
    if layout == "charades":
        return " ".join(words[0])
    if layout == "hmdb51":
        return f"_{joiner}_".join("_".join(w) for w in words)
    return joiner.capitalize().join("".join(part.capitalize() for part in w) for w in words)


# --- clip plans and rendering ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Track:
    """A shape moving linearly from ``start_xy`` to ``end_xy`` (pixels) over frames [first_frame, end_frame)."""

    shape: int
    colour: tuple[int, int, int]
    radius: float
    start_xy: tuple[float, float]
    end_xy: tuple[float, float]
    first_frame: int
    end_frame: int
    object_type: int | None  # None for a distractor


@dataclass(frozen=True)
class ClipPlan:
    """Everything ``render_clip`` draws; drawn from a random generator by ``plan_clip``."""

    width: int
    height: int
    num_frames: int
    background: np.ndarray  # uint8 (rows, cols, 3): colours of the background blocks
    cell: int  # block side in pixels
    offset_yx: tuple[float, float]  # background offset at frame 0, pixels
    drift_yx: tuple[float, float]  # background drift, pixels per frame
    tracks: tuple[Track, ...]  # drawn in this order (distractors first, key objects on top)
    reverse: bool  # play the clip backwards (mode "order", odd classes)


def plan_clip(
    rng: np.random.Generator,
    keys: list[tuple[int, int, int]],
    *,
    width: int,
    height: int,
    num_frames: int,
    key_radius: tuple[float, float],
    reverse: bool = False,
) -> ClipPlan:
    """Draw a clip's background, distractors and key-object motion.

    Args:
        rng: Source of randomness; the same state gives the same plan.
        keys: (object type, first frame, end frame exclusive) of each key object.
        width, height, num_frames: Clip size.
        key_radius: Range of key-object radii as fractions of the shorter side.
        reverse: Whether the rendered clip is played backwards.
    """
    side = min(width, height)
    cell = max(4, side // 8)
    rows, cols = 2 * math.ceil(height / cell), 2 * math.ceil(width / cell)
    background = rng.integers(40, 200, size=(rows, cols, 3), dtype=np.uint8)
    offset = (float(rng.uniform(0, rows * cell)), float(rng.uniform(0, cols * cell)))
    angle = rng.uniform(0, 2 * math.pi)
    speed = rng.uniform(0.5, 1.5) * side / max(num_frames, 1) / 2
    drift = (speed * math.sin(angle), speed * math.cos(angle))
    tracks = []
    for _ in range(NUM_DISTRACTORS):
        radius = float(rng.uniform(0.05, 0.09)) * side
        colour = DISTRACTOR_COLOURS[int(rng.integers(len(DISTRACTOR_COLOURS)))]
        tracks.append(
            Track(
                int(rng.integers(len(SHAPES))),
                colour,
                radius,
                _point(rng, width, height, radius),
                _point(rng, width, height, radius),
                0,
                num_frames,
                None,
            )
        )
    for object_type, first, end in keys:
        radius = float(rng.uniform(*key_radius)) * side
        base = np.array(COLOURS[object_name(object_type)[0]])
        colour = np.clip(base + rng.integers(-15, 16, size=3), 0, 255)
        tracks.append(
            Track(
                SHAPES.index(object_name(object_type)[1]),
                (int(colour[0]), int(colour[1]), int(colour[2])),
                radius,
                _point(rng, width, height, radius),
                _point(rng, width, height, radius),
                first,
                end,
                object_type,
            )
        )
    return ClipPlan(width, height, num_frames, background, cell, offset, drift, tuple(tracks), reverse)


def render_clip(plan: ClipPlan) -> np.ndarray:
    """The frames of a plan: uint8 ``(num_frames, height, width, 3)`` RGB in [0, 255]."""
    num_frames, height, width = plan.num_frames, plan.height, plan.width
    texture = np.repeat(np.repeat(plan.background, plan.cell, axis=0), plan.cell, axis=1)  # (TH, TW, 3)
    t = np.arange(num_frames, dtype=np.float64)
    offset_y = np.round(plan.offset_yx[0] + plan.drift_yx[0] * t).astype(np.int64)  # (T,)
    offset_x = np.round(plan.offset_yx[1] + plan.drift_yx[1] * t).astype(np.int64)
    rows = (np.arange(height)[None, :] + offset_y[:, None]) % texture.shape[0]  # (T, H)
    cols = (np.arange(width)[None, :] + offset_x[:, None]) % texture.shape[1]  # (T, W)
    frames = texture[rows[:, :, None], cols[:, None, :]]  # (T, H, W, 3)
    y = np.arange(height, dtype=np.float32)[None, :, None] + 0.5  # (1, H, 1) pixel centres
    x = np.arange(width, dtype=np.float32)[None, None, :] + 0.5  # (1, 1, W)
    for track in plan.tracks:
        span = track.end_frame - track.first_frame
        if span <= 0:
            continue
        progress = np.arange(span, dtype=np.float32) / max(span - 1, 1)  # (F,) 0 -> 1
        centre_x = track.start_xy[0] + (track.end_xy[0] - track.start_xy[0]) * progress
        centre_y = track.start_xy[1] + (track.end_xy[1] - track.start_xy[1]) * progress
        mask = _shape_mask(
            track.shape, x - centre_x[:, None, None], y - centre_y[:, None, None], track.radius
        )
        window = frames[track.first_frame : track.end_frame]  # (F, H, W, 3) view
        window[mask] = track.colour  # mask (F, H, W)
    return np.ascontiguousarray(frames[::-1]) if plan.reverse else frames


def frame_objects(plan: ClipPlan) -> tuple[tuple[int, ...], ...]:
    """The key object types visible in each rendered frame (in rendered order), sorted."""
    per_frame = [
        tuple(
            sorted(
                track.object_type
                for track in plan.tracks
                if track.object_type is not None and track.first_frame <= i < track.end_frame
            )
        )
        for i in range(plan.num_frames)
    ]
    return tuple(per_frame[::-1] if plan.reverse else per_frame)


def visible_frames(start: float, end: float, fps: float, num_frames: int) -> tuple[int, int]:
    """Frames [first, end) whose midpoint time (i + 0.5) / fps lies in [start, end] seconds."""
    first = max(0, math.ceil(start * fps - 0.5))
    last = min(num_frames - 1, math.floor(end * fps - 0.5))
    return first, max(first, last + 1)


def _point(rng: np.random.Generator, width: int, height: int, radius: float) -> tuple[float, float]:
    """A random centre (x, y) keeping a shape of ``radius`` mostly inside the frame."""
    margin_x, margin_y = min(radius * 0.8, width / 2), min(radius * 0.8, height / 2)
    return float(rng.uniform(margin_x, width - margin_x)), float(rng.uniform(margin_y, height - margin_y))


def _shape_mask(shape: int, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    """Boolean mask (F, H, W) of a shape of ``radius`` centred at offsets (dx, dy) = pixel - centre."""
    u, v = dx / radius, dy / radius  # (F, 1, W), (F, H, 1): unit coordinates
    name = SHAPES[shape]
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85
    if name == "disk":
        return u * u + v * v <= 1.0
    if name == "triangle":  # apex up, base at the bottom
        return (v >= -1.0) & (v <= 1.0) & (np.abs(u) <= (v + 1.0) / 2)
    if name == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    if name == "ring":
        distance = u * u + v * v
        return (distance <= 1.0) & (distance >= 0.3)
    return np.abs(u) + np.abs(v) <= 1.0  # diamond


# --- datasets ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SynthVideo:
    """One generated video and the ground truth it was drawn from.

    Attributes:
        video_id: The id the dataset's parser gives it.
        path: Path relative to the videos folder.
        split: Its split in official split 1 (``"train"``/``"test"``; HMDB51 may also say ``"unused"``).
        label: Class index in the dataset's label order (single-label layouts), else None.
        labels: Sorted class indices (Charades).
        segments: Actions (Charades), seconds as written to the CSV.
        frame_objects: Key object types visible in each frame.
    """

    video_id: str
    path: str
    split: str
    label: int | None
    labels: tuple[int, ...]
    segments: tuple[Segment, ...]
    frame_objects: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class SynthSummary:
    """What ``synthesize`` wrote.

    Attributes:
        layout, mode: As given.
        root: The dataset root (``--data-root``).
        videos_uri, annotations_uri: The videos folder and annotations folder under ``root`` (what
            ``pipeline.data.prepare.dataset_root_paths`` gives).
        class_names: In label order.
        class_objects: Object types of each class (label order).
        annotation_uris: Every annotation file written.
        videos: Every video written, with its ground truth.
        fps: Frame rate of the videos.
    """

    layout: str
    mode: str
    root: str
    videos_uri: str
    annotations_uri: str
    class_names: tuple[str, ...]
    class_objects: tuple[tuple[int, ...], ...]
    annotation_uris: tuple[str, ...]
    videos: tuple[SynthVideo, ...]
    fps: float

    @property
    def num_videos(self) -> int:
        return len(self.videos)

    def __str__(self) -> str:
        return (
            f"{self.layout} ({self.mode}): {self.num_videos} videos, {len(self.class_names)} classes under "
            f"{self.root}\n  videos: {self.videos_uri}\n  annotations: {self.annotations_uri}"
        )


def synthesize(
    layout: str,
    out: str,
    *,
    num_classes: int = 5,
    videos_per_class: int = 4,
    seed: int = 0,
    mode: str = "set",
    width: int = 112,
    height: int = 112,
    num_frames: int = 32,
    fps: float = 8.0,
    gop: int | None = None,
) -> SynthSummary:
    """Write a synthetic dataset in an official layout under ``out`` (any fsspec URI). See the module doc.

    Args:
        layout: ``ucf101``, ``hmdb51`` or ``charades``.
        out: The dataset root to write.
        num_classes: Number of classes (mode "set": at least 3; mode "order": even).
        videos_per_class: Videos per class (at least 2, so that every split has train and test videos). For
            Charades, the dataset holds ``num_classes * videos_per_class`` videos.
        seed: Determines every frame, label and byte.
        mode: ``"set"`` or ``"order"`` (see the module doc).
        width, height: Frame size, even, at least 16.
        num_frames: Frames per video, at least 4.
        fps: Frame rate.
        gop: Keyframe interval (default: the encoder's).

    Returns:
        What was written, with the ground truth of every video.
    """
    _check_arguments(layout, mode, num_classes, videos_per_class, width, height, num_frames, fps, gop)
    root = storage.normalize_uri(out)
    if layout == "charades":
        return _write_charades(root, num_classes, videos_per_class, seed, width, height, num_frames, fps, gop)
    return _write_single_label(
        layout, root, mode, num_classes, videos_per_class, seed, width, height, num_frames, fps, gop
    )


def _check_arguments(
    layout: str,
    mode: str,
    num_classes: int,
    videos_per_class: int,
    width: int,
    height: int,
    num_frames: int,
    fps: float,
    gop: int | None,
) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if layout == "charades":
        if mode != "set":
            raise ValueError("the charades layout supports mode 'set' only (multi-label objects in segments)")
        if not 1 <= num_classes <= NUM_OBJECT_TYPES:
            raise ValueError(f"charades: num_classes must be in [1, {NUM_OBJECT_TYPES}], got {num_classes}")
    elif mode == "set" and num_classes < 3:
        raise ValueError(
            f"mode 'set' needs num_classes >= 3 (every object in two classes), got {num_classes}"
        )
    elif mode == "order" and (num_classes < 2 or num_classes % 2):
        raise ValueError(
            f"mode 'order' needs an even num_classes >= 2 (classes come in reversed pairs), got {num_classes}"
        )
    if videos_per_class < 2:
        raise ValueError(f"videos_per_class must be at least 2 (train and test), got {videos_per_class}")
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"width and height must be even and at least 16, got {width}x{height}")
    if num_frames < 4:
        raise ValueError(f"num_frames must be at least 4, got {num_frames}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be positive, got {fps}")
    if gop is not None and gop < 1:
        raise ValueError(f"gop must be at least 1, got {gop}")


def _split_role(index: int, videos_per_class: int, split: int) -> str:
    """Official-split role of the ``index``-th video of a class: one in every min(M, 4) is a test video, rotating
    with the split; every class gets the same number of train and test videos."""
    period = min(videos_per_class, 4)
    return "test" if index % period == (split - 1) % period else "train"


# FFmpeg's `-q:v 3` (fixed quantiser 3, xvid's "high quality" range): the qscale flag and lambda = 3 * FF_QP2LAMBDA.
_MPEG4_QUALITY = {"flags": "+qscale", "global_quality": str(3 * 118)}


def _encode(frames: np.ndarray, fps: float, container: str, gop: int | None) -> bytes:
    if container == "avi":
        # MPEG-4 Part 2 (UCF101's xvid format): decord seeks it right in AVI, unlike H.264 in AVI.
        return encode_video(
            frames, fps, container_format="avi", codec="mpeg4", codec_options=_MPEG4_QUALITY, gop_size=gop
        )
    return encode_video(
        frames,
        fps,
        container_format="mp4",
        codec="libx264",
        codec_options={"preset": "ultrafast", "crf": "18"},
        gop_size=gop,
    )


def _write_single_label(
    layout: str,
    root: str,
    mode: str,
    num_classes: int,
    videos_per_class: int,
    seed: int,
    width: int,
    height: int,
    num_frames: int,
    fps: float,
    gop: int | None,
) -> SynthSummary:
    objects = class_objects(mode, num_classes)
    names = [class_name(layout, mode, pair) for pair in objects]
    # UCF101 labels follow classInd (we write it in construction order); HMDB51 labels follow sorted names.
    order = (
        sorted(range(num_classes), key=lambda c: names[c]) if layout == "hmdb51" else list(range(num_classes))
    )
    label_of = {c: order.index(c) for c in range(num_classes)}
    half = num_frames // 2
    last_train = [
        max(k for k in range(videos_per_class) if _split_role(k, videos_per_class, s) == "train")
        for s in range(1, NUM_SPLITS + 1)
    ]
    videos: list[SynthVideo] = []
    roles: dict[str, list[str]] = {}  # video path -> role in splits 1..3
    for c in range(num_classes):
        for k in range(videos_per_class):
            rng = np.random.default_rng([seed, c, k])
            a, b = objects[c]
            if mode == "set" and rng.random() < 0.5:
                a, b = b, a
            # mode "order": odd classes hold the even class's pair reversed; draw the same plan and play it
            # backwards, so the two classes have the same distribution of frame sets.
            reverse = mode == "order" and c % 2 == 1
            if reverse:
                a, b = b, a
            plan = plan_clip(
                rng,
                [(a, 0, half), (b, half, num_frames)],
                width=width,
                height=height,
                num_frames=num_frames,
                key_radius=(0.22, 0.3),
                reverse=reverse,
            )
            if layout == "ucf101":
                video_id = f"v_{names[c]}_g{k + 1:02d}_c01"
            else:
                video_id = f"Synth_clip_{k:03d}_{names[c]}_f_cm_np1_fr_goo_0"
            path = f"{names[c]}/{video_id}.avi"
            storage.write_bytes(
                storage.join(root, _videos_folder(layout), *path.split("/")),
                _encode(render_clip(plan), fps, "avi", gop),
            )
            split_roles = [_split_role(k, videos_per_class, s) for s in range(1, NUM_SPLITS + 1)]
            if layout == "hmdb51" and videos_per_class >= 5:
                # HMDB51 leaves some videos out of each split (flag 0): here the last train video of each class.
                split_roles = ["unused" if k == last_train[s] else role for s, role in enumerate(split_roles)]
            roles[path] = split_roles
            videos.append(
                SynthVideo(video_id, path, split_roles[0], label_of[c], (), (), frame_objects(plan))
            )
    if layout == "ucf101":
        annotation_uris = _write_ucf101_lists(root, names, videos, roles)
    else:
        annotation_uris = _write_hmdb51_splits(root, [names[c] for c in order], videos, roles)
    return SynthSummary(
        layout,
        mode,
        root,
        storage.join(root, _videos_folder(layout)),
        storage.join(root, _annotations_folder(layout)),
        tuple(names[c] for c in order),
        tuple(tuple(objects[c]) for c in order),
        tuple(annotation_uris),
        tuple(videos),
        fps,
    )


def _write_ucf101_lists(
    root: str, names: list[str], videos: list[SynthVideo], roles: dict[str, list[str]]
) -> list[str]:
    folder = storage.join(root, _annotations_folder("ucf101"))
    files = {"classInd.txt": "".join(f"{i + 1} {name}\r\n" for i, name in enumerate(names))}
    for s in range(1, NUM_SPLITS + 1):
        files[f"trainlist{s:02d}.txt"] = "".join(
            f"{v.path} {v.label + 1}\r\n" for v in videos if roles[v.path][s - 1] == "train"
        )
        files[f"testlist{s:02d}.txt"] = "".join(
            f"{v.path}\r\n" for v in videos if roles[v.path][s - 1] == "test"
        )
    return _write_files(folder, files)


def _write_hmdb51_splits(
    root: str, sorted_names: list[str], videos: list[SynthVideo], roles: dict[str, list[str]]
) -> list[str]:
    folder = storage.join(root, _annotations_folder("hmdb51"))
    flag = {"unused": 0, "train": 1, "test": 2}
    files = {}
    for label, name in enumerate(sorted_names):
        for s in range(1, NUM_SPLITS + 1):
            files[f"{name}_test_split{s}.txt"] = "".join(
                f"{v.path.split('/')[1]} {flag[roles[v.path][s - 1]]} \n" for v in videos if v.label == label
            )
    return _write_files(folder, files)


_SCENES = ("Kitchen", "Living room", "Bedroom", "Bathroom", "Hallway", "Home Office")
_ID_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _write_charades(
    root: str,
    num_classes: int,
    videos_per_class: int,
    seed: int,
    width: int,
    height: int,
    num_frames: int,
    fps: float,
    gop: int | None,
) -> SynthSummary:
    names = [class_name("charades", "set", (k,)) for k in range(num_classes)]
    num_videos = num_classes * videos_per_class
    id_rng = np.random.default_rng([seed, 1_000_003])
    ids: list[str] = []
    while len(ids) < num_videos:
        candidate = "".join(id_rng.choice(list(_ID_CHARACTERS), size=5))
        if candidate not in ids:
            ids.append(candidate)
    class_order = id_rng.permutation(num_classes)  # actions are taken round-robin from this order
    duration = num_frames / fps
    videos: list[SynthVideo] = []
    rows = {"train": [], "test": []}
    next_action = 0
    for v, video_id in enumerate(ids):
        rng = np.random.default_rng([seed, v])
        num_actions = 0 if v % 5 == 4 else int(rng.integers(1, min(3, num_classes) + 1))
        segments = []
        for j in range(num_actions):
            label = int(class_order[(next_action + j) % num_classes])
            first = int(rng.integers(0, num_frames - 1))
            end = int(rng.integers(min(num_frames, first + max(2, num_frames // 4)), num_frames + 1))
            segments.append(Segment(label, round(first / fps, 2), round(end / fps, 2)))
        next_action += num_actions
        keys = [(s.label, *visible_frames(s.start, s.end, fps, num_frames)) for s in segments]
        plan = plan_clip(
            rng, keys, width=width, height=height, num_frames=num_frames, key_radius=(0.15, 0.22)
        )
        path = f"{video_id}{charades_format.VIDEO_EXTENSION}"
        storage.write_bytes(
            storage.join(root, _videos_folder("charades"), path), _encode(render_clip(plan), fps, "mp4", gop)
        )
        split = "test" if v % 4 == 3 else "train"
        labels = tuple(sorted({s.label for s in segments}))
        videos.append(SynthVideo(video_id, path, split, None, labels, tuple(segments), frame_objects(plan)))
        rows[split].append(_charades_row(rng, video_id, segments, names, duration))
    files = {
        charades_format.CLASSES_FILE: "".join(
            f"{charades_format.class_id(k)} {name}\n" for k, name in enumerate(names)
        )
    }
    for split, file_name in (("train", charades_format.TRAIN_FILE), ("test", charades_format.TEST_FILE)):
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(charades_format.HEADER)
        writer.writerows(rows[split])
        files[file_name] = buffer.getvalue()
    return SynthSummary(
        "charades",
        "set",
        root,
        storage.join(root, _videos_folder("charades")),
        root,
        tuple(names),
        tuple((k,) for k in range(num_classes)),
        tuple(_write_files(root, files)),
        tuple(videos),
        fps,
    )


def _charades_row(
    rng: np.random.Generator, video_id: str, segments: list[Segment], names: list[str], duration: float
) -> list[str]:
    """A CSV row in the official column order; script and descriptions contain commas, as real ones do."""
    seen = [names[s.label] for s in segments]
    if seen:
        script = f"A person looks around, and sees {', '.join(seen)}."
        description = f"{len(seen)} objects come and go, one at a time or together; the background drifts."
    else:
        script = "A person waits, looks around, and leaves."
        description = "Nothing but clutter, drifting; no object of interest."
    return [
        video_id,
        f"SY{int(rng.integers(10, 100))}",
        _SCENES[int(rng.integers(len(_SCENES)))],
        str(int(rng.integers(4, 8))),
        str(int(rng.integers(4, 8))),
        "Yes",
        script,
        ";".join(sorted({name.split()[1] for name in seen})),
        description,
        ";".join(f"{charades_format.class_id(s.label)} {s.start:.2f} {s.end:.2f}" for s in segments),
        f"{duration:.2f}",
    ]


def _videos_folder(layout: str) -> str:
    return {"ucf101": "UCF-101", "hmdb51": "hmdb51_org", "charades": "Charades_v1_480"}[layout]


def _annotations_folder(layout: str) -> str:
    return {"ucf101": "ucfTrainTestlist", "hmdb51": "testTrainMulti_7030_splits", "charades": ""}[layout]


def _write_files(folder: str, files: dict[str, str]) -> list[str]:
    uris = []
    for name, text in files.items():
        uri = storage.join(folder, name)
        storage.write_bytes(uri, text.encode("utf-8"))
        uris.append(uri)
    return uris
