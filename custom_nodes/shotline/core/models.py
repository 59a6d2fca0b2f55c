"""Model files users download themselves: where each kind goes, and the error that says so.

Shotline never downloads weights. A backend that needs a file checks it exists first and raises
`ModelMissingError`, whose message names the file and the ComfyUI models folder it belongs in, so a node can
show the user exactly what to fetch and where to put it.
"""
from __future__ import annotations

from pathlib import Path

# Where each kind of model lives inside ComfyUI's models tree (the folder names other packs already use, so one
# download serves them all).
MODEL_FOLDERS = {
    "insightface": "ComfyUI/models/insightface/models/buffalo_l/",  # det_10g.onnx, w600k_r50.onnx
    "anime_face": "ComfyUI/models/anime_face_detectors/",  # YOLOv8 single-class face detector, ONNX
    "ccip": "ComfyUI/models/character_embedders/",         # CCIP feature extractor (model_feat.onnx)
    "dlib": "the face_recognition_models package: pip install face_recognition_models",
    "piper": "ComfyUI/models/piper_voices/",              # <voice>.onnx + <voice>.onnx.json (Piper TTS)
}


class ModelMissingError(FileNotFoundError):
    """A model file the user must download is not where it was looked for."""

    def __init__(self, path, folder_hint: str):
        self.path = str(path)
        self.folder_hint = folder_hint
        name = Path(self.path).name or self.path
        if folder_hint.endswith("/"):
            message = f"model file not found: {self.path}; download {name} and put it at {folder_hint}{name}"
        else:
            message = f"model file not found: {self.path}; it comes from {folder_hint}"
        super().__init__(message)

    def __reduce__(self):  # keeps the error picklable across process pools
        return type(self), (self.path, self.folder_hint)


def require_model(path, kind: str) -> Path:
    """The path as a `Path` if it is an existing file; `ModelMissingError` with the folder for `kind` if not."""
    hint = MODEL_FOLDERS.get(kind, f"ComfyUI/models/{kind}/")
    if path is None or str(path) == "":
        raise ModelMissingError("(no file given)", hint)
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise ModelMissingError(resolved, hint)
    return resolved


INSIGHTFACE_TASKS = {"detection": "face detector", "recognition": "recognition model"}


def load_insightface_model(path, task: str):
    """An InsightFace model file through insightface's own loader, checked to be a `task` model
    ("detection" or "recognition"): the same route a user's buffalo_l / antelopev2 files take."""
    path = require_model(path, "insightface")
    try:
        from insightface.model_zoo import get_model
    except ImportError as error:
        raise ImportError("InsightFace models need the `insightface` package: pip install --no-deps insightface "
                          "(its declared opencv-python dependency would install OpenCV 5)") from error
    model = get_model(str(path), providers=["CPUExecutionProvider"])
    if model is None or getattr(model, "taskname", None) != task:
        raise ValueError(f"{path} is not an InsightFace {INSIGHTFACE_TASKS[task]} (got {type(model).__name__})")
    return path, model
