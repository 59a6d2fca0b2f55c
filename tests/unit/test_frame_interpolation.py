"""Frame interpolation: timing plans, optical flow against a known motion, and the RIFE folder, crash and black-frame
checks. RIFE itself runs for real through rife-ncnn-vulkan-python-tntwise with tiny ncnn graphs these tests write
(no RIFE weights ship anywhere): a graph that blends by the time step, one that outputs black, one that is broken."""
import logging

import numpy as np
import pytest

from shotline.core.frame_interpolation import (FLOW_DETAIL, FlowInterpolator, ModelMissingError, assemble,
                                               blend_frames, choose_engine, generated_jobs, interpolate_flow,
                                               interpolate_rife, is_black, list_rife_folders, plan_frames,
                                               plan_multiplier, plan_target_fps, reject_black_frames,
                                               rife_available, rife_model_from_folder)
from tests.images import moving_sprite_clip, psnr

# --- timing plans ---------------------------------------------------------------------------------------------------


def test_multipliers_insert_frames_between_each_pair():
    assert plan_multiplier(3, 2) == [(0, 0.0), (0, 0.5), (1, 0.0), (1, 0.5), (2, 0.0)]
    assert len(plan_multiplier(5, 4)) == 17
    assert [t for _, t in plan_multiplier(2, 4)] == [0.0, 0.25, 0.5, 0.75, 0.0]
    assert plan_multiplier(1, 4) == [(0, 0.0)]
    assert plan_frames(5, "x2", 12.0, 99.0)[1] == 24.0
    plan, fps = plan_frames(5, "x4", 8.0, 99.0)
    assert len(plan) == 17 and fps == 32.0


def test_a_target_fps_covers_the_same_span_of_time():
    plan = plan_target_fps(16, 8.0, 24.0)  # 15/8 s at 24 fps: 45 intervals, the same frames as x3
    tripled = plan_multiplier(16, 3)
    assert len(plan) == 46 and [i for i, _ in plan] == [i for i, _ in tripled]
    assert np.allclose([t for _, t in plan], [t for _, t in tripled])
    plan = plan_target_fps(7, 12.0, 30.0)  # 0.5 s: frames at 0, 1/30, ... 15/30
    assert len(plan) == 16
    assert plan[1] == (0, pytest.approx(0.4)) and plan[5] == (2, 0.0) and plan[-1] == (6, 0.0)
    assert plan_target_fps(9, 24.0, 12.0) == [(i, 0.0) for i in range(0, 9, 2)]  # fewer fps: every other frame
    slightly_faster = plan_target_fps(4, 24.0, 25.0)  # 0.125 s: frames at 0, 0.04, 0.08, 0.12 s
    assert [i for i, _ in slightly_faster] == [0, 0, 1, 2]
    assert np.allclose([t for _, t in slightly_faster], [0, 0.96, 0.92, 0.88])
    plan, fps = plan_frames(7, "target_fps", 12.0, 30.0)
    assert len(plan) == 16 and fps == 30.0
    with pytest.raises(ValueError, match="frame rates must be positive"):
        plan_target_fps(4, 0.0, 24.0)
    with pytest.raises(ValueError, match="unknown mode 'x3'"):
        plan_frames(4, "x3", 12.0, 24.0)


def test_source_frames_pass_through_unchanged():
    frames = np.random.default_rng(0).random((3, 8, 8, 3)).astype(np.float32)
    plan = plan_multiplier(3, 2)
    made = [np.full((8, 8, 3), k, np.float32) for k in (7, 9)]
    out = assemble(frames, plan, made)
    assert out.shape == (5, 8, 8, 3)
    assert np.array_equal(out[0], frames[0]) and np.array_equal(out[2], frames[1]) and np.array_equal(out[4], frames[2])
    assert out[1].max() == 7 and out[3].max() == 9
    assert generated_jobs(plan) == [(0, 0.5), (1, 0.5)]


# --- optical flow -----------------------------------------------------------------------------------------------------

def test_flow_beats_a_plain_blend_on_a_known_motion():
    clip = moving_sprite_clip(3, 256, 8)  # the sprite moves 16 px right, 8 px down from frame 0 to frame 2
    ends = clip[[0, 2]]
    plan = plan_multiplier(2, 2)
    [middle] = interpolate_flow(ends, plan)
    [blend] = blend_frames(ends, plan)
    flow_db, blend_db = psnr(middle, clip[1]), psnr(blend, clip[1])
    print(f"x2 middle frame: flow {flow_db:.2f} dB, blend {blend_db:.2f} dB")
    assert flow_db >= blend_db + 6


