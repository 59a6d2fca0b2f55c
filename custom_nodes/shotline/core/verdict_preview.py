"""What a check node shows on the canvas: its frame with the faces boxed and the verdict as a caption bar.

Everything is drawn from the verdict dict the node emits (the one the controller reads), never from a second
measurement, so the picture cannot disagree with the verdict. Pure numpy + OpenCV, no ComfyUI import.

Identity verdicts hold per-frame faces (`frames[i].faces[k].box`, `frames[i].characters[name].face`); a shot
verdict has none of its own and borrows them from the identity verdict it was given (`faces_from`). Quality and
temporal verdicts have no faces: their preview is the frame and the caption.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .video_encode import to_uint8_rgb

PASS_COLOUR = (40, 200, 60)      # RGB, like the IMAGE tensors
FAIL_COLOUR = (220, 40, 40)
REVIEW_COLOUR = (230, 160, 0)    # a shot to review, or an extra face the check allows
TEXT_COLOUR = (255, 255, 255)
BAND_COLOURS = {"approve": PASS_COLOUR, "review": REVIEW_COLOUR, "reject": FAIL_COLOUR}

MAX_PREVIEW_FRAMES = 4     # frames with faces of their own get a preview each, up to this many
PREVIEW_MAX_SIDE = 1024    # larger frames are shrunk first: the canvas shows them small, and PNG cost grows with area
SUMMARY_MAX_CHARS = 160
FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class FaceLabel:
    box: tuple[float, float, float, float]   # x0, y0, x1, y1 in pixels of the judged frame
    text: str
    colour: tuple[int, int, int]


def verdict_status(verdict: dict) -> tuple[str, tuple[int, int, int]]:
    """The word and colour of a verdict: its band for a shot verdict, else PASS or FAIL."""
    band = verdict.get("band")
    if band in BAND_COLOURS:
        return band.upper(), BAND_COLOURS[band]
    return ("PASS", PASS_COLOUR) if verdict.get("passed") else ("FAIL", FAIL_COLOUR)


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _score(value) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def _details(verdict: dict) -> list[str]:
    """Per-character scores of an identity verdict, per-check scores of a shot verdict."""
    if verdict.get("check") == "shot":
        return [", ".join(f"{name} {_score(check.get('score'))}" for name, check in verdict.get("checks", {}).items())]
    characters = verdict.get("characters") or {}
    return [", ".join(f"{name} {'no face' if result.get('score') is None else _score(result['score'])}"
                      for name, result in characters.items())]


def summary_line(verdict: dict, max_chars: int = SUMMARY_MAX_CHARS) -> str:
    """One line: status, check, score, the per-character or per-check scores, then as many reasons as fit.

    "FAIL identity 0.42 | Ben 0.93, Chiara 0.42 | frame 0: low identity: Chiara 0.42 < 0.8"
    Reasons that do not fit are counted ("+3 more"); a line still too long is cut with "...".
    """
    word, _ = verdict_status(verdict)
    head = f"{word} {verdict.get('check', 'check')} {_score(verdict.get('score'))}"
    if verdict.get("golden"):
        head += " golden"
    parts = [head] + [detail for detail in _details(verdict) if detail]
    line = " | ".join(_one_line(part) for part in parts)
    reasons = [_one_line(reason) for reason in verdict.get("reasons", []) if str(reason).strip()]
    for count in range(len(reasons), 0, -1):  # as many whole reasons as fit, the rest counted
        more = len(reasons) - count
        candidate = f"{line} | {'; '.join(reasons[:count])}" + (f" (+{more} more)" if more else "")
        if len(candidate) <= max_chars:
            return candidate
    if reasons:  # not even the first reason fits whole: as much of it as does
        more = f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
        room = max(0, max_chars - len(line) - len(" | ...") - len(more))
        line = f"{line} | {reasons[0][:room].rstrip()}...{more}"
    return line if len(line) <= max_chars else line[:max_chars - 3].rstrip() + "..."


def face_labels(identity: dict | None, frame: int = 0) -> list[FaceLabel]:
    """Each face of one frame of an identity verdict: its character and IDR, green when that character passes,
    red when not; a face no character took is red, or amber when the frame passed anyway (extras allowed)."""
    frames = (identity or {}).get("frames") or []
    if frame >= len(frames):
        return []
    judged = frames[frame]
    owners = {match.get("face"): (name, match) for name, match in (judged.get("characters") or {}).items()
              if match.get("face") is not None}
    labels = []
    for index, face in enumerate(judged.get("faces") or []):
        box = face.get("box")
        if not box or len(box) != 4:
            continue
        if index in owners:
            name, match = owners[index]
            labels.append(FaceLabel(tuple(map(float, box)), f"{name} {_score(match.get('idr'))}",
                                    PASS_COLOUR if match.get("passed") else FAIL_COLOUR))
        else:
            allowed = bool(judged.get("passed"))
            labels.append(FaceLabel(tuple(map(float, box)), "extra" if allowed else "unexpected",
                                    REVIEW_COLOUR if allowed else FAIL_COLOUR))
    return labels


def _text_size(width: int) -> tuple[float, int]:
    """Font scale and stroke for a frame this wide: readable on the canvas from 256 to 1024 px."""
    scale = float(np.clip(width / 1400.0, 0.35, 0.75))
    return scale, max(1, round(scale * 2))


def _fit(text: str, width: int, scale: float, thickness: int) -> str:
    """The longest prefix of `text` (with "..." when cut) that is at most `width` pixels wide."""
    if cv2.getTextSize(text, FONT, scale, thickness)[0][0] <= width:
        return text
    low, high = 0, len(text)
    while low < high:  # longest prefix that fits, by bisection: getTextSize per try
        middle = (low + high + 1) // 2
        if cv2.getTextSize(text[:middle].rstrip() + "...", FONT, scale, thickness)[0][0] <= width:
            low = middle
        else:
            high = middle - 1
    return text[:low].rstrip() + "..."


def _ascii(text: str) -> str:
    # OpenCV's Hershey fonts draw ASCII only; the text output keeps the real characters
    return text.encode("ascii", "replace").decode("ascii")


def annotate(image, verdict: dict, faces_from: dict | None = None, frame: int = 0,
             max_side: int = PREVIEW_MAX_SIDE) -> np.ndarray:
    """The frame (float 0..1 or uint8, shrunk to `max_side`) with its faces boxed and labelled, over a caption bar
    that holds `summary_line(verdict)` on the verdict's colour: an (H + bar, W, 3) uint8 RGB image.

    Faces come from `faces_from` (an identity verdict), or from `verdict` itself when it is one.
    """
    canvas = to_uint8_rgb(image)
    if np.shares_memory(canvas, image):  # a uint8 RGB input comes back as itself: draw on a copy
        canvas = canvas.copy()
    height, width = canvas.shape[:2]
    shrink = min(1.0, max_side / max(height, width, 1))
    if shrink < 1.0:
        width, height = max(1, round(width * shrink)), max(1, round(height * shrink))
        canvas = cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA)
    scale, thickness = _text_size(width)
    line = max(2, round(min(height, width) / 256))
    labels = face_labels(faces_from if faces_from is not None else verdict, frame)
    boxes = [tuple(round(v * shrink) for v in label.box) for label in labels]
    # labels first, boxes over them: a label never hides the edge of a box
    for label, (x0, y0, x1, y1) in zip(labels, boxes):
        text = _ascii(label.text)
        (text_w, text_h), baseline = cv2.getTextSize(text, FONT, scale, thickness)
        top = y0 - line - text_h - baseline - 4 if y0 - line - text_h - baseline - 4 >= 0 else y1 + line
        cv2.rectangle(canvas, (x0, top), (x0 + text_w + 6, top + text_h + baseline + 4), label.colour, cv2.FILLED)
        cv2.putText(canvas, text, (x0 + 3, top + text_h + 2), FONT, scale, TEXT_COLOUR, thickness, cv2.LINE_AA)
    for label, (x0, y0, x1, y1) in zip(labels, boxes):
        cv2.rectangle(canvas, (x0, y0), (x1, y1), label.colour, line)

    word_colour = verdict_status(verdict)[1]
    (_, text_h), baseline = cv2.getTextSize("Ag", FONT, scale, thickness)
    pad = max(4, text_h // 2)
    bar = np.empty((text_h + baseline + 2 * pad, width, 3), np.uint8)
    bar[:] = word_colour
    caption = _fit(_ascii(summary_line(verdict)), width - 2 * pad, scale, thickness)
    cv2.putText(bar, caption, (pad, pad + text_h), FONT, scale, TEXT_COLOUR, thickness, cv2.LINE_AA)
    return np.vstack([canvas, bar])


def preview_frames(images, verdict: dict, faces_from: dict | None = None) -> list[np.ndarray]:
    """Annotated previews of a batch: one per frame that has faces of its own (up to MAX_PREVIEW_FRAMES), else
    only the first frame (more would repeat the same caption at the price of more PNGs)."""
    count = len(images)
    if count == 0:
        return []
    identity = faces_from if faces_from is not None else verdict
    judged_frames = len((identity or {}).get("frames") or [])
    shown = min(count, judged_frames, MAX_PREVIEW_FRAMES) if judged_frames else 1
    return [annotate(images[index], verdict, faces_from, frame=index) for index in range(max(shown, 1))]
