"""Face Refine: each character's face re-sampled at a higher resolution with that character's own prompt, re-scored
against that character's gallery, and kept only when it scores higher than before.

FaceDetailer's crop -> upscale -> sample -> downscale -> feathered paste (`core/face_refine.py`), through ComfyUI's
own sampling path (`nodes.common_ksampler`: its noise, previews, progress bar, model loading and interrupts) and
the VAE's own memory handling, plus what FaceDetailer lacks: a re-score after every cycle and a budget of cycles.
"""
import json

import comfy.model_management
import comfy.samplers
import nodes
import numpy as np
import torch
from comfy_api.latest import io

from .check_outputs import verdict_ui
from .core.face_refine import (FacePrompt, FaceScorer, RefineSettings, character_prompt, faces_to_refine,
                               preview_faces, refine_frame, refine_record, resize)
from .core.identity import DEFAULT_THRESHOLD
from .identity_check import Gallery, connected_galleries

REFINE_UI_KEY = "shotline_refine"


class ComfySampler:
    """sample(crop, mask, seed, prompt) -> refined crop, through the VAE and `nodes.common_ksampler`.

    One face at a time (a batch of one) on every device. Each distinct prompt is encoded once with the CLIP input.
    """

    def __init__(self, model, clip, vae, steps, cfg, sampler_name, scheduler, denoise):
        self.model, self.clip, self.vae = model, clip, vae
        self.steps, self.cfg, self.sampler_name, self.scheduler, self.denoise = (
            steps, cfg, sampler_name, scheduler, denoise)
        self.conditioning: dict[FacePrompt, tuple] = {}

    def encode(self, text: str):
        return self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))

    def __call__(self, crop: np.ndarray, mask: np.ndarray, seed: int, prompt: FacePrompt) -> np.ndarray:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if prompt not in self.conditioning:
            self.conditioning[prompt] = (self.encode(prompt.positive), self.encode(prompt.negative))
        positive, negative = self.conditioning[prompt]
        pixels = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None]
        latent = {"samples": self.vae.encode(pixels[..., :3]),
                  "noise_mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]}
        (sampled,) = nodes.common_ksampler(self.model, seed, self.steps, self.cfg, self.sampler_name, self.scheduler,
                                           positive, negative, latent, denoise=self.denoise)
        decoded = self.vae.decode(sampled["samples"])
        decoded = decoded.reshape(-1, *decoded.shape[-3:])[0, ..., :3]   # video VAEs add a time axis
        refined = decoded.detach().float().cpu().numpy()
        if refined.shape != crop.shape:  # a VAE whose scale does not divide the size crops a few pixels
            refined = resize(refined, (crop.shape[1], crop.shape[0]))
        return refined


class FaceRefine(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ShotlineFaceRefine",
            display_name="Face Refine",
            category="Shotline/characters",
            description="Re-samples every character's face at guide_size with that character's design prompt, "
                        "re-scores it against the character's gallery, and repeats with new seeds while the "
                        "score is under the target. The best version of each face is kept; the unrefined input "
                        "counts, so the output never scores lower than the input.",
            is_output_node=True,
            inputs=[
                io.Image.Input("image"),
                io.Model.Input("model"),
                io.Clip.Input("clip", tooltip="Encodes each character's design prompt + face_prompt."),
                io.Vae.Input("vae"),
                Gallery.Input("gallery"),
                Gallery.Input("gallery_2", optional=True),
                Gallery.Input("gallery_3", optional=True),
                Gallery.Input("gallery_4", optional=True),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Cycle n samples with seed + n."),
                io.Int.Input("steps", default=20, min=1, max=10000),
                io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler"),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal"),
                io.Float.Input("denoise", default=0.45, min=0.0, max=1.0, step=0.01,
                               tooltip="How much of the face is re-drawn: 0.3-0.5 keeps the pose and the person."),
                io.Float.Input("crop_factor", default=3.0, min=1.0, max=10.0, step=0.1,
                               tooltip="The crop is the face box times this, for context (FaceDetailer's 3.0)."),
                io.Int.Input("guide_size", default=512, min=64, max=4096, step=8,
                             tooltip="The crop is sampled with its long side this many pixels."),
                io.Float.Input("feather", default=0.3, min=0.02, max=1.0, step=0.01,
                               tooltip="Width of the blend around the face box, as a share of the box's size."),
                io.Int.Input("max_cycles", default=3, min=1, max=20,
                             tooltip="Refinements per face at most; the first always runs, further ones while "
                                     "the face scores under the target."),
                io.Float.Input("target", default=DEFAULT_THRESHOLD, min=0.0, max=1.0, step=0.01,
                               tooltip="IDR at which a face stops being re-sampled, unless its character's sheet "
                                       "sets thresholds.identity."),
                io.String.Input("face_prompt", default="detailed face", multiline=True,
                                tooltip="Added after each character's design prompt."),
                io.String.Input("negative", default="", multiline=True,
                                tooltip="Added after each character's negative prompt."),
            ],
            outputs=[
                io.Image.Output(display_name="image"),
                io.String.Output(display_name="history_json",
                                 tooltip="Per face: frame, box, character, prompt, and per cycle the seed, the "
                                         "score before and after and whether it was kept."),
            ],
        )

    @classmethod
    def validate_inputs(cls, sampler_name, scheduler) -> bool | str:
        # ComfyUI 0.3.75 does not check V3 combo options itself
        if sampler_name not in comfy.samplers.KSampler.SAMPLERS:
            return f"unknown sampler {sampler_name!r}"
        if scheduler not in comfy.samplers.KSampler.SCHEDULERS:
            return f"unknown scheduler {scheduler!r}"
        return True

    @classmethod
    def execute(cls, image, model, clip, vae, gallery, seed, steps, cfg, sampler_name, scheduler, denoise,
                crop_factor, guide_size, feather, max_cycles, target, face_prompt: str, negative: str,
                gallery_2=None, gallery_3=None, gallery_4=None) -> io.NodeOutput:
        connected = connected_galleries(target, gallery, gallery_2, gallery_3, gallery_4)
        detector, embedder, embeddings, targets = (connected.detector, connected.embedder, connected.embeddings,
                                                   connected.thresholds)
        prompts = {g.name: character_prompt(g.design_prompt, g.negative_prompt, face_prompt, negative)
                   for g in connected.galleries}
        settings = RefineSettings(seed=seed, denoise=denoise, crop_factor=crop_factor, guide_size=guide_size,
                                  feather=feather, max_cycles=max_cycles,
                                  multiple=max(8, int(vae.spacial_compression_encode())))
        sample = ComfySampler(model, clip, vae, steps, cfg, sampler_name, scheduler, denoise)
        score = FaceScorer(detector, embedder, embeddings)
        frames, histories, reasons = [], [], []
        for index, frame in enumerate(image.cpu().numpy()):
            rgb = np.ascontiguousarray(frame[..., :3], dtype=np.float32)
            faces = faces_to_refine(rgb, detector, embedder, embeddings, prompts, targets)
            if not faces:
                reasons.append(f"frame {index}: no face found")
            refined, frame_histories = refine_frame(rgb, faces, sample, score, settings, frame=index)
            if frame.shape[-1] > 3:  # keep an alpha channel as it was
                refined = np.concatenate([refined, frame[..., 3:]], axis=-1)
            frames.append(torch.from_numpy(refined))
            histories += frame_histories
        reasons += [f"frame {h.frame}: face {h.face}: {h.reason}" for h in histories if h.reason]
        record = refine_record(histories, int(image.shape[0]), reasons)
        record.update(backend=connected.backend, settings={
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler_name, "scheduler": scheduler,
            "denoise": denoise, "crop_factor": crop_factor, "guide_size": guide_size, "feather": feather,
            "max_cycles": max_cycles, "targets": targets})
        output = torch.stack(frames).to(image.dtype) if frames else image  # an empty batch stays empty
        # the check nodes' preview (faces boxed, a caption); the record is no check verdict, so it goes under a
        # key of its own rather than the verdicts' key the controller collects
        shown = verdict_ui(output, record, cls, faces_from=preview_faces(histories, int(image.shape[0])),
                           key=REFINE_UI_KEY)
        shown["text"] = [record["summary"]]
        return io.NodeOutput(output, json.dumps(record), ui=shown)