def test_x4_quarter_frames_follow_the_motion_too():
    clip = moving_sprite_clip(5, 256, 4)
    plan = plan_multiplier(2, 4)
    ticks = []
    made = interpolate_flow(clip[[0, 4]], plan, on_frame=lambda: ticks.append(1))
    blends = blend_frames(clip[[0, 4]], plan)
    assert len(made) == 3 and len(ticks) == 3
    for k, (frame, blend) in enumerate(zip(made, blends), start=1):
        flow_db, blend_db = psnr(frame, clip[k]), psnr(blend, clip[k])
        print(f"t={k / 4}: flow {flow_db:.2f} dB, blend {blend_db:.2f} dB")
        assert flow_db >= blend_db + 6


def test_every_flow_detail_works_and_a_still_scene_stays_still():
    clip = moving_sprite_clip(3, 128, 4)
    for detail in FLOW_DETAIL:
        [middle] = FlowInterpolator(detail).between(clip[0], clip[2], [0.5])
        assert psnr(middle, clip[1]) > psnr(0.5 * (clip[0] + clip[2]), clip[1]) + 3, detail
    [same] = FlowInterpolator().between(clip[0], clip[0], [0.3])
    assert psnr(same, clip[0]) > 45
    with pytest.raises(ValueError, match="unknown flow detail"):
        FlowInterpolator("ultra")


def test_flow_keeps_an_alpha_channel_and_a_batch_runs_end_to_end():
    clip = moving_sprite_clip(4, 96, 2)
    rgba = np.concatenate([clip, np.ones((4, 96, 96, 1), np.float32)], axis=-1)
    plan, fps = plan_frames(4, "target_fps", 8.0, 20.0)
    out = assemble(rgba, plan, interpolate_flow(rgba, plan))
    assert out.shape == (len(plan), 96, 96, 4) and fps == 20.0
    assert np.allclose(out[..., 3], 1.0)


# --- RIFE model folders -------------------------------------------------------------------------------------------

NCNN_MAGIC = "7767517"
# out0 = in0 + (in1 - in0) * t, with t (input in2, one channel) copied to three channels: a "RIFE v4" graph
LERP_GRAPH = f"""{NCNN_MAGIC}
9 12
Input            in0              0 1 in0
Input            in1              0 1 in1
Input            in2              0 1 in2
Split            split0           1 2 in0 in0a in0b
Split            split2           1 3 in2 t0 t1 t2
Concat           cat              3 1 t0 t1 t2 t3 0=0
BinaryOp         sub              2 1 in1 in0a diff 0=1
BinaryOp         mul              2 1 diff t3 scaled 0=2
BinaryOp         add              2 1 in0b scaled out0 0=0
"""
BLACK_GRAPH = f"""{NCNN_MAGIC}
4 4
Input            in0              0 1 in0
Input            in1              0 1 in1
Input            in2              0 1 in2
BinaryOp         zero             1 1 in0 out0 0=2 1=1 2=0.0
"""
BROKEN_GRAPH = f"""{NCNN_MAGIC}
2 2
Input            in0              0 1 in0
BinaryOp         sub              2 1 in1 in0 out0 0=1
"""


def model_folder(root, name: str, graph: str | None, extra=()):
    folder = root / name
    folder.mkdir()
    if graph is not None:
        (folder / "flownet.param").write_text(graph)
        (folder / "flownet.bin").write_bytes(b"")  # these graphs have no weights
    for stem in extra:
        (folder / f"{stem}.param").write_text(NCNN_MAGIC + "\n")
        (folder / f"{stem}.bin").write_bytes(b"\0")
    return folder


def test_an_empty_folder_names_the_missing_flownet_files(tmp_path):
    empty = model_folder(tmp_path, "rife-v4.6", None)
    with pytest.raises(ModelMissingError) as caught:
        rife_model_from_folder(empty)
    message = str(caught.value)
    assert str(empty / "flownet.param") in message and "ComfyUI/models/rife/rife-v4.6/flownet.param" in message
    (empty / "flownet.param").write_text(LERP_GRAPH)
    with pytest.raises(ModelMissingError, match="flownet.bin"):
        rife_model_from_folder(empty)
    with pytest.raises(ModelMissingError, match="no RIFE model folder chosen"):
        rife_model_from_folder("none")
    with pytest.raises(ModelMissingError, match="nowhere"):
        rife_model_from_folder(tmp_path / "nowhere")


