"""Benchmark loaders: a local directory in a benchmark's published layout -> a list of `Item`s.

    items = load_benchmark("editverse", "/data/EditVerseBench/EditVerseBench")
    items = load_benchmark("ivebench_short", "/data/IVEBench", annotation="ivebench.json")
    items = load_benchmark("viebench", "/data/VIE-Bench", fields={"instruction": "edit_prompt"})

Every item is returned, also those the editor cannot run (they need a mask, a first frame, a pose,
depth or sketch video, or a reference image): `Item.extra_inputs` names what they need, so
`generate` lists them instead of silently dropping them. A missing directory, file or field raises
`BenchmarkError`, whose message says where the data comes from and how it must be laid out.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

log = logging.getLogger(__name__)

# Names that `load_benchmark` accepts; IVE-Bench is two benchmarks, scored separately.
BENCHMARKS = ("editverse", "ivebench_short", "ivebench_long", "viebench")
# IVE-Bench's subsets by source frame count (inclusive), as its README defines them; its sources have
# 32 to 1024 frames, so a source outside that range is in neither subset and is reported, not scored.
IVEBENCH_SUBSETS = {"ivebench_short": (32, 128), "ivebench_long": (129, 1024)}
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

EDITVERSE_SOURCE = (
    "EditVerseBench comes from the EditVerse release (Hugging Face dataset 'sooyek/EditVerseBench'). "
    "Lay it out as <root>/test.json (keys \"0\", \"1\", ...; each entry with \"<text>\", \"<video1>\", "
    "\"<video1> link\", \"direction\", \"target_prompt\", \"type\", \"source_prompt\") and the media folders "
    "beside it (videos/, and poses/, depths/, sketchs/, images/, ... for conditioned items) holding the files that "
    "\"<video1>\" and the other <videoN>/<imageN> keys name, relative to <root> (EditVerse's download_source_video.py "
    "fetches videos/ from Pixabay)"
)
IVEBENCH_SOURCE = (
    "IVE-Bench comes from the IVEBench release (Hugging Face dataset 'Coraxor/IVEBench'). Lay it out as "
    "<root>/<annotation> (a JSON list of objects with \"id\", \"src_video_name\", \"category\", \"subcategory\", "
    "\"source_prompt\", \"edit_prompt\", \"target_prompt\") and <root>/<videos_dir>/ holding each source as "
    "<src_video_name> (an mp4, or a folder of frames), with or without the .mp4 extension"
)
VIEBENCH_SOURCE = (
    "VIE-Bench (140 instances in 9 categories) comes from its authors' release. Lay it out as "
    "<root>/<annotation> (a JSON list of objects, or an object keyed by item id) and <root>/<videos_dir>/ "
    "holding the sources; the field names are set by benchmark.fields in configs/eval"
)
VIEBENCH_DEFAULT_FIELDS = {
    "id": "id", "source": "video", "instruction": "instruction", "target_prompt": "target_prompt",
    "source_prompt": "source_prompt", "category": "category", "reference_image": "reference_image",
}
# VIE-Bench's published category sizes: a load that finds other counts says so (a field-name mistake shows here).
VIEBENCH_CATEGORIES = {"Object Swap": 25, "Color Change": 10, "Add": 30, "Remove": 30, "Style": 10,
                       "Tone/Weather": 5, "Hybrid": 10, "Reference Swap": 10, "Reference Add": 10}

# What an EditVerseBench item needs besides its source video, by words in its `type`.
_EXTRA_INPUT_WORDS = (("mask", "mask"), ("first_frame", "first frame"), ("first frame", "first frame"),
                      ("pose", "pose video"), ("depth", "depth video"), ("sketch", "sketch video"),
                      ("reference", "reference image"))


class BenchmarkError(ValueError):
    """A benchmark directory is missing, incomplete or not in its published layout."""


@dataclass
class Item:
    """One benchmark instance.

    Attributes:
        id: the benchmark's item id (the results folder name `<run>/<benchmark>/<id>/`).
        source: the source video: an mp4 path or a folder of frames.
        instruction: the edit instruction given to the editor.
        target_prompt: a caption of the wanted result (text-alignment metrics score against it).
        category: the benchmark's category (leaderboards group by it).
        source_prompt: a caption of the source, when the benchmark has one.
        subcategory: IVE-Bench's subcategory, else "".
        extra_inputs: what the item needs besides the source video and the instruction
            ({"reference image": path, ...}); empty when the editor can run it.
        fields: the item's raw annotation, for metrics that need benchmark-specific fields.
    """

    id: str
    source: str
    instruction: str
    target_prompt: str
    category: str
    source_prompt: str = ""
    subcategory: str = ""
    extra_inputs: dict = field(default_factory=dict)
    fields: dict = field(default_factory=dict)

    @property
    def editor_instruction(self) -> str:
        """The instruction as the editor takes it: EditVerse's `<video1>` tag removed (the judge
        sees `instruction` as EditVerse's scorer does, tag included)."""
        return re.sub(r"\s+", " ", re.sub(r"<video1>", " ", self.instruction)).strip()

    @property
    def runnable(self) -> bool:
        """True when the editor takes everything this item needs (a video and an instruction)."""
        return not self.extra_inputs


