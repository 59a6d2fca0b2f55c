"""Character Gallery and Identity Check: is the right character on screen, alone or with the right others?

Backends (a face detector + an embedder, always used together):
    dlib         MTCNN (facenet-pytorch) + animeface for the drawn faces MTCNN misses + dlib's 128-d ResNet: all
                 ship in packages, works offline
    insightface  an InsightFace pack's detector + ArcFace, from models/insightface/models/<pack>/
    anime        an anime face detector ONNX (models/anime_face_detectors/) + a CCIP-style embedder ONNX
                 (models/character_embedders/)
    auto         photo characters: insightface when a pack is installed, else dlib;
                 anime characters: anime when both ONNX files are installed, else dlib
"""
from dataclasses import dataclass
from pathlib import Path

import comfy.utils
import numpy as np
from comfy_api.latest import io

from . import model_folders
from .character_library import Character, refuse_repeats
from .check_outputs import check_outputs, verdict_output
from .core.face_embedding import load_embedder
from .core.faces import DEFAULT_DETECTOR, load_detector
from .core.gallery_cache import CACHE_FOLDER, GalleryCache, backend_key, embed_picture, reference_embedder
from .core.identity import DEFAULT_THRESHOLD, aggregate_frames, check_identity
from .core.models import MODEL_FOLDERS, ModelMissingError

Gallery = io.Custom("SHOTLINE_GALLERY")
NONE = "(none installed)"
BACKENDS = ["auto", "dlib", "insightface", "anime"]


@dataclass
class CharacterGalleryData:
    name: str
    threshold: float | None          # the sheet's own identity threshold, if any
    backend: str                     # cache key: detector + embedder + model hash
    detector: tuple[str, str | None]
    embedder: tuple[str, str | None]
    embeddings: np.ndarray           # (references with a face, D)
    faceless: list[str]              # references in which no face was found
    design_prompt: str = ""          # design prompt + state, so Face Refine prompts each face as its character
    negative_prompt: str = ""


def insightface_packs() -> dict[str, tuple[Path, Path]]:
    """Packs under models/insightface/models/ with a detector (det_*.onnx) and a recogniser ONNX."""
    packs = {}
    for root in model_folders.folders(model_folders.INSIGHTFACE):
        for pack in sorted((Path(root) / "models").glob("*/")):
            detectors = sorted(pack.glob("det_*.onnx"))
            recognisers = [p for p in sorted(pack.glob("*.onnx"))
                           if not p.name.startswith(("det_", "genderage", "1k3d68", "2d106"))]
            if detectors and recognisers and pack.name not in packs:
                packs[pack.name] = (detectors[0], recognisers[0])
    return packs


def onnx_files(folder_name: str) -> list[str]:
    """The models a combo offers; CCIP's metric head (model_metrics.onnx) is read beside its feature model, not
    chosen on its own."""
    import folder_paths
    return sorted(name for name in folder_paths.get_filename_list(folder_name)
                  if Path(name).name != "model_metrics.onnx")


def resolve_backend(style: str, backend: str, pack: str, anime_detector: str, embedder_file: str):
    """(detector kind, path), (embedder kind, path) for the chosen backend; a missing model names its file."""
    import folder_paths
    packs = insightface_packs()
    anime_ready = anime_detector != NONE and embedder_file != NONE
    if backend == "auto":
        if style == "photo" and packs:
            backend = "insightface"
        elif style == "anime" and anime_ready:
            backend = "anime"
        else:
            backend = "dlib"
    if backend == "dlib":
        return (DEFAULT_DETECTOR, None), ("dlib", None)
    if backend == "insightface":
        if pack not in packs:
            raise ModelMissingError(f"models/insightface/models/{pack if pack != NONE else 'buffalo_l'}/det_10g.onnx",
                                    MODEL_FOLDERS["insightface"])
        detector, recogniser = packs[pack]
        return ("insightface", str(detector)), ("arcface", str(recogniser))
    if anime_detector == NONE:
        raise ModelMissingError("models/anime_face_detectors/<detector>.onnx", MODEL_FOLDERS["anime_face"])
    if embedder_file == NONE:
        raise ModelMissingError("models/character_embedders/<embedder>.onnx", MODEL_FOLDERS["ccip"])
    return (("anime", folder_paths.get_full_path_or_raise(model_folders.ANIME_FACE_DETECTORS, anime_detector)),
            ("ccip", folder_paths.get_full_path_or_raise(model_folders.CHARACTER_EMBEDDERS, embedder_file)))


@dataclass
class ConnectedGalleries:
    """The galleries connected to Identity Check or Face Refine, with their one backend's models loaded."""
    galleries: list[CharacterGalleryData]
    detector: object
    embedder: object
    embeddings: dict[str, np.ndarray]    # character -> its gallery
    thresholds: dict[str, float]         # character -> its sheet's identity threshold, else the node's

    @property
    def backend(self) -> str:
        return self.galleries[0].backend


def connected_galleries(threshold: float, *galleries) -> ConnectedGalleries:
    """The galleries given (None for an unconnected input): one face backend, each character once."""
    galleries = [g for g in galleries if g is not None]
    backends = {g.backend for g in galleries}
    if len(backends) > 1:
        raise ValueError(f"the galleries use different face backends ({', '.join(sorted(backends))}): "
                         "choose the same backend on every Character Gallery")
    refuse_repeats([g.name for g in galleries])
    return ConnectedGalleries(
        galleries, load_detector(*galleries[0].detector), load_embedder(*galleries[0].embedder),
        {g.name: g.embeddings for g in galleries},
        {g.name: g.threshold if g.threshold is not None else threshold for g in galleries})


