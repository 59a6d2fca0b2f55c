"""The learner's pure logic: grids, choices, records, preferences."""
import random

from shotline_controller.comfy.corrections import FIX_OPTIONS
from shotline_controller.learner import KNOBS, Counts, arm_value, choose, knob_arms, preferences


def test_grid_is_bounded_and_holds_the_default():
    for knob, value in {"cfg": 7.0, "steps": 20, "lora_scale": 1.0, "refine_denoise": 0.45, "refine_cycles": 3}.items():
        arms = knob_arms(knob, value)
        assert 1 < len(arms) <= 6
        assert any(arm_value(knob, arm) == value for arm in arms)
    assert knob_arms("sampler", "euler", options=["euler", "dpmpp_2m", "odd"]) == ("euler", "dpmpp_2m")
    assert set(KNOBS) == {"cfg", "steps", "sampler", "lora_scale", "refine_denoise", "refine_cycles"}


def test_explicit_bounds_are_respected():
    arms = knob_arms("cfg", 7.0, low=6.5, high=8.0)
    assert all(6.5 <= float(arm) <= 8.0 for arm in arms) and "7" in arms


def test_exploit_picks_the_best_mean_and_ties_go_to_the_default():
    counts = {"6": Counts(2, 8), "7": Counts(5, 5), "8": Counts(9, 1)}
    assert choose("cfg", ["6", "7", "8"], counts, default="7", mode="exploit", rng=random.Random(0)).arm == "8"
    even = {"6": Counts(3, 3), "8": Counts(3, 3)}
    assert choose("cfg", ["6", "8"], even, default="8", mode="exploit", rng=random.Random(0)).arm == "8"
    assert choose("cfg", ["6", "8"], even, default="6", mode="exploit", rng=random.Random(0)).arm == "6"


def test_explore_with_much_evidence_converges_to_the_best():
    counts = {"5": Counts(30, 170), "7": Counts(100, 100), "9": Counts(170, 30)}
    rng = random.Random(1)
    picks = [choose("cfg", list(counts), counts, default="7", mode="explore", rng=rng).arm for _ in range(200)]
    assert picks.count("9") == 200


def test_record_holds_the_stats_and_why():
    choice = choose("fix:low identity", FIX_OPTIONS["low identity"], {"rung 3": Counts(4, 1)},
                    default="rung 1", mode="explore", rng=random.Random(2))
    record = choice.as_record()
    assert set(record["stats"]) == set(FIX_OPTIONS["low identity"])
    assert record["stats"]["rung 3"]["successes"] == 4 and record["stats"]["rung 3"]["draw"] is not None
    assert record["why"].startswith(f"low identity {choice.arm}")


def test_preferences_interval_and_p_best():
    counts = {"6": Counts(2, 8), "7": Counts(5, 5), "8": Counts(9, 1)}
    found = preferences(counts, rng=random.Random(3))
    assert found["arm"] == "8" and found["low"] <= found["mean"] <= found["high"] and found["trials"] == 10
    total = sum(preferences({arm: counts[arm], **{o: Counts(0, 0) for o in counts if o != arm}}, rng=random.Random(3))
                ["p_best"] for arm in counts)
    assert 0 < found["p_best"] <= 1 and total > 0


def test_deterministic_given_rng():
    counts = {"6": Counts(1, 1), "7": Counts(1, 2)}
    a = [choose("cfg", ["6", "7", "8"], counts, default="7", mode="explore", rng=random.Random(5)).as_record()]
    b = [choose("cfg", ["6", "7", "8"], counts, default="7", mode="explore", rng=random.Random(5)).as_record()]
    assert a == b


def test_a_failure_blames_the_knobs_its_reasons_point_at():
    from shotline_controller.comfy.corrections import BLAME, blamed_knobs
    blurry = [{"reasons": ["image 0: blurry: sharpness 2 < 35"]}]
    assert blamed_knobs({}, blurry) == ["sampler", "steps"]
    crowd = [{"reasons": ["frame 0: wrong face count: 3 faces for 1 character"]}]
    assert blamed_knobs({"characters": ["aiko"]}, crowd) == []
    assert blamed_knobs({}, [{"reasons": ["execution error: out of memory"]}]) is None  # unknown: all of them
    assert blamed_knobs({}, blurry + [{"reasons": ["image 0: too small: 64 < 512"]}]) is None
    assert set(BLAME) == set(FIX_OPTIONS) and all(set(knobs) <= set(KNOBS) for knobs in BLAME.values())


def test_explore_keeps_the_presets_value_on_an_empty_history_most_of_the_time():
    arms = ["5", "6", "7", "8", "9"]
    fresh = [choose("cfg", arms, {}, default="7", mode="explore", rng=random.Random(i)).arm for i in range(500)]
    assert 0.6 < fresh.count("7") / 500 < 0.95  # an untried grid is not explored blindly