def _require_dir(path: Path, what: str, source: str) -> Path:
    if not path.is_dir():
        raise BenchmarkError(f"{what} '{path}' does not exist or is not a folder. {source}")
    return path


def _read_json(path: Path, source: str):
    if not path.is_file():
        raise BenchmarkError(f"annotation file '{path}' does not exist. {source}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"annotation file '{path}' is not valid JSON ({exc}). {source}") from exc


def _field(entry: Mapping, key: str, where: str, source: str) -> str:
    if key not in entry:
        raise BenchmarkError(f"{where} has no field \"{key}\" (it has {sorted(entry)}). {source}")
    value = entry[key]
    return "" if value is None else str(value)


def _find_source(folder: Path, name: str, where: str, source: str) -> Path:
    """`name` in `folder` as a file, a frame folder, or with a video extension added."""
    candidates = [folder / name] + [folder / (name + ext) for ext in VIDEO_EXTENSIONS]
    stem = os.path.splitext(name)[0]
    if stem != name:
        candidates.append(folder / stem)  # a frame folder named without the extension
    for path in candidates:
        if path.is_file() or (path.is_dir() and any(frame_files(path))):
            return path
    raise BenchmarkError(f"{where}: source video '{name}' is not in '{folder}' (as a file or a frame folder). {source}")


def _source_or_blank(folder: Path, name: str, where: str, source: str, required: bool) -> str:
    """`_find_source`, or "" for a missing source when it is not `required`."""
    try:
        return str(_find_source(folder, name, where, source))
    except BenchmarkError:
        if required:
            raise
        return ""


def frame_files(folder: Path) -> list[Path]:
    """The image files of a frame folder, in natural order (frame_2 before frame_10)."""
    def key(p: Path):
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]

    return sorted((p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS), key=key)


# EditVerseBench's media folders that hold inputs other than a source video to edit.
EDITVERSE_INPUT_FOLDERS = {"poses": "pose video", "depths": "depth video", "sketchs": "sketch video",
                           "inpaint_video_and_masks": "mask", "edited_first_frame": "first frame",
                           "images": "reference image"}


def load_editverse(root, require_sources: bool = True, **_) -> list[Item]:
    """EditVerseBench: `<root>/test.json` and the media folders beside it (200 items in 20 categories).

    Fields: `<text>` is the instruction (with EditVerse's `<video1>` tags; `Item.editor_instruction`
    drops them), `target_prompt` the caption the text metrics score against, `type` the category,
    `source_prompt` the source caption, `<video1>` the source's path relative to `<root>`
    (`videos/x.mp4`; a bare name is looked up in `videos/`). An item whose `<video1>` lies in a
    conditioning folder (`poses/`, `depths/`, `sketchs/`, `inpaint_video_and_masks/`,
    `edited_first_frame/`, `images/`), or that has other `<videoN>`/`<imageN>` keys, needs inputs the
    editor does not take: it is kept, with `extra_inputs` naming them. `require_sources=False`
    (scoring results that carry their own `video1.mp4`): a source missing from `videos/` gives
    `Item.source == ""` instead of an error.
    """
    root = _require_dir(Path(root), "EditVerseBench folder", EDITVERSE_SOURCE)
    data = _read_json(root / "test.json", EDITVERSE_SOURCE)
    if not isinstance(data, dict):
        raise BenchmarkError(f"'{root / 'test.json'}' must be an object keyed \"0\", \"1\", ...; got a {type(data).__name__}. {EDITVERSE_SOURCE}")
    videos = _require_dir(root / "videos", "EditVerseBench videos folder", EDITVERSE_SOURCE)
    items = []
    for key in sorted(data, key=lambda k: (len(k), k)):
        entry = data[key]
        where = f"'{root / 'test.json'}' entry \"{key}\""
        video1 = _field(entry, "<video1>", where, EDITVERSE_SOURCE)
        category = _field(entry, "type", where, EDITVERSE_SOURCE)
        extra = {}
        for k, v in entry.items():
            m = re.fullmatch(r"<(video|image)(\d+)>", k)
            if not (m and v):
                continue
            folder = Path(str(v)).parts[0] if len(Path(str(v)).parts) > 1 else ""
            if k == "<video1>" and folder not in EDITVERSE_INPUT_FOLDERS:
                continue
            path = root / str(v) if folder else videos / str(v)
            extra[EDITVERSE_INPUT_FOLDERS.get(folder) or _extra_input_kind(category, m.group(1), k)] = str(path)
        source = root / video1 if (root / video1).is_file() else None
        items.append(Item(
            id=str(key), source=str(source or _source_or_blank(videos, video1, where, EDITVERSE_SOURCE, require_sources)),
            instruction=_field(entry, "<text>", where, EDITVERSE_SOURCE),
            target_prompt=_field(entry, "target_prompt", where, EDITVERSE_SOURCE),
            source_prompt=_field(entry, "source_prompt", where, EDITVERSE_SOURCE),
            category=category, extra_inputs=extra, fields=dict(entry),
        ))
    return items


