"""Build a small random-initialised SD1.5-type checkpoint with ComfyUI's own classes.

For tests and first runs on machines with no downloaded weights: CheckpointLoaderSimple detects it as SD1.5
and a KSampler graph runs through it, but its images are coloured noise. Run with the Python ComfyUI uses:

    python controller/comfy/random_checkpoint.py --comfyui PATH --output FILE.safetensors

The UNet keeps SD1.5's width and text context (so CLIP-L conditioning fits) with two levels, one res block
each and one transformer level; the VAE is TAESD, small and fast to decode on a CPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

UNET_CONFIG = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1, 1],
    "channel_mult": [1, 2],
    "transformer_depth": [1, 0],
    "transformer_depth_output": [1, 1, 0, 0],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}


def initialise(module) -> None:
    """Give every weight a real random value.

    ComfyUI builds layers with `comfy.ops.disable_weight_init`, which skips initialisation for speed: weights
    are whatever memory held, often NaN. Each layer is reset with torch's own default initialisation instead.
    """
    import torch
    layers = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.GroupNorm,
              torch.nn.LayerNorm, torch.nn.Embedding)
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.is_floating_point():
                tensor.zero_()
        for layer in module.modules():
            for kind in layers:
                if isinstance(layer, kind):
                    kind.reset_parameters(layer)
                    break


def build(comfyui: Path, output: Path, seed: int = 0) -> None:
    sys.path.insert(0, str(comfyui))
    import comfy.cli_args
    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported: no GPU needed
    import torch
    import comfy.model_detection
    import comfy.sd
    import comfy.supported_models
    import comfy.taesd.taesd
    import comfy.utils

    torch.manual_seed(seed)
    model_config = comfy.supported_models.SD15(dict(UNET_CONFIG))
    model = model_config.get_model({}, device="cpu")
    clip = comfy.sd.CLIP(target=model_config.clip_target(), parameters=0)
    vae = comfy.taesd.taesd.TAESD(latent_channels=4)
    for module in (model, clip.cond_stage_model, vae):
        initialise(module)
    with torch.no_grad():  # TAESD's latent scale is a bare parameter, not a layer: zero would divide by zero
        vae.vae_scale.fill_(1.0)
    vae_state = vae.state_dict()
    state = model.state_dict_for_saving(clip.get_sd(), vae_state)
    state = {key: value.to(torch.float16).contiguous() if value.is_floating_point() else value.contiguous()
             for key, value in state.items()}

    # The checkpoint must be recognised as SD1.5 by the same detection CheckpointLoaderSimple uses.
    detected = comfy.model_detection.model_config_from_unet(state, "model.diffusion_model.")
    if not isinstance(detected, comfy.supported_models.SD15):
        raise SystemExit(f"built checkpoint is detected as {type(detected).__name__}, not SD15")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    comfy.utils.save_torch_file(state, str(partial), metadata={"shotline": "random weights; images are noise"})
    partial.replace(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", type=Path, required=True, help="the ComfyUI folder (for its classes)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.monotonic()
    build(args.comfyui.resolve(), args.output.resolve(), args.seed)
    size = args.output.stat().st_size / 2**20
    print(f"random SD1.5-type checkpoint: {args.output} ({size:.0f} MiB) in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
