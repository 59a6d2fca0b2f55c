"""Reference galleries cached on disk: one embedding file per (reference file content, backend).

The key is the SHA-256 of the reference file's bytes plus the backend name, so renaming or moving a reference
costs nothing, adding a reference embeds only that one, and editing a file re-embeds it. A reference in which no
face was found is cached too (as an empty array), so it is not searched again on every run.

Layout: <folder>/<backend key>/<sha256>.npy, where `backend_key` names the detector, the embedder and a hash of
the embedder's model file (two ArcFace models must not share entries).
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
    """A folder name for one detector + embedder + model file, e.g. "mtcnn-dlib-1a2b3c4d5e6f"."""
    model = getattr(embedder, "model_path", None)
    digest = ""
    if model and os.path.isfile(model):
        stat = os.stat(model)
        digest = "-" + _model_digest(str(model), stat.st_size, stat.st_mtime_ns)
    return f"{getattr(detector, 'name', 'faces')}-{embedder.name}{digest}"


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


def reference_embedder(detector, embedder) -> Callable[[Path], np.ndarray | None]:
    """An `embed(path)` for `GalleryCache`: the largest face of the image file, or None when it has none."""
    import cv2

    def embed(path: Path):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            return None
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        faces = detector.detect(rgb)
        if not faces:
            return None
        largest = max(faces, key=lambda face: face.width * face.height)
        return embedder.embed(rgb, largest)

    return embed


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
