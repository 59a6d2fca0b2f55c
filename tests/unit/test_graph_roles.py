"""What a shot fills in a graph without Shotline's titles: inferred from the wiring (controller/comfy/graph_roles.py),
and used by load_preset / fill_preset where no node carries the title."""
import pytest

from shotline_controller.comfy.graph_roles import infer_roles
from shotline_controller.comfy.presets import PresetError, accepted_fields, check_graph, fill_preset
from shotline_controller.contract import Shot, parse_shot_list


def node(class_type, title=None, **inputs):
    return {"class_type": class_type, "inputs": inputs, **({"_meta": {"title": title}} if title else {})}


def txt2img(**extra) -> dict:
    """ComfyUI's default graph as comfy-cli converts it: no Shotline titles."""
    return {
        "4": node("CheckpointLoaderSimple", "Load Checkpoint", ckpt_name="sd_xl_base_1.0.safetensors"),
        "5": node("EmptyLatentImage", "Empty Latent Image", width=1024, height=1024, batch_size=1),
        "6": node("CLIPTextEncode", "CLIP Text Encode (Prompt)", text="a castle", clip=["4", 1]),
        "7": node("CLIPTextEncode", "CLIP Text Encode (Prompt)", text="blurry", clip=["4", 1]),
        "3": node("KSampler", "KSampler", seed=1, steps=20, cfg=8.0, sampler_name="euler", scheduler="normal",
                  denoise=1.0, model=["4", 0], positive=["6", 0], negative=["7", 0], latent_image=["5", 0]),
        "8": node("VAEDecode", samples=["3", 0], vae=["4", 2]),
        "9": node("SaveImage", "Save Image", images=["8", 0], filename_prefix="ComfyUI"),
        **extra,
    }


def shot(**fields):
    return Shot.from_input(parse_shot_list([{"id": "s1", "prompt": "a red scarf", **fields}]).shots[0])


def test_the_default_graph_is_read_off_its_wiring():
    roles = infer_roles(txt2img()).bindings
    assert roles["Prompt"] == [("6", {"text": "prompt"})]
    assert roles["Negative Prompt"] == [("7", {"text": "negative"})]
    assert roles["Sampler"] == [("3", {"seed": "seed", "steps": "steps", "cfg": "cfg", "sampler_name": "sampler"})]
    assert roles["Size"] == [("5", {"width": "width", "height": "height", "batch_size": "frames"})]
    assert roles["Save"] == [("9", {"filename_prefix": None})]
    assert "Input Image" not in roles and "Checkpoint" not in roles  # the graph keeps its own model


def test_a_shot_fills_an_untitled_graph_and_keeps_its_model_and_negative():
    graph, filled = fill_preset(txt2img(), shot(seed=5, size="128x192", steps=2), checkpoint="random.safetensors",
                                filename_prefix="shotline/b/s1")
    assert graph["6"]["inputs"]["text"] == "a red scarf" and graph["7"]["inputs"]["text"] == "blurry"
    assert (graph["3"]["inputs"]["seed"], graph["3"]["inputs"]["steps"], graph["3"]["inputs"]["cfg"]) == (5, 2, 8.0)
    assert (graph["5"]["inputs"]["width"], graph["5"]["inputs"]["height"]) == (128, 192)
    assert graph["4"]["inputs"]["ckpt_name"] == "sd_xl_base_1.0.safetensors"
    assert graph["9"]["inputs"]["filename_prefix"] == "shotline/b/s1"
    assert filled["Prompt.text"] == "a red scarf" and filled["Sampler.seed"] == 5
    graph, _ = fill_preset(txt2img(), shot(negative="lowres"), checkpoint=None, filename_prefix="p")
    assert graph["7"]["inputs"]["text"] == "lowres"
    assert {"prompt", "negative", "seed", "steps", "cfg", "width", "height", "frames"} <= accepted_fields(txt2img())