class CharacterGallery(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ShotlineCharacterGallery",
            display_name="Character Gallery",
            category="Shotline/characters",
            description="Embeds a character's reference images with the chosen face backend. Embeddings are cached "
                        "on disk by file content and backend, so adding a reference embeds only that one.",
            inputs=[
                Character.Input("character"),
                io.Combo.Input("backend", options=BACKENDS, default="auto",
                               tooltip="auto: InsightFace for photo characters when a pack is installed, the anime "
                                       "models for anime characters when installed, otherwise MTCNN + dlib."),
                io.Combo.Input("insightface_pack", options=sorted(insightface_packs()) or [NONE],
                               tooltip="A folder in models/insightface/models/ (buffalo_l, antelopev2)."),
                io.Combo.Input("anime_face_detector", options=onnx_files(model_folders.ANIME_FACE_DETECTORS) or [NONE],
                               tooltip="A YOLOv8-style face detector ONNX in models/anime_face_detectors/."),
                io.Combo.Input("character_embedder", options=onnx_files(model_folders.CHARACTER_EMBEDDERS) or [NONE],
                               tooltip="A CCIP-style embedder ONNX in models/character_embedders/."),
                io.Image.Input("continuity_face", optional=True,
                               tooltip="The character as the story last showed it (the controller fills it with "
                                       "the face of its best approved shot so far): embedded first, beside the "
                                       "references."),
            ],
            outputs=[Gallery.Output(display_name="gallery")],
        )

    @classmethod
    def execute(cls, character, backend, insightface_pack, anime_face_detector, character_embedder,
                continuity_face=None) -> io.NodeOutput:
        if not character.references:
            raise ValueError(f"character {character.name!r} has no reference images: put some in "
                             f"{character.folder / 'references'}")
        (detector_kind, detector_path), (embedder_kind, embedder_path) = resolve_backend(
            character.sheet.style, backend, insightface_pack, anime_face_detector, character_embedder)
        detector = load_detector(detector_kind, detector_path)
        embedder = load_embedder(embedder_kind, embedder_path)
        key = backend_key(detector, embedder)
        progress = comfy.utils.ProgressBar(len(character.references))
        embed = reference_embedder(detector, embedder)

        def embed_with_progress(path):
            vector = embed(path)
            progress.update(1)
            return vector
        embeddings, faceless = GalleryCache(character.folder / CACHE_FOLDER).gallery(
            character.references, key, embed_with_progress)
        if continuity_face is not None:
            faces = [embed_picture(detector, embedder, frame.cpu().numpy().astype(np.float32))
                     for frame in continuity_face]
            faces = [vector for vector in faces if vector is not None]
            if not faces:
                raise ValueError(f"no face found in the continuity face of {character.name!r} with the {key} "
                                 "backend: disconnect it, or give a picture of the character's face")
            embeddings = np.vstack([np.stack(faces), embeddings]) if len(embeddings) else np.stack(faces)
        if len(embeddings) == 0:
            raise ValueError(f"no face found in any reference image of {character.name!r} with the {key} backend "
                             f"({', '.join(p.name for p in character.references)})")
        return io.NodeOutput(CharacterGalleryData(
            name=character.name, threshold=character.sheet.thresholds.get("identity"), backend=key,
            detector=(detector_kind, detector_path), embedder=(embedder_kind, embedder_path),
            embeddings=embeddings, faceless=[str(p) for p in faceless],
            design_prompt=character.design_with_state(), negative_prompt=character.sheet.negative_prompt))


class IdentityCheck(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ShotlineIdentityCheck",
            display_name="Identity Check",
            category="Shotline/checks",
            description="Finds every face, gives each expected character its best face (optimal assignment), and "
                        "scores identity retention (IDR, 0..1) per character per frame. A failing frame gives a "
                        "verdict with reasons; the node never stops the graph.",
            is_output_node=True,
            inputs=[
                io.Image.Input("image"),
                Gallery.Input("gallery"),
                Gallery.Input("gallery_2", optional=True),
                Gallery.Input("gallery_3", optional=True),
                Gallery.Input("gallery_4", optional=True),
                io.Float.Input("threshold", default=DEFAULT_THRESHOLD, min=0.0, max=1.0, step=0.01,
                               tooltip="IDR a character needs, unless its sheet sets thresholds.identity. 0.75 is "
                                       "each backend's calibrated same/different boundary."),
                io.Boolean.Input("allow_extra_faces", default=False,
                                 tooltip="Let other people (crowd, background) be on screen."),
                io.Float.Input("min_pass_share", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Share of frames of a batch that must pass (lower it to forgive a blink)."),
            ],
            outputs=check_outputs(score_tooltip="The lowest character IDR over the frames."),
        )

    @classmethod
    def execute(cls, image, gallery, threshold, allow_extra_faces, min_pass_share, gallery_2=None, gallery_3=None,
                gallery_4=None) -> io.NodeOutput:
        connected = connected_galleries(threshold, gallery, gallery_2, gallery_3, gallery_4)
        progress = comfy.utils.ProgressBar(image.shape[0])
        frames = []
        for frame in image.cpu().numpy():
            frames.append(check_identity(frame, connected.embeddings, connected.detector, connected.embedder,
                                         connected.thresholds, allow_extra_faces))
            progress.update(1)
        verdict = aggregate_frames(frames, min_pass_share=min_pass_share, threshold=connected.thresholds)
        verdict["backend"] = connected.backend
        return verdict_output(image, verdict, cls=cls)
