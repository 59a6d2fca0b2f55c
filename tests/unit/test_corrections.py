from shotline_controller.comfy.corrections import CROWD_NEGATIVE, SEED_STEP, choose_correction

PARAMS = {"prompt": "a girl on a rooftop", "negative": "lowres", "seed": 5, "steps": 20, "cfg": 7.0,
          "width": 128, "height": 96}


def verdict(*reasons, check="quality", **extra):
    return {"check": check, "reasons": list(reasons), **extra}


def test_blur_gets_more_steps_and_keeps_the_seed():
    correction = choose_correction(PARAMS, [verdict("image 0: blurry: sharpness 2.4 < 100")], 1)
    assert correction == {"changes": {"steps": 30}, "reason": "blurry"}
    assert choose_correction({**PARAMS, "steps": 75}, [verdict("image 0: blurry")], 1)["changes"]["steps"] == 80


def test_too_small_scales_up_to_the_checks_minimum_side():
    quality = verdict("image 0: too small: 128x96, shortest side 96 < 512", thresholds={"min_side": 512})
    assert choose_correction(PARAMS, [quality], 1)["changes"] == {"width": 680, "height": 512}


def test_extra_people_add_solo_and_a_negative():
    identity = verdict("frame 0: wrong face count: 3 faces for 1 character", "frame 0: unexpected face(s): 2",
                       check="identity")
    changes = choose_correction(PARAMS, [identity], 1)["changes"]
    assert changes["prompt"] == "a girl on a rooftop, solo" and changes["negative"] == f"lowres, {CROWD_NEGATIVE}"
    assert "seed" not in changes


def test_low_identity_reseeds_and_weights_the_prompt_more_each_time():
    identity = [verdict("frame 0: low identity: Aiko 0.62 < 0.75", check="identity")]
    first = choose_correction(PARAMS, identity, 1)
    assert first["changes"] == {"prompt": "(a girl on a rooftop:1.15)", "seed": 5 + SEED_STEP}
    second = choose_correction({**PARAMS, **first["changes"]}, identity, 2)
    assert second["changes"]["prompt"] == "(a girl on a rooftop:1.30)"
    assert second["changes"]["seed"] == 5 + SEED_STEP + 2 * SEED_STEP
    assert first["reason"] == "low identity"


def test_reasons_combine_and_unknown_reasons_reseed():
    combined = choose_correction(PARAMS, [verdict("image 0: blurry"), verdict("frame 0: no face found",
                                                                             check="identity")], 1)
    assert set(combined["changes"]) == {"steps", "prompt", "seed"}
    assert combined["reason"] == "blurry, low identity"
    assert choose_correction(PARAMS, [verdict("something new")], 2) == {
        "changes": {"seed": 5 + 2 * SEED_STEP}, "reason": "something new"}


def test_identity_failures_of_a_character_shot_climb_the_ladder():
    from shotline_controller.comfy.corrections import CorrectionContext
    params = {**PARAMS, "characters": ["aiko"]}
    low = [verdict("frame 0: low identity: aiko 0.41 < 0.75", check="identity")]
    first = choose_correction(params, low, 1)
    assert first["identity_rung"] == 1 and first["changes"]["character_weight"] == 1.15
    assert "seed" in first["changes"] and first["step"].startswith("rung 1 seed + weight")
    assert "prompt" not in first["changes"]  # the design prompt is weighted, not the shot's own text
    # a blurry attempt in between keeps the rung
    blurry = choose_correction({**params, **first["changes"]}, [verdict("image 0: blurry")], 2, first)
    assert blurry["identity_rung"] == 1 and "step" not in blurry
    second = choose_correction({**params, **first["changes"]}, low, 3, blurry, CorrectionContext(has_loras=True))
    assert second["identity_rung"] == 2
    assert second["changes"]["lora_scale"] == 1.2
    assert (second["changes"]["refine_cycles"], second["changes"]["refine_denoise"]) == (5, 0.55)
    no_loras = choose_correction(params, low, 2, first)
    assert "lora_scale" not in no_loras["changes"] and "LoRA scale" not in no_loras["step"]
    # rung 3 starts from a reference only where the preset has an Input Image; else rung 2 again, further
    third = choose_correction({**params, **second["changes"]}, low, 4, second,
                              CorrectionContext(has_input_image=True))
    assert third["identity_rung"] == 3 and third["changes"]["reference_image_of"] == "aiko"
    without = choose_correction({**params, **second["changes"]}, low, 4, second)
    assert without["identity_rung"] == 3 and without["changes"]["refine_cycles"] == 7
    assert choose_correction({**params, "refine_cycles": 8, "refine_denoise": 0.75}, low, 5, without
                             )["changes"]["refine_cycles"] == 8  # limits hold


