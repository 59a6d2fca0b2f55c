"""Golden datasets: a character's best approved frames, as a LoRA trainer reads them.

    shotline character dataset NAME --out DIR [--min-score 0.85]
    GET /api/v1/characters/{folder}/dataset?min_score=0.85      (the same, as a zip)

    DIR/
      frames/<shot>-<attempt>-<n>.png   the whole approved frame, square, at a training bucket
      frames/<shot>-<attempt>-<n>.txt   its caption: trigger first, then the shot's and the design prompt's tags
      faces/<shot>-<attempt>-<n>.png    the character's face, aligned (eyes level) with a margin, at a bucket
      faces/<shot>-<attempt>-<n>.txt
      manifest.json                     every image (file, source, score, sha256, size, kind, caption), the
                                        thresholds, and what was dropped and why

Which frames: the last succeeded attempt of every approved shot whose identity verdict scored the character at or
above `min_score` (the shot's character score is its worst frame; each frame's own IDR must reach it too).

Sizes: a picture goes to the largest bucket (512, 768, 1024) its short side reaches; its short side is resized to
the bucket and the long side cropped to a square around the face. A picture smaller than the smallest bucket is
upscaled to it when it needs at most MAX_UPSCALE (2x), otherwise dropped as too small: an upscaled blur teaches
the LoRA blur.

Near-duplicates (two frames of one clip, a re-render of the same seed, a re-encoded copy): a picture is dropped
when the frame or the face crop has a DCT perceptual hash within PHASH_MAX_DISTANCE bits of a kept one's, or its
face embedding (dlib, the identity backend that ships offline) is within EMBEDDING_MAX_DISTANCE of a kept one's.
Pictures are taken best score first, so the one kept is the best of its copies. How the two constants were
chosen is written beside them.

Pure logic down to `dataset_files`; `plan_dataset` reads the database and the ComfyUI servers, and every piece of
CPU or file work (decoding, hashing, embedding, encoding, writing, zipping) runs off the event loop.
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import math
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from shotline_controller.comfy.client import ComfyUnavailable, OutputGone, fetch_output_bytes
from shotline_controller.store.golden import GoldenStore
# the pictures an attempt saved, and the margin a face crop has around its box: as continuity reads them
from shotline_controller.workers.continuity import FACE_MARGIN, saved_images

BUCKETS = (512, 768, 1024)
MAX_UPSCALE = 2.0
DEFAULT_MIN_SCORE = 0.85
# Chosen from measured distances (bench-style, on ComfyUI's 69 template pictures, InsightFace's t1.jpg people and
# Tom Hanks photo): a JPEG q30/q60 re-encode, a brightness shift of +12 % or -6 %, a 0.5x/0.9x/1.1x resize moved the
# frame's pHash 0-4 bits, a 2 % crop shift 0-10 (a 5 % shift 3-18: no longer a copy); different pictures were at 24+
# bits (5th percentile of 1081 pairs), the closest being edits that keep pose and framing (an inpaint at 10, an edit
# taking a hat off at 4: the same training signal, dropped too) and an img2img pair sharing one silhouette at 12.
PHASH_MAX_DISTANCE = 10
# dlib unit-norm euclidean distance between the face embeddings (the metric of identity.CALIBRATIONS["dlib"]):
# re-encoded/resized photo faces measured 0.011-0.05; a mirrored copy 0.016-0.03 (the embedder averages a face
# and its mirror, so a flipped copy is a copy); the same person in another picture starts near 0.09 (5th
# percentile of identity.py's genuine pairs) and the identity boundary is 0.32. On generated (template) pictures a
# copy's face, detected again, moved a median 0.09-0.11 (its box moves), so there the pHash does the work and the
# embedding catches the same face pasted into another frame.
EMBEDDING_MAX_DISTANCE = 0.05
FACES, FRAMES = "faces", "frames"


class DatasetError(ValueError):
    """A dataset request that cannot be met: the field it is about, and why."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check_min_score(value) -> float:
    """`min_score` as a number in 0..1; DatasetError naming the field otherwise."""
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise DatasetError("min_score", f"must be a number between 0 and 1, got {str(value)[:40]!r}") from None
    if not math.isfinite(score) or not 0.0 <= score <= 1.0:
        raise DatasetError("min_score", f"must be between 0 and 1, got {str(value)[:40]}")
    return score


# --- perceptual hash and distances ---------------------------------------------------------------------------