def test_model_versions_come_from_the_folder(tmp_path):
    v4 = rife_model_from_folder(model_folder(tmp_path, "rife-v4.26", LERP_GRAPH))
    assert v4.v4 and not v4.v2 and v4.padding == 64 and v4.any_time
    renamed_v4 = rife_model_from_folder(model_folder(tmp_path, "my-rife", LERP_GRAPH))
    assert renamed_v4.v4 and renamed_v4.padding == 32  # one flownet and nothing else is a v4 model
    v2 = model_folder(tmp_path, "rife-v2.3", LERP_GRAPH)
    with pytest.raises(ModelMissingError, match="contextnet.param"):
        rife_model_from_folder(v2)  # v2 models also need contextnet and fusionnet
    v2 = model_folder(tmp_path, "rife-v2.4", LERP_GRAPH, extra=("contextnet", "fusionnet"))
    assert rife_model_from_folder(v2).v2 and not rife_model_from_folder(v2).v4
    anime = rife_model_from_folder(model_folder(tmp_path, "rife-anime", LERP_GRAPH, extra=("contextnet", "fusionnet")))
    assert not anime.v2 and not anime.v4
    not_ncnn = model_folder(tmp_path, "rife-v4.7", "PK\x03\x04 a zip, not ncnn")
    with pytest.raises(ValueError, match="not an ncnn .param file"):
        rife_model_from_folder(not_ncnn)
    assert list_rife_folders([tmp_path, tmp_path / "missing"]) == sorted(
        ["rife-v4.26", "my-rife", "rife-v2.3", "rife-v2.4", "rife-anime", "rife-v4.7"])


def test_black_frames_are_rejected_unless_the_neighbours_are_dark():
    lit = np.full((2, 8, 8, 3), 0.6, np.float32)
    black = np.zeros((8, 8, 3), np.float32)
    with pytest.raises(ValueError, match="all-black frame between frames 0 and 1 .*rife-v4.6.*flownet.param"):
        reject_black_frames(lit, [(0, 0.5)], [black], "models/rife/rife-v4.6")
    fade = np.stack([np.full((8, 8, 3), 0.05, np.float32), np.zeros((8, 8, 3), np.float32)])
    reject_black_frames(fade, [(0, 0.5)], [black], "x")  # a fade to black may well give a black frame
    reject_black_frames(lit, [(0, 0.5)], [lit[0] * 0.5], "x")
    assert is_black(black) and is_black(black + 1 / 255) and not is_black(black + 0.05)


def test_engine_choice(tmp_path, caplog):
    assert choose_engine("auto", None) == ("optical_flow", None)
    assert choose_engine("optical_flow", model_folder(tmp_path, "rife-v4.6", LERP_GRAPH))[0] == "optical_flow"
    empty = model_folder(tmp_path, "rife-v4.9", None)
    with caplog.at_level(logging.WARNING, logger="shotline"):
        assert choose_engine("auto", empty) == ("optical_flow", None)
    assert "interpolating with optical flow instead" in caplog.text and "flownet.param" in caplog.text
    with pytest.raises(ModelMissingError, match="flownet.param"):
        choose_engine("rife", empty)
    with pytest.raises(ValueError, match="unknown engine"):
        choose_engine("dain", None)
    assert rife_available()  # install.py installs the package (no models)
    used, model = choose_engine("auto", tmp_path / "rife-v4.6")
    assert used == "rife" and model.folder == tmp_path / "rife-v4.6"


# --- RIFE through the real package ----------------------------------------------------------------------------------

def test_rife_runs_a_model_folder_at_the_planned_times(tmp_path):
    model = rife_model_from_folder(model_folder(tmp_path, "rife-v4-lerp", LERP_GRAPH))
    frames = np.zeros((3, 40, 50, 3), np.float32)
    frames[0, ..., 0], frames[1, ..., 1], frames[2, ..., 2] = 0.8, 0.4, 1.0
    plan = plan_multiplier(3, 4)
    ticks = []
    made = interpolate_rife(frames, plan, model, on_frame=lambda: ticks.append(1))
    assert len(made) == 6 and len(ticks) == 6
    for (i, t), frame in zip(generated_jobs(plan), made):
        expected = (1 - t) * frames[i] + t * frames[i + 1]  # what the lerp graph computes: times and order arrive
        assert frame.shape == (40, 50, 3) and np.abs(frame - expected).max() <= 1.5 / 255


def test_rife_black_output_is_an_error_and_a_crash_is_reported(tmp_path):
    frames = np.full((2, 32, 32, 3), 0.5, np.float32)
    black = rife_model_from_folder(model_folder(tmp_path, "rife-v4-black", BLACK_GRAPH))
    with pytest.raises(ValueError, match="all-black frame.*rife-v4-black"):
        interpolate_rife(frames, plan_multiplier(2, 2), black)
    broken = rife_model_from_folder(model_folder(tmp_path, "rife-v4-broken", BROKEN_GRAPH))
    with pytest.raises(RuntimeError, match="RIFE crashed with SIGSEGV after 0 of 1 frames.*rife-v4-broken"):
        interpolate_rife(frames, plan_multiplier(2, 2), broken)  # ncnn segfaults in the child; this process lives
    with pytest.raises(ValueError, match="RGB frames"):
        interpolate_rife(np.zeros((2, 8, 8, 4), np.float32), plan_multiplier(2, 2), black)
