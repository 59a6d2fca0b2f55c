"""Reference galleries cached on disk: one embedding file per (reference file content, backend).

The key is the SHA-256 of the reference file's bytes plus the backend name, so renaming or moving a reference
costs nothing, adding a reference embeds only that one, and editing a file re-embeds it. A reference in which no
face was found is cached too (as an empty array), so it is not searched again on every run.

Layout: <folder>/<backend key>/<sha256>.npy, where `backend_key` names the detector, the embedder and a hash of
the embedder's model files (two ArcFace models must not share entries; CCIP's metric head and metrics.json count
too, since with them the stored vectors are raw features) and the embedder's `cache_tag` when it has one (CCIP's
"character": entries from when it embedded faces are not reused).
"""
from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

CACHE_FOLDER = ".embeddings"   # inside a character's folder


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.lru_cache(maxsize=32)
def _model_digest(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)[:12]


def backend_key(detector, embedder) -> str:
    """A folder name for one detector + embedder + model files, e.g. "mtcnn-dlib-1a2b3c4d5e6f"."""
    files = [getattr(embedder, "model_path", None), *getattr(embedder, "calibration_files", ())]
    digests = []
    for model in files:
        if model and os.path.isfile(model):
            stat = os.stat(model)
            digests.append(_model_digest(str(model), stat.st_size, stat.st_mtime_ns))
    digest = "-" + (digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()[:12]) \
        if digests else ""
    tag = getattr(embedder, "cache_tag", "")
    return f"{getattr(detector, 'name', 'faces')}-{embedder.name}{digest}{'-' + tag if tag else ''}"


class GalleryCache:
    def __init__(self, folder):
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0

    def _entry(self, backend: str, digest: str) -> Path:
        return self.folder / backend / f"{digest}.npy"

    def embedding(self, path, backend: str, embed: Callable[[Path], np.ndarray | None]) -> np.ndarray | None:
        """The cached embedding of one reference file, computing it with `embed(path)` on a miss.

        `embed` returns a vector or None (no face); None is cached as an empty array and returned as None.
        """
        entry = self._entry(backend, file_sha256(path))
        if entry.exists():
            try:
                vector = np.load(entry, allow_pickle=False)
                self.hits += 1
                return vector if vector.size else None
            except (OSError, ValueError):  # a torn or foreign file: recompute it
                pass
        self.misses += 1
        vector = embed(Path(path))
        stored = np.zeros(0, np.float32) if vector is None else np.asarray(vector, dtype=np.float32).reshape(-1)
        entry.parent.mkdir(parents=True, exist_ok=True)
        # write then rename, so a reader in another process never sees half a file
        handle, temp = tempfile.mkstemp(dir=entry.parent, suffix=".tmp")
        with os.fdopen(handle, "wb") as stream:
            np.save(stream, stored)
        os.replace(temp, entry)
        return vector if vector is None else stored

    def gallery(self, paths, backend: str, embed: Callable[[Path], np.ndarray | None]) -> tuple[np.ndarray, list[str]]:
        """The (N, D) gallery of the references in which a face was found, and the paths with no face."""
        vectors, faceless = [], []
        for path in paths:
            vector = self.embedding(path, backend, embed)
            if vector is None:
                faceless.append(str(path))
            else:
                vectors.append(vector)
        gallery = np.stack(vectors) if vectors else np.zeros((0, 0), np.float32)
        return gallery, faceless


def read_reference(path) -> np.ndarray | None:
    """An image file as float RGB 0..1, transparency over white (as imgutils loads pictures), or None."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        return None
    scale = float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.integer) else 1.0
    image = image.astype(np.float32) / scale
    if image.ndim == 2 or image.shape[2] < 3:
        return np.ascontiguousarray(np.repeat(image.reshape(*image.shape[:2], -1)[..., :1], 3, axis=2))
    if image.shape[2] == 4:
        alpha = image[..., 3:4]
        image = image[..., :3] * alpha + (1.0 - alpha)
    return np.ascontiguousarray(image[..., 2::-1])  # OpenCV's BGR to RGB


def reference_embedder(detector, embedder) -> Callable[[Path], np.ndarray | None]:
    """An `embed(path)` for `GalleryCache`: the largest face of the image file, or None when it has none.

    The embedder is told every face found (a character embedder crops the largest face's character; with one face,
    the whole picture). A character embedder (one with `embed_all`, CCIP) embeds a picture in which no face was
    found whole: a reference picture shows its character, whether or not the face detector finds its face."""
    def embed(path: Path):
        rgb = read_reference(path)
        return None if rgb is None else embed_picture(detector, embedder, rgb)

    return embed


def embed_picture(detector, embedder, rgb: np.ndarray) -> np.ndarray | None:
    """The embedding of the largest face of a float RGB picture (a sure face first), as references are
    embedded; None when it has none (a character embedder embeds the picture whole)."""
    faces = detector.detect(rgb)
    if not faces:
        return embedder.embed(rgb, None, faces=[]) if hasattr(embedder, "embed_all") else None
    largest = max(faces, key=lambda face: (face.sure, face.width * face.height))
    return embedder.embed(rgb, largest, faces=faces)


def most_typical_reference(folder, references) -> Path | None:
    """The reference whose cached embedding is closest to the mean of its character's (any backend a Character
    Gallery has cached, the first by name); else the first reference not cached as faceless; None without one.
    What an identity correction starts image-to-image from."""
    references = [Path(path) for path in references]
    if not references:
        return None
    cache = Path(folder)
    faceless: set[Path] = set()
    digests = {path: file_sha256(path) for path in references} if cache.is_dir() else {}
    for backend in sorted(path for path in cache.glob("*/") if path.is_dir()) if cache.is_dir() else ():
        vectors = {}
        for path in references:
            entry = backend / f"{digests[path]}.npy"
            if entry.exists():
                try:
                    vector = np.load(entry, allow_pickle=False)
                except (OSError, ValueError):
                    continue
                if vector.size:
                    vectors[path] = vector / max(float(np.linalg.norm(vector)), 1e-12)
                else:
                    faceless.add(path)
        if vectors:
            centre = np.mean(list(vectors.values()), axis=0)
            return max(vectors, key=lambda path: float(vectors[path] @ centre))
    return next((path for path in references if path not in faceless), None)