def test_identity_failure_without_characters_still_weights_the_prompt():
    changes = choose_correction(PARAMS, [verdict("frame 0: no face found", check="identity")], 1)["changes"]
    assert changes["prompt"] == "(a girl on a rooftop:1.15)"


def test_the_ladder_never_lowers_what_the_user_set_and_keeps_to_the_presets_fields():
    from shotline_controller.comfy.corrections import CorrectionContext
    low = [verdict("frame 0: low identity: aiko 0.41 < 0.75", check="identity")]
    params = {**PARAMS, "characters": ["aiko"], "lora_scale": 3.0, "refine_denoise": 0.9, "refine_cycles": 10}
    second = choose_correction(params, low, 2, {"identity_rung": 1}, CorrectionContext(has_loras=True))["changes"]
    assert (second["lora_scale"], second["refine_denoise"], second["refine_cycles"]) == (3.0, 0.9, 10)
    off = choose_correction({**params, "lora_scale": 0.0}, low, 2, {"identity_rung": 1},
                            CorrectionContext(has_loras=True))["changes"]
    assert off["lora_scale"] == 0.2  # 0 is a value (LoRAs off), not "unset"
    # a face-repair preset has no Character Prompt: rung 1 changes only what it takes
    repair = choose_correction({**PARAMS, "characters": ["aiko"]}, low, 1, None,
                               CorrectionContext(fields=frozenset({"seed", "prompt", "refine_cycles"})))
    assert set(repair["changes"]) == {"seed"} and "(the preset takes no character_weight)" in repair["reason"]
    # rung 3 never replaces a picture the shot brought (a repair)
    third = choose_correction({**PARAMS, "characters": ["aiko"], "image": "sha256:" + "a" * 64}, low, 3,
                              {"identity_rung": 2}, CorrectionContext(has_input_image=True))
    assert "reference_image_of" not in third["changes"]


def test_too_few_faces_is_not_treated_as_a_crowd():
    two = {**PARAMS, "characters": ["aiko", "kairo"]}
    few = choose_correction(two, [verdict("frame 0: wrong face count: 1 face for 2 characters", check="identity")], 1)
    assert "negative" not in few["changes"] and "solo" not in few["changes"].get("prompt", "")
    many = choose_correction(two, [verdict("frame 0: wrong face count: 3 faces for 2 characters",
                                           check="identity")], 1)["changes"]
    assert CROWD_NEGATIVE in many["negative"] and "solo" not in many.get("prompt", "")
    assert "solo" in choose_correction(PARAMS, [verdict("frame 0: unexpected face(s): 1")], 1)["changes"]["prompt"]


def test_noise_gets_more_steps_as_blur_does():
    correction = choose_correction(PARAMS, [verdict("image 0: noisy: noise 11.2 > 7 levels")], 1)
    assert correction == {"changes": {"steps": 30}, "reason": "noisy"}


def test_the_learners_fixes_replace_the_tables_own_and_are_kept():
    from shotline_controller.comfy.corrections import FIX_OPTIONS, default_fix, failure_reasons
    blurry = [verdict("image 0: blurry: sharpness 2.4 < 100")]
    correction = choose_correction(PARAMS, blurry, 1, fixes={"blurry": "new seed"})
    assert correction["changes"] == {"seed": 5 + SEED_STEP} and correction["fixes"] == {"blurry": "new seed"}
    assert choose_correction(PARAMS, blurry, 1, fixes={"blurry": "more steps"})["changes"] == {"steps": 30}
    flat = [verdict("image 0: low contrast: 0.01 < 0.05")]
    assert choose_correction(PARAMS, flat, 1, fixes={"low contrast": "new seed"})["changes"] == {"seed": 5 + SEED_STEP}
    crowd = [verdict("frame 0: wrong face count: 3 faces for 1 character", check="identity")]
    assert "negative" not in choose_correction(PARAMS, crowd, 1, fixes={"extra people": "new seed"})["changes"]
    # a rung chosen is jumped to, and the ladder goes on from it
    aiko = {**PARAMS, "characters": ["aiko"]}
    identity = [verdict("frame 0: low identity: aiko 0.42 < 0.75", check="identity")]
    jumped = choose_correction(aiko, identity, 1, fixes={"low identity": "rung 2"})
    assert jumped["identity_rung"] == 2 and "refine_cycles" in jumped["changes"]
    assert default_fix("low identity", jumped) == "rung 3" and default_fix("low identity") == "rung 1"
    assert failure_reasons(aiko, identity + blurry + crowd) == ["blurry", "extra people", "low identity"]
    assert failure_reasons(PARAMS, identity) == []  # no character: the prompt is weighted, nothing to choose
    assert all(default_fix(reason) == options[0] for reason, options in FIX_OPTIONS.items()
               if reason != "low identity")