def phash(rgb: np.ndarray) -> int:
    """The 64-bit DCT perceptual hash of an RGB (or grey) image: the 8x8 lowest frequencies of the 32x32 grey
    image's DCT, each bit set where the coefficient is above their median (the DC term left out of the median)."""
    import cv2
    image = np.asarray(rgb)
    if image.dtype != np.uint8:
        image = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].reshape(-1)
    bits = low > np.median(low[1:])
    return int("".join("1" if bit else "0" for bit in bits), 2)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def embedding_distance(a, b) -> float:
    """The euclidean distance between two embeddings made unit length (dlib's metric in identity.py)."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    return float(np.linalg.norm(a / max(np.linalg.norm(a), 1e-12) - b / max(np.linalg.norm(b), 1e-12)))


# --- sizes and crops -------------------------------------------------------------------------------------------

def bucket_for(short_side: int) -> int | None:
    """The largest bucket the short side reaches; the smallest when an upscale of at most MAX_UPSCALE reaches it;
    None: too small."""
    reached = [bucket for bucket in BUCKETS if short_side >= bucket]
    if reached:
        return reached[-1]
    return BUCKETS[0] if short_side * MAX_UPSCALE >= BUCKETS[0] else None


def square_at_bucket(rgb: np.ndarray, bucket: int, centre: tuple[float, float] | None = None) -> np.ndarray:
    """The short side resized to `bucket`, the long side cropped to a square around `centre` (x, y in the
    picture's pixels; the middle when None), kept inside the picture."""
    import cv2
    height, width = rgb.shape[:2]
    scale = bucket / min(height, width)
    size = (max(bucket, round(width * scale)), max(bucket, round(height * scale)))
    resized = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LANCZOS4)
    cx, cy = (width / 2, height / 2) if centre is None else centre
    left = round(min(max(cx * scale - bucket / 2, 0), size[0] - bucket))
    top = round(min(max(cy * scale - bucket / 2, 0), size[1] - bucket))
    return np.ascontiguousarray(resized[top:top + bucket, left:left + bucket])


def aligned_face(rgb: np.ndarray, box, landmarks=None, margin: float = FACE_MARGIN) -> np.ndarray | None:
    """A square crop of the face: the box's longer side widened by `margin` on each side, centred on the box,
    turned so the eyes are level when `landmarks` (5 points, left eye then right eye first) are given, and kept
    inside the picture (the square shrinks to fit a picture smaller than it). None for an unusable box."""
    import cv2
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        return None
    height, width = rgb.shape[:2]
    if not (x1 - x0 > 1 and y1 - y0 > 1) or not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return None
    side = min(max(x1 - x0, y1 - y0) * (1 + 2 * margin), width, height)
    cx = min(max((x0 + x1) / 2, side / 2), width - side / 2)
    cy = min(max((y0 + y1) / 2, side / 2), height - side / 2)
    angle = 0.0
    if landmarks is not None:
        points = np.asarray(landmarks, dtype=np.float64)
        if points.shape == (5, 2) and np.isfinite(points).all():
            (lx, ly), (rx, ry) = points[0], points[1]
            if rx - lx > 1:
                angle = math.degrees(math.atan2(ry - ly, rx - lx))
    if abs(angle) < 0.5:  # a plain crop: no resampling when the eyes are already level
        left, top = round(cx - side / 2), round(cy - side / 2)
        crop = rgb[top:top + int(side), left:left + int(side)]
    else:
        # rotate about the face centre (eyes level), then move the centre to the middle of a side x side output
        matrix = cv2.getRotationMatrix2D(((x0 + x1) / 2, (y0 + y1) / 2), angle, 1.0)
        matrix[:, 2] += (side / 2 - (x0 + x1) / 2, side / 2 - (y0 + y1) / 2)
        crop = cv2.warpAffine(rgb, matrix, (int(side), int(side)), flags=cv2.INTER_CUBIC,
                              borderMode=cv2.BORDER_REFLECT_101)
    return np.ascontiguousarray(crop) if min(crop.shape[:2]) >= 8 else None


# --- captions --------------------------------------------------------------------------------------------------

_WEIGHT = re.compile(r"^\((.*):\s*[0-9.]+\)$")


