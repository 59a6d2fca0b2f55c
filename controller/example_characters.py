"""The example characters `python3 install.py` puts in the character library, from a photo that ships in a package.

    python -m shotline_controller.example_characters [--library DIR] [--inputs DIR]

No image of a person is committed to this repository and none is downloaded: the faces come from InsightFace's
sample photo `t1.jpg` (six people in a row, inside the `insightface` wheel). `example_a` is its leftmost person and
`example_b` the next one. Each gets four references made from that one photo (the face, mirrored, a JPEG-q50
copy and a 0.6x copy), which is enough for the identity checks to tell the two apart and for the example render to
show the whole loop; a real character needs real references (front, three-quarter, profile, expressions).
With `--inputs DIR` it also writes `example_pair.png` there: the two faces side by side (520 x 200), the input of
the example shot list's face-repair shot. Safe to run again: what exists is left as it is.
"""
from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
from shotline.core.characters import SHEET_FILE, parse_sheet, write_character
from shotline.core.faces import load_detector

from shotline_controller.settings import load_settings

EXAMPLES = {
    "example_a": {"name": "Example A", "person": 0},
    "example_b": {"name": "Example B", "person": 1},
}
TILE = 200
GAP = 40
PAIR_FILE = "example_pair.png"


def sample_photo() -> np.ndarray:
    path = Path(str(resources.files("insightface"))) / "data" / "images" / "t1.jpg"
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"{path} (InsightFace's sample photo) is missing: pip install insightface")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def face_tiles(photo: np.ndarray, margin: float = 0.8) -> list[np.ndarray]:
    """Every face of the photo, left to right, with `margin` of its size around it, as a TILE x TILE image."""
    faces = load_detector("mtcnn").detect(photo.astype(np.float32) / 255.0)
    height, width = photo.shape[:2]
    tiles = []
    for face in faces:
        x0, y0, x1, y1 = face.box
        pad_x, pad_y = (x1 - x0) * margin, (y1 - y0) * margin
        crop = photo[max(0, int(y0 - pad_y)):min(height, int(y1 + pad_y)),
                     max(0, int(x0 - pad_x)):min(width, int(x1 + pad_x))]
        tiles.append(cv2.resize(crop, (TILE, TILE), interpolation=cv2.INTER_AREA))
    return tiles


def _png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def references_of(tile: np.ndarray) -> dict[str, bytes]:
    jpeg = cv2.imdecode(cv2.imencode(".jpg", cv2.cvtColor(tile, cv2.COLOR_RGB2BGR),
                                     [cv2.IMWRITE_JPEG_QUALITY, 50])[1], cv2.IMREAD_COLOR)
    small = cv2.resize(tile, (int(TILE * 0.6),) * 2, interpolation=cv2.INTER_AREA)
    return {"front.png": _png(tile), "mirrored.png": _png(np.ascontiguousarray(tile[:, ::-1])),
            "jpeg_q50.png": _png(cv2.cvtColor(jpeg, cv2.COLOR_BGR2RGB)), "small.png": _png(small)}


def ensure_example_characters(library: Path) -> list[str]:
    """Create the example characters missing from `library`; the folders created."""
    missing = [folder for folder in EXAMPLES if not (library / folder / SHEET_FILE).is_file()]
    if not missing:
        return []
    tiles = face_tiles(sample_photo())
    for folder in missing:
        example = EXAMPLES[folder]
        sheet = parse_sheet({
            "name": example["name"], "style": "photo",
            "design_prompt": f"portrait photo of a person, {example['name'].lower()} of Shotline's examples",
            "negative_prompt": "cartoon, drawing",
        })
        write_character(library, folder, sheet, references_of(tiles[example["person"]]))
    return missing


def pair_picture(tiles: list[np.ndarray]) -> np.ndarray:
    """example_a and example_b side by side on grey, left to right: 520 x 200, both sides multiples of 8."""
    gap = np.full((TILE, GAP, 3), 128, np.uint8)
    people = [tiles[EXAMPLES[folder]["person"]] for folder in EXAMPLES]
    return np.ascontiguousarray(np.hstack([gap, people[0], gap, people[1], gap]))


def ensure_example_inputs(folder: Path) -> Path:
    """The face-repair example's input picture in `folder` (made once)."""
    path = Path(folder) / PAIR_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(pair_picture(face_tiles(sample_photo()))))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", type=Path, help="the character library (default: the configured one)")
    parser.add_argument("--inputs", type=Path, help="also write the example shot list's input picture here")
    args = parser.parse_args()
    library = args.library or load_settings().character_library
    created = ensure_example_characters(library)
    print(f"example characters in {library}: " + (f"created {', '.join(created)}" if created else "already there"))
    if args.inputs:
        print(f"example input picture: {ensure_example_inputs(args.inputs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