def test_titles_win_over_inference():
    graph = txt2img()
    graph["7"]["_meta"]["title"] = "Prompt"  # a user points the shot's prompt at the other encoder
    roles = infer_roles(graph, frozenset({"Prompt"})).bindings
    assert "Prompt" not in roles and roles["Negative Prompt"] == [("7", {"text": "negative"})]
    filled_graph, _ = fill_preset(graph, shot(), checkpoint=None, filename_prefix="p")
    assert filled_graph["7"]["inputs"]["text"] == "a red scarf" and filled_graph["6"]["inputs"]["text"] == "a castle"


def test_conditioning_is_followed_through_combines_controlnets_and_stops_at_zero_out():
    graph = txt2img(**{
        "10": node("CLIPTextEncode", text="a moat", clip=["4", 1]),
        "11": node("ConditioningCombine", conditioning_1=["6", 0], conditioning_2=["10", 0]),
        "12": node("ConditioningSetTimestepRange", conditioning=["11", 0], start=0.0, end=1.0),
        "13": node("ControlNetApplyAdvanced", positive=["12", 0], negative=["14", 0], control_net=["15", 0],
                   image=["16", 0], strength=1.0),
        "14": node("ConditioningZeroOut", conditioning=["6", 0]),
        "15": node("ControlNetLoader", control_net_name="canny.safetensors"),
        "16": node("LoadImage", image="edges.png"),
    })
    graph["3"]["inputs"].update(positive=["13", 0], negative=["13", 1])
    roles = infer_roles(graph)
    assert [node_id for node_id, _ in roles.bindings["Prompt"]] == ["6", "10"]
    assert "Negative Prompt" not in roles.bindings  # zeroed: no text to put the shot's negative in
    assert roles.bindings["Input Image"] == [("16", {"image": "image"})]


def test_sampler_custom_advanced_takes_seed_steps_and_cfg_from_its_noise_scheduler_and_guider():
    graph = {
        "1": node("UNETLoader", unet_name="flux.safetensors", weight_dtype="default"),
        "2": node("CLIPTextEncode", text="a fox", clip=["9", 0]),
        "3": node("FluxGuidance", conditioning=["2", 0], guidance=3.5),
        "4": node("CFGGuider", model=["1", 0], positive=["3", 0], negative=["5", 0], cfg=1.0),
        "5": node("CLIPTextEncode", text="", clip=["9", 0]),
        "6": node("RandomNoise", noise_seed=7),
        "7": node("BasicScheduler", model=["1", 0], scheduler="simple", steps=20, denoise=1.0),
        "8": node("KSamplerSelect", sampler_name="euler"),
        "9": node("CLIPLoader", clip_name="t5.safetensors", type="flux"),
        "10": node("EmptySD3LatentImage", width=1024, height=1024, batch_size=1),
        "11": node("SamplerCustomAdvanced", noise=["6", 0], guider=["4", 0], sampler=["8", 0], sigmas=["7", 0],
                   latent_image=["10", 0]),
        "12": node("VAEDecode", samples=["11", 0], vae=["13", 0]),
        "13": node("VAELoader", vae_name="ae.safetensors"),
        "14": node("SaveImage", images=["12", 0], filename_prefix="flux"),
    }
    roles = infer_roles(graph).bindings
    assert roles["Sampler"] == [("6", {"noise_seed": "seed"}), ("7", {"steps": "steps"}), ("4", {"cfg": "cfg"}),
                                ("8", {"sampler_name": "sampler"})]
    assert roles["Prompt"] == [("2", {"text": "prompt"})] and roles["Negative Prompt"] == [("5", {"text": "negative"})]
    filled, _ = fill_preset(graph, shot(seed=3, steps=4, cfg=2.0), checkpoint=None, filename_prefix="p")
    assert (filled["6"]["inputs"]["noise_seed"], filled["7"]["inputs"]["steps"], filled["4"]["inputs"]["cfg"]) == \
        (3, 4, 2.0)