def _extra_input_kind(category: str, media: str, key: str) -> str:
    """Name an extra input from the item's type ("pose video", "reference image", ...)."""
    low = category.lower()
    for word, kind in _EXTRA_INPUT_WORDS:
        if word in low:
            return kind
    return f"{'image' if media == 'image' else 'video'} {key}"


def _ivebench_frames(path: Path) -> int:
    from liveditor.video import probe_video

    return len(frame_files(path)) if path.is_dir() else probe_video(path).num_frames


def ivebench_subset(frames: int) -> Optional[str]:
    """The IVE-Bench subset of a source of `frames` frames, or None outside both (fewer than 32 or
    more than 1024: not an IVE-Bench source as published, e.g. a frame-sampled copy)."""
    return next((name for name, (lo, hi) in IVEBENCH_SUBSETS.items() if lo <= frames <= hi), None)


def load_ivebench(root, subset: str = "ivebench_short", annotation: str = "ivebench.json",
                  videos_dir: str = "videos", outside: Optional[list] = None, **_) -> list[Item]:
    """IVE-Bench, one subset: Short (sources of 32-128 frames) or Long (129-1024).

    `<root>/<annotation>` is a list of objects with `id`, `src_video_name`, `category`,
    `subcategory`, `source_prompt`, `edit_prompt` (the instruction) and `target_prompt`; sources
    are `<root>/<videos_dir>/<src_video_name>`, an mp4 or a frame folder. The subset is decided by
    the source's frame count, so the sources are needed to score too. A source outside both subsets
    (fewer than 32 frames or more than 1024) is in neither: it is logged as a warning and
    appended to `outside` as `{"id", "source", "frames"}`, never dropped silently.
    """
    if subset not in IVEBENCH_SUBSETS:
        raise BenchmarkError(f"IVE-Bench subset must be one of {sorted(IVEBENCH_SUBSETS)}, got {subset!r}")
    lo, hi = IVEBENCH_SUBSETS[subset]
    root = _require_dir(Path(root), "IVE-Bench folder", IVEBENCH_SOURCE)
    data = _read_json(root / annotation, IVEBENCH_SOURCE)
    if not isinstance(data, list):
        raise BenchmarkError(f"'{root / annotation}' must be a JSON list of objects; got a {type(data).__name__}. {IVEBENCH_SOURCE}")
    videos = _require_dir(root / videos_dir, "IVE-Bench videos folder", IVEBENCH_SOURCE)
    items, strays = [], []
    for n, entry in enumerate(data):
        where = f"'{root / annotation}' entry {n}"
        src = _find_source(videos, _field(entry, "src_video_name", where, IVEBENCH_SOURCE), where, IVEBENCH_SOURCE)
        frames = _ivebench_frames(src)
        if ivebench_subset(frames) is None:
            strays.append({"id": _field(entry, "id", where, IVEBENCH_SOURCE), "source": str(src), "frames": frames})
        if not lo <= frames <= hi:
            continue
        items.append(Item(
            id=_field(entry, "id", where, IVEBENCH_SOURCE), source=str(src),
            instruction=_field(entry, "edit_prompt", where, IVEBENCH_SOURCE),
            target_prompt=_field(entry, "target_prompt", where, IVEBENCH_SOURCE),
            source_prompt=_field(entry, "source_prompt", where, IVEBENCH_SOURCE),
            category=_field(entry, "category", where, IVEBENCH_SOURCE),
            subcategory=_field(entry, "subcategory", where, IVEBENCH_SOURCE), fields=dict(entry),
        ))
    if strays:
        log.warning("IVE-Bench at '%s': %d source(s) outside both subsets (IVE-Bench's sources have 32-1024 frames; "
                    "Short 32-128, Long 129-1024) are scored in neither: %s", root, len(strays),
                    ", ".join(f"{s['id']} ({s['frames']} frames)" for s in strays[:10]) + (" ..." if len(strays) > 10 else ""))
        if outside is not None:
            outside.extend(strays)
    return items