def prompt_tags(text: str) -> list[str]:
    """A prompt's comma-separated tags, stripped, ComfyUI weights "(tag:1.2)" and bare brackets removed."""
    tags = []
    for part in (text or "").replace("\n", ",").split(","):
        tag = part.strip()
        weighted = _WEIGHT.match(tag)
        tag = (weighted.group(1) if weighted else tag).strip("()[]{} ").strip()
        tag = re.sub(r"\s+", " ", tag)
        if tag:
            tags.append(tag)
    return tags


def caption(trigger: str, *prompts: str, extra: tuple[str, ...] = ()) -> str:
    """The trigger first, then `extra`, then the prompts' tags in order, each once (case-insensitive), the
    trigger itself not repeated."""
    seen, tags = {trigger.strip().lower()}, [trigger.strip()]
    for tag in (*extra, *(tag for prompt in prompts for tag in prompt_tags(prompt))):
        if tag.lower() not in seen:
            seen.add(tag.lower())
            tags.append(tag)
    return ", ".join(tags)


# --- which frames ----------------------------------------------------------------------------------------------

@dataclass
class Candidate:
    """One approved picture of the character: where it comes from, its score, and its face as the identity verdict
    found it."""
    shot_id: str
    shot_key: str
    batch_id: str
    attempt_id: str
    backend: str
    output: dict                  # {filename, subfolder, type}
    frame: int                    # the verdict's frame index
    score: float                  # the frame's IDR for the character
    shot_score: float             # the character's score over the shot (its worst frame)
    prompt: str
    box: list | None = None
    landmarks: list | None = None

    @property
    def source(self) -> dict:
        return {"shot": self.shot_key, "shot_id": self.shot_id, "batch": self.batch_id, "attempt": self.attempt_id,
                "backend": self.backend, "output": "/".join(p for p in (self.output.get("subfolder"),
                                                                        self.output["filename"]) if p),
                "frame": self.frame}

    @property
    def stem(self) -> str:
        key = re.sub(r"[^A-Za-z0-9._-]+", "_", self.shot_key)[:48] or "shot"
        return f"{key}-{self.attempt_id[:8]}-{self.frame}"


def frame_pictures(outputs: list[dict], frames: list[dict]) -> list[tuple[int, dict]]:
    """(verdict frame index, output) pairs: by position when the attempt saved one picture per checked frame; a
    video preset that saved only its last frame pairs that picture with the last checked frame."""
    images = saved_images(outputs)
    if not images or not frames:
        return []
    if len(images) == len(frames):
        return list(enumerate(images))
    return [(len(frames) - 1, images[-1])]


def candidates(rows: list[dict], character: str) -> list[Candidate]:
    """The pictures of `character` in rows of store/golden.py (one per approved attempt): each saved picture whose
    verdict frame found the character's face."""
    found = []
    for row in rows:
        frames = (row["verdict"] or {}).get("frames") or []
        for index, output in frame_pictures(row["outputs"], frames):
            frame = frames[index]
            match = (frame.get("characters") or {}).get(character) or {}
            face, idr = match.get("face"), match.get("idr")
            if face is None or not isinstance(idr, (int, float)):
                continue
            faces = frame.get("faces") or []
            detected = faces[face] if isinstance(face, int) and 0 <= face < len(faces) else {}
            detected = detected if isinstance(detected, dict) else {}
            found.append(Candidate(
                shot_id=str(row["shot_id"]), shot_key=row["shot_key"], batch_id=str(row["batch_id"]),
                attempt_id=str(row["attempt_id"]), backend=row["backend"], output=output, frame=index,
                score=float(idr), shot_score=float(row["score"]), prompt=(row["params"] or {}).get("prompt") or "",
                box=_numbers(detected.get("box"), (4,)), landmarks=_numbers(detected.get("landmarks"), (5, 2))))
    return found