def test_a_linked_text_is_filled_in_its_string_primitive_and_a_video_latent_takes_the_frames():
    graph = txt2img(**{"20": node("PrimitiveStringMultiline", value="a castle at dawn"),
                       "5": node("EmptyHunyuanLatentVideo", width=848, height=480, length=33, batch_size=1)})
    graph["6"]["inputs"]["text"] = ["20", 0]
    roles = infer_roles(graph).bindings
    assert roles["Prompt"] == [("20", {"value": "prompt"})]
    assert roles["Size"] == [("5", {"width": "width", "height": "height", "length": "frames"})]
    filled, _ = fill_preset(graph, shot(frames=9), checkpoint=None, filename_prefix="p")
    assert filled["20"]["inputs"]["value"] == "a red scarf" and filled["5"]["inputs"]["length"] == 9


def test_two_samplers_are_refused_naming_the_candidates_and_how_to_choose():
    graph = txt2img(**{"30": node("KSampler", "Refiner", seed=2, steps=10, cfg=7.0, positive=["6", 0],
                                  negative=["7", 0], latent_image=["3", 0])})
    with pytest.raises(PresetError) as refused:
        fill_preset(graph, shot(), checkpoint=None, filename_prefix="p")
    message = str(refused.value)
    assert "2 samplers: 3 (KSampler 'KSampler'), 30 (KSampler 'Refiner')" in message
    assert "title the one shots drive 'Sampler'" in message and "`set`" in message
    graph["30"]["_meta"]["title"] = "Sampler"  # a title decides
    filled, _ = fill_preset(graph, shot(seed=9), checkpoint=None, filename_prefix="p")
    assert filled["30"]["inputs"]["seed"] == 9 and filled["3"]["inputs"]["seed"] == 1
    del graph["30"]["_meta"]
    filled, _ = fill_preset(graph, shot(set={"30.seed": 4, "3.seed": 5}), checkpoint=None, filename_prefix="p")
    assert (filled["3"]["inputs"]["seed"], filled["30"]["inputs"]["seed"]) == (5, 4)  # or `set` drives them
    with pytest.raises(PresetError, match="2 samplers"):  # a field only a sampler takes still needs one
        fill_preset(graph, shot(steps=3, set={"30.seed": 4}), checkpoint=None, filename_prefix="p")


def test_two_image_loaders_are_refused_only_for_a_shot_that_sends_an_image():
    graph = txt2img(**{"40": node("LoadImage", image="a.png"), "41": node("LoadImage", "Style", image="b.png")})
    fill_preset(graph, shot(), checkpoint=None, filename_prefix="p")
    with pytest.raises(PresetError, match=r"2 image loaders: 40 \(LoadImage\), 41 \(LoadImage 'Style'\)"):
        fill_preset(graph, shot(image="sha256:" + "0" * 64), checkpoint=None, filename_prefix="p", image_name="x.png")


def test_a_graph_with_nowhere_to_put_the_prompt_or_the_files_is_refused():
    graph = txt2img()
    del graph["9"]
    with pytest.raises(PresetError, match="no node titled 'Save' and none was found from its wiring"):
        check_graph("x", graph)
    graph = {"1": node("LoadImage", image="a.png"), "2": node("SaveImage", images=["1", 0], filename_prefix="p")}
    with pytest.raises(PresetError, match="no node titled 'Prompt'"):
        check_graph("x", graph)


def test_a_string_primitive_titled_prompt_takes_the_prompt_as_its_value():
    graph = txt2img(**{"20": node("PrimitiveStringMultiline", "Prompt", value="a castle at dawn")})
    graph["6"]["inputs"]["text"] = ["20", 0]
    filled, values = fill_preset(graph, shot(), checkpoint=None, filename_prefix="p")
    assert filled["20"]["inputs"]["value"] == "a red scarf" and values["Prompt.value"] == "a red scarf"