def load_viebench(root, annotation: str = "annotations.json", videos_dir: str = "videos",
                  fields: Optional[Mapping] = None, require_sources: bool = True, **_) -> list[Item]:
    """VIE-Bench: field names come from `fields` (defaults `VIEBENCH_DEFAULT_FIELDS`).

    Reference edits (Reference Swap, Reference Add) take an image (`fields.reference_image`): they
    are kept with `extra_inputs={"reference image": path}`. `target_prompt`, `source_prompt` and
    `reference_image` may be absent from an entry; `id`, `source`, `instruction` and `category`
    may not. `require_sources=False`: a missing source gives `Item.source == ""` (as EditVerseBench).
    """
    names = {**VIEBENCH_DEFAULT_FIELDS, **dict(fields or {})}
    root = _require_dir(Path(root), "VIE-Bench folder", VIEBENCH_SOURCE)
    data = _read_json(root / annotation, VIEBENCH_SOURCE)
    if isinstance(data, dict):
        data = [{names["id"]: k, **v} for k, v in data.items()]
    videos = _require_dir(root / videos_dir, "VIE-Bench videos folder", VIEBENCH_SOURCE)
    items = []
    for n, entry in enumerate(data):
        where = f"'{root / annotation}' entry {n}"
        extra = {}
        ref = entry.get(names["reference_image"])
        if ref:
            ref_path = root / str(ref) if (root / str(ref)).exists() else videos / str(ref)
            extra["reference image"] = str(ref_path)
        instruction = _field(entry, names["instruction"], where, VIEBENCH_SOURCE)
        items.append(Item(
            id=_field(entry, names["id"], where, VIEBENCH_SOURCE),
            source=_source_or_blank(videos, _field(entry, names["source"], where, VIEBENCH_SOURCE), where, VIEBENCH_SOURCE,
                                    require_sources),
            instruction=instruction,
            target_prompt=str(entry.get(names["target_prompt"]) or instruction),
            source_prompt=str(entry.get(names["source_prompt"]) or ""),
            category=_field(entry, names["category"], where, VIEBENCH_SOURCE), extra_inputs=extra, fields=dict(entry),
        ))
    counts: dict = {}
    for it in items:
        counts[it.category] = counts.get(it.category, 0) + 1
    if counts != VIEBENCH_CATEGORIES:
        log.warning("VIE-Bench at '%s': categories %s differ from the release's %s (a subset, or benchmark.fields naming "
                    "the wrong field?)", root, counts, VIEBENCH_CATEGORIES)
    return items


def load_benchmark(name: str, root, **options) -> list[Item]:
    """Items of benchmark `name` (one of `BENCHMARKS`) from `root`; `options` are the loader's keywords
    (`require_sources=False` tolerates missing EditVerseBench and VIE-Bench sources; `outside=[]`
    collects IVE-Bench sources in neither subset)."""
    if name == "editverse":
        items = load_editverse(root, **options)
    elif name in IVEBENCH_SUBSETS:
        items = load_ivebench(root, subset=name, **options)
    elif name == "viebench":
        items = load_viebench(root, **options)
    else:
        raise BenchmarkError(f"unknown benchmark {name!r}: choose from {list(BENCHMARKS)}")
    ids = [it.id for it in items]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise BenchmarkError(f"benchmark {name} at '{root}' has duplicate item ids {dup[:5]}: ids name result folders and must be unique")
    return items