def _numbers(values, shape: tuple[int, ...]) -> list | None:
    """`values` as a list of finite numbers of `shape` (a face box, its landmarks), or None when it is not one."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array.tolist() if array.shape == shape and np.isfinite(array).all() else None


def select_by_score(found: list[Candidate], min_score: float) -> tuple[list[Candidate], list[dict]]:
    """The candidates at or above `min_score` (the shot's character score and the frame's own), best first, and
    the others as dropped entries."""
    kept, dropped = [], []
    for candidate in found:
        score = min(candidate.score, candidate.shot_score)
        if score >= min_score:
            kept.append(candidate)
        else:
            dropped.append({"source": candidate.source, "score": round(score, 4),
                            "reason": f"score {score:.3f} < min_score {min_score:g}"})
    kept.sort(key=lambda c: (-c.score, c.shot_key, c.frame))
    return kept, dropped


@dataclass
class Picture:
    """A candidate read and measured: its frame (RGB uint8), its face crop, their hashes, its face embedding."""
    candidate: Candidate
    frame: np.ndarray
    face: np.ndarray | None
    frame_hash: int
    face_hash: int | None
    embedding: np.ndarray | None


def measured(candidate: Candidate, rgb: np.ndarray, embed=None) -> Picture:
    """`embed(rgb, box, landmarks)` -> a face embedding or None (the identity backend), optional."""
    face = aligned_face(rgb, candidate.box, candidate.landmarks) if candidate.box else None
    embedding = embed(rgb, candidate.box, candidate.landmarks) if embed is not None and candidate.box else None
    return Picture(candidate, rgb, face, phash(rgb), phash(face) if face is not None else None,
                   None if embedding is None else np.asarray(embedding, dtype=np.float64))


def near_copy(picture: Picture, kept: Picture) -> str | None:
    """Why `picture` is a near-copy of `kept`, or None."""
    found = []
    frame_bits = hamming(picture.frame_hash, kept.frame_hash)
    if frame_bits <= PHASH_MAX_DISTANCE:
        found.append(f"frame pHash distance {frame_bits} <= {PHASH_MAX_DISTANCE}")
    if picture.face_hash is not None and kept.face_hash is not None:
        face_bits = hamming(picture.face_hash, kept.face_hash)
        if face_bits <= PHASH_MAX_DISTANCE:
            found.append(f"face pHash distance {face_bits} <= {PHASH_MAX_DISTANCE}")
    if picture.embedding is not None and kept.embedding is not None:
        distance = embedding_distance(picture.embedding, kept.embedding)
        if distance <= EMBEDDING_MAX_DISTANCE:
            found.append(f"face embedding distance {distance:.3f} <= {EMBEDDING_MAX_DISTANCE}")
    return "; ".join(found) or None


def deduplicated(pictures: list[Picture]) -> tuple[list[Picture], list[dict]]:
    """The pictures (best first) with every near-copy of an earlier one left out, and the dropped entries naming
    the picture each copies."""
    kept, dropped = [], []
    for picture in pictures:
        original = next(((other, why) for other in kept if (why := near_copy(picture, other))), None)
        if original is None:
            kept.append(picture)
        else:
            dropped.append({"source": picture.candidate.source, "score": round(picture.candidate.score, 4),
                            "reason": f"near-copy of {original[0].candidate.stem}: {original[1]}",
                            "copy_of": original[0].candidate.source})
    return kept, dropped


# --- the dataset ---------------------------------------------------------------------------------------------

@dataclass
class Plan:
    character: str                # the name the verdicts use
    folder: str                   # the library folder
    trigger: str
    design_prompt: str
    min_score: float
    pictures: list[Picture] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)


def _png(rgb: np.ndarray) -> bytes:
    import cv2
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode a PNG")
    return data.tobytes()


def dataset_files(plan: Plan) -> tuple[dict[str, bytes], dict]:
    """relative path -> bytes of every file of the dataset (images, captions, manifest.json), and the manifest."""
    files, images, dropped = {}, [], list(plan.dropped)
    for picture in plan.pictures:
        candidate = picture.candidate
        captions = {FRAMES: caption(plan.trigger, candidate.prompt, plan.design_prompt),
                    FACES: caption(plan.trigger, candidate.prompt, plan.design_prompt, extra=("face close-up",))}
        for kind, rgb in ((FRAMES, picture.frame), (FACES, picture.face)):
            if rgb is None:
                dropped.append({"source": candidate.source, "score": round(candidate.score, 4), "kind": kind[:-1],
                                "reason": "no face box in the identity verdict"})
                continue
            bucket = bucket_for(min(rgb.shape[:2]))
            if bucket is None:
                dropped.append({"source": candidate.source, "score": round(candidate.score, 4), "kind": kind[:-1],
                                "reason": f"too small: {min(rgb.shape[:2])} px, the smallest bucket "
                                          f"{BUCKETS[0]} needs more than {MAX_UPSCALE:g}x"})
                continue
            centre = None
            if kind == FRAMES and candidate.box:
                x0, y0, x1, y1 = (float(v) for v in candidate.box)
                centre = ((x0 + x1) / 2, (y0 + y1) / 2)
            data = _png(square_at_bucket(rgb, bucket, centre))
            name = f"{kind}/{candidate.stem}.png"
            files[name] = data
            files[name[:-4] + ".txt"] = (captions[kind] + "\n").encode()
            images.append({"file": name, "caption_file": name[:-4] + ".txt", "kind": kind[:-1],
                           "source": candidate.source, "score": round(candidate.score, 4),
                           "shot_score": round(candidate.shot_score, 4),
                           "sha256": hashlib.sha256(data).hexdigest(), "size": [bucket, bucket],
                           "upscaled": min(rgb.shape[:2]) < bucket, "caption": captions[kind]})
    manifest = {"character": plan.character, "folder": plan.folder, "trigger": plan.trigger,
                "design_prompt": plan.design_prompt,
                "thresholds": {"min_score": plan.min_score, "phash_max_distance": PHASH_MAX_DISTANCE,
                               "embedding_max_distance": EMBEDDING_MAX_DISTANCE, "buckets": list(BUCKETS),
                               "max_upscale": MAX_UPSCALE, "face_margin": FACE_MARGIN},
                "counts": {"frames": sum(i["kind"] == "frame" for i in images),
                           "faces": sum(i["kind"] == "face" for i in images), "dropped": len(dropped)},
                "images": images, "dropped": dropped}
    files["manifest.json"] = (json.dumps(manifest, indent=2) + "\n").encode()
    return files, manifest


def write_dataset(files: dict[str, bytes], out: Path) -> None:
    """Write the files under `out`, a new or empty folder or an earlier dataset (which is replaced: its frames/
    and faces/ images and captions, its manifest). Any other folder is refused: its files are not ours to delete."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DatasetError("out", f"{out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise DatasetError("out", f"{out} is not empty and holds no dataset (no manifest.json): give a new or "
                                  "empty folder")
    for kind in (FRAMES, FACES):
        folder = out / kind
        if folder.is_dir():
            for old in folder.iterdir():
                if old.is_file() and old.suffix in (".png", ".txt"):
                    old.unlink()
    for name, data in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def zipped(files: dict[str, bytes], root: str) -> bytes:
    """The dataset as a zip, every file under `root/` (PNGs stored, text deflated)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(f"{root}/{name}", data,
                             compress_type=zipfile.ZIP_STORED if name.endswith(".png") else zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def below_entries(rows: list[dict], min_score: float) -> list[dict]:
    """Dropped entries for the approved attempts store/golden.py found under the threshold."""
    return [{"source": {"shot": row["shot_key"], "shot_id": str(row["shot_id"]), "batch": str(row["batch_id"]),
                        "attempt": str(row["attempt_id"]), "backend": row["backend"]},
             "score": round(float(row["score"]), 4), "reason": f"score {row['score']:.3f} < min_score {min_score:g}"}
            for row in rows]


# --- reading it all: the library, PostgreSQL, the ComfyUI servers that rendered the frames ---------------------

def find_character(library: Path, name: str):
    """The library's character by folder name, else by its sheet's name; DatasetError("character") otherwise."""
    from shotline.core.characters import CharacterSheetError, find_characters, load_character
    folders = find_characters([library])
    try:
        if name in folders:
            return load_character(folders[name])
        for folder in folders.values():
            character = load_character(folder)
            if character.name == name:
                return character
    except CharacterSheetError as error:
        raise DatasetError("character", f"{name}: {error}") from None
    known = ", ".join(sorted(folders)[:20]) or "none"
    raise DatasetError("character", f"no character {name!r} in {library} (known: {known})")


def dlib_embedding():
    """embed(rgb, box, landmarks) with the offline identity embedder (dlib), and why it is unavailable (or "")."""
    from shotline.core.face_embedding import load_embedder
    from shotline.core.faces import Face
    try:
        embedder = load_embedder("dlib")
    except (ImportError, OSError, RuntimeError) as error:  # ModelMissingError is an OSError
        return None, f"dlib face embeddings unavailable ({error}): near-copies found by pHash only"

    def embed(rgb, box, landmarks):
        points = None if landmarks is None else np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
        return embedder.embed(rgb, Face(tuple(float(v) for v in box), 1.0, points))
    return embed, ""


def _decode(data: bytes) -> np.ndarray | None:
    import cv2
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def measure_all(fetched: list[tuple[Candidate, bytes]]) -> tuple[list[Picture], list[dict], str]:
    """Decode and measure the fetched pictures (CPU work: run it off the event loop)."""
    embed, note = dlib_embedding()
    pictures, dropped = [], []
    for candidate, data in fetched:
        rgb = _decode(data)
        if rgb is None:
            dropped.append({"source": candidate.source, "score": round(candidate.score, 4),
                            "reason": "the file is not a readable image"})
            continue
        pictures.append(measured(candidate, rgb, embed))
    return pictures, dropped, note


async def plan_dataset(pool, session, library: Path, name: str, min_score: float) -> tuple[Plan, list[str]]:
    """Everything the dataset needs, read: the character, its approved pictures at or above `min_score` fetched
    from the ComfyUI that rendered each, measured and deduplicated. Returns the plan and notes for the user."""
    min_score = check_min_score(min_score)
    character = await asyncio.to_thread(find_character, Path(library), name)
    store = GoldenStore(pool)
    rows = await store.approved_pictures(character.name, min_score)
    kept, dropped = select_by_score(candidates(rows, character.name), min_score)
    dropped += below_entries(await store.below_threshold(character.name, min_score), min_score)
    fetched = []
    for candidate in kept:
        try:
            fetched.append((candidate, await fetch_output_bytes(session, candidate.backend, candidate.output)))
        except (OutputGone, ComfyUnavailable) as error:
            dropped.append({"source": candidate.source, "score": round(candidate.score, 4),
                            "reason": f"cannot fetch the picture: {error}"})
    pictures, unreadable, note = await asyncio.to_thread(measure_all, fetched)
    pictures, copies = deduplicated(pictures)
    plan = Plan(character=character.name, folder=character.folder.name, trigger=character.name,
                design_prompt=character.sheet.design_prompt, min_score=min_score, pictures=pictures,
                dropped=dropped + unreadable + copies)
    return plan, [note] if note else []


async def build_dataset(pool, library: Path, name: str, min_score: float) -> tuple[dict[str, bytes], dict]:
    """The dataset's files (relative path -> bytes) and its manifest."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120, sock_connect=10)) as session:
        plan, notes = await plan_dataset(pool, session, library, name, min_score)
    files, manifest = await asyncio.to_thread(dataset_files, plan)
    if notes:
        manifest["notes"] = notes
        files["manifest.json"] = (json.dumps(manifest, indent=2) + "\n").encode()
    return files, manifest


# --- the command ---------------------------------------------------------------------------------------------

async def dataset_command(args) -> int:
    """`shotline character dataset NAME --out DIR [--min-score 0.85] [--library PATH]`."""
    from shotline_controller.cli import open_database  # cli.py imports this module for add_parser
    from shotline_controller.settings import load_settings

    settings = load_settings()
    try:
        min_score = check_min_score(args.min_score)
        library = args.library or settings.character_library
        async with open_database(settings) as pool:
            files, manifest = await build_dataset(pool, library, args.name, min_score)
        await asyncio.to_thread(write_dataset, files, args.out)
    except DatasetError as error:
        flag = {"min_score": "--min-score", "out": "--out"}.get(error.field, error.field)
        print(f"error: {flag}: {error.message}", file=sys.stderr)
        return 2
    counts = manifest["counts"]
    print(f"{manifest['character']}: {counts['frames']} frame(s) and {counts['faces']} face crop(s) at "
          f"min_score {min_score:g} in {args.out} ({counts['dropped']} dropped: see manifest.json)")
    for note in manifest.get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    return 0


def add_parser(character_commands) -> None:
    """`character dataset` under `shotline character` (cli.py calls this)."""
    dataset = character_commands.add_parser(
        "dataset", help="export a character's approved frames as a LoRA training set: face crops and frames at "
                        "512/768/1024, near-copies dropped, a caption .txt beside each image, manifest.json")
    dataset.add_argument("name", help="the character's folder name in the library (or its sheet's name)")
    dataset.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write the dataset to")
    dataset.add_argument("--min-score", type=str, default=str(DEFAULT_MIN_SCORE), metavar="SCORE",
                         help=f"identity score 0..1 a frame needs (default {DEFAULT_MIN_SCORE})")
    dataset.add_argument("--library", type=Path, help="library folder (default: SHOTLINE_CHARACTER_LIBRARY, else "
                                                      "ComfyUI's models/shotline_characters)")
    dataset.set_defaults(run=dataset_command)
