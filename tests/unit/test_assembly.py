"""Scene and episode assembly on real files (PyAV encode/decode, no database): lengths, crossfades, sizes, audio."""
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from shotline.core.video_encode import encode_mp4, probe_media, read_video

from shotline_controller.contract import AssemblyRequest, InputError, validated
from shotline_controller.media.assembly_jobs import choose_output, failure
from shotline_controller.media.assembly import (
    SAMPLE_RATE,
    AssemblyError,
    ClipSource,
    acrossfade_gains,
    assemble,
    decode_audio,
    episode_paths,
    sanitise_title,
    write_jpeg,
    xfade_frame,
)
from tests.images import write_wav

FPS = 24
RED, GREEN, BLUE = (230, 20, 20), (20, 230, 20), (20, 20, 230)


def tone(hz: float, seconds: float, amplitude: float = 0.3, channels: int = 2) -> np.ndarray:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return np.repeat((amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)[None], channels, axis=0)


def solid_clip(path: Path, colour, seconds: float = 1.0, size=(64, 64), fps: float = FPS, audio=None) -> Path:
    frames = np.zeros((round(seconds * fps), size[1], size[0], 3), np.uint8)
    frames[:] = colour
    encode_mp4(path, frames, fps, audio, SAMPLE_RATE if audio is not None else None)
    return path


def still(path: Path, colour, size=(64, 64)) -> Path:
    picture = np.zeros((size[1], size[0], 3), np.uint8)
    picture[:] = colour
    if path.suffix == ".jpg":
        write_jpeg(path, picture)
    else:
        _write_png(path, picture)
    return path


def _write_png(path: Path, picture: np.ndarray) -> None:
    with av.open(str(path), mode="w", format="image2") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = picture.shape[1], picture.shape[0], "rgb24"
        for packet in [*stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")), *stream.encode(None)]:
            container.mux(packet)


def dominant_hz(audio: np.ndarray, start_s: float, end_s: float) -> float:
    window = audio[0, round(start_s * SAMPLE_RATE):round(end_s * SAMPLE_RATE)]
    spectrum = np.abs(np.fft.rfft(window * np.hanning(len(window))))
    return float(np.fft.rfftfreq(len(window), 1 / SAMPLE_RATE)[np.argmax(spectrum)])


def level_db(audio: np.ndarray, hz: float, start_s: float, end_s: float) -> float:
    """The level of one frequency in a window (projection on a sinusoid), dB re full scale."""
    window = audio[0, round(start_s * SAMPLE_RATE):round(end_s * SAMPLE_RATE)].astype(np.float64)
    t = np.arange(len(window)) / SAMPLE_RATE
    amplitude = 2 * abs(np.mean(window * np.exp(-2j * np.pi * hz * t)))
    return 20 * np.log10(amplitude + 1e-12)


def near(frame: np.ndarray, colour, tolerance: int = 12) -> bool:
    return bool(np.abs(frame.reshape(-1, 3).mean(axis=0) - np.array(colour)).max() <= tolerance)


@pytest.fixture
def three_clips(tmp_path) -> list[ClipSource]:
    return [ClipSource(solid_clip(tmp_path / f"clip{index}.mp4", colour, audio=tone(hz, 1.0)), f"shot {index}")
            for index, (colour, hz) in enumerate(((RED, 440), (GREEN, 660), (BLUE, 880)))]


def test_three_clips_crossfade_into_one_h264_aac_scene(three_clips, tmp_path):
    seen = []
    result = assemble(three_clips, tmp_path / "out" / "sc01.mp4", crossfade_s=0.25,
                      progress=lambda done, total: seen.append((done, total)))
    info = probe_media(result.path)
    assert (info.video_codec, info.audio_codec, info.width, info.height) == ("h264", "aac", 64, 64)
    assert info.frame_count == result.frame_count == 60           # 3 x 24 - 2 x 6
    assert info.duration_s == pytest.approx(2.5, abs=1 / FPS) and result.duration_s == 2.5
    assert (info.fps, info.sample_rate, info.audio_channels) == (24.0, SAMPLE_RATE, 2)
    assert [(p.start_s, p.duration_s) for p in result.parts] == [(0.0, 1.0), (0.75, 1.0), (1.5, 1.0)]
    assert seen[-1] == (60, 60) and all(b >= a for (a, _), (b, _) in zip(seen, seen[1:]))

    frames, _, audio, rate = read_video(result.path)
    assert near(frames[10], RED) and near(frames[30], GREEN) and near(frames[50], BLUE)
    # the overlap of clips 1 and 2 is frames 18..23: frame 21 is half of each
    assert near(frames[21], ((RED[0] + GREEN[0]) / 2, (RED[1] + GREEN[1]) / 2, 20), tolerance=20)
    assert near(frames[17], RED) and near(frames[24], GREEN)
    # sound stays with its picture: each clip's tone in the middle of its own stretch of the cut
    assert rate == SAMPLE_RATE
    assert dominant_hz(audio, 0.2, 0.6) == pytest.approx(440, abs=5)
    assert dominant_hz(audio, 1.05, 1.45) == pytest.approx(660, abs=5)
    assert dominant_hz(audio, 1.9, 2.3) == pytest.approx(880, abs=5)
    # in the audio crossfade both tones sound
    assert level_db(audio, 440, 0.76, 0.99) > -30 and level_db(audio, 660, 0.76, 0.99) > -30
    # the thumbnail is the middle frame (30: clip 2, green)
    with av.open(str(result.thumbnail)) as container:
        thumbnail = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert result.thumbnail == tmp_path / "out" / "sc01.jpg" and thumbnail.shape == (64, 64, 3)
    assert near(thumbnail, GREEN)
    assert not list((tmp_path / "out").glob(".*partial*"))  # nothing left half-written


def test_the_blend_is_ffmpeg_xfade_fade():
    """The streaming numpy blend gives what an `xfade=transition=fade` filter graph gives, frame for frame."""
    rng = np.random.default_rng(7)
    first, second = rng.integers(0, 256, (2, 12, 32, 48, 3), dtype=np.uint8)
    graph = av.filter.Graph()
    options = "video_size=48x32:pix_fmt=rgb24:time_base=1/24:frame_rate=24:pixel_aspect=1/1"
    sources = [graph.add("buffer", options), graph.add("buffer", options)]
    xfade = graph.add("xfade", "transition=fade:duration=0.25:offset=0.25")  # 6 frames, from frame 6
    sink = graph.add("buffersink")
    sources[0].link_to(xfade, 0, 0)
    sources[1].link_to(xfade, 0, 1)
    xfade.link_to(sink)
    graph.configure()
    for source, clip in zip(sources, (first, second)):
        for index, picture in enumerate(clip):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 24)
            source.push(frame)
        source.push(None)
    expected = []
    while True:
        try:
            expected.append(sink.pull().to_ndarray(format="rgb24"))
        except (av.BlockingIOError, av.EOFError):
            break
    ours = [*first[:6], *(xfade_frame(first[6 + j], second[j], j, 6) for j in range(6)), *second[6:]]
    assert len(expected) == len(ours) == 18
    assert max(int(np.abs(a.astype(int) - b).max()) for a, b in zip(expected, ours)) <= 1


def test_audio_gains_are_ffmpeg_acrossfade():
    graph = av.filter.Graph()
    options = f"sample_rate={SAMPLE_RATE}:sample_fmt=fltp:channel_layout=mono:time_base=1/{SAMPLE_RATE}"
    sources = [graph.add("abuffer", options), graph.add("abuffer", options)]
    fade = graph.add("acrossfade", "d=0.01:c1=tri:c2=tri")  # 480 samples
    sink_format = graph.add("aformat", "sample_fmts=fltp:channel_layouts=mono")
    sink = graph.add("abuffersink")
    sources[0].link_to(fade, 0, 0)
    sources[1].link_to(fade, 0, 1)
    fade.link_to(sink_format)
    sink_format.link_to(sink)
    graph.configure()
    for source, value in zip(sources, (1.0, 2.0)):
        frame = av.AudioFrame.from_ndarray(np.full((1, 1000), value, np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, 0, Fraction(1, SAMPLE_RATE)
        source.push(frame)
        source.push(None)
    chunks = []
    while True:
        try:
            chunks.append(sink.pull().to_ndarray())
        except (av.BlockingIOError, av.EOFError):
            break
    expected = np.concatenate(chunks, axis=1)[0]
    fade_out, fade_in = acrossfade_gains(480)
    assert len(expected) == 1000 + 1000 - 480
    np.testing.assert_allclose(expected[520:1000], 1.0 * fade_out + 2.0 * fade_in, atol=1e-6)


def test_stills_held_for_their_durations_with_a_silent_aac_track(tmp_path):
    clips = [ClipSource(still(tmp_path / "a.png", RED), "shot a", 1.0),
             ClipSource(still(tmp_path / "b.jpg", BLUE), "shot b", 1.5)]
    result = assemble(clips, tmp_path / "stills.mp4", crossfade_s=0.5)
    info = probe_media(result.path)
    assert (result.fps, result.frame_count, result.duration_s) == (24.0, 48, 2.0)  # 24 + 36 - 12
    assert (info.video_codec, info.audio_codec, info.frame_count) == ("h264", "aac", 48)
    assert [(p.start_s, p.duration_s) for p in result.parts] == [(0.0, 1.0), (0.5, 1.5)]
    frames, _, audio, _ = read_video(result.path)
    assert near(frames[5], RED) and near(frames[40], BLUE)
    assert np.abs(audio).max() < 1e-3


def test_mixed_sizes_and_rates_are_scaled_to_fit_letterboxed_and_retimed(tmp_path):
    clips = [ClipSource(solid_clip(tmp_path / "square.mp4", RED, 1.0, (64, 64), fps=30), "shot square"),
             ClipSource(solid_clip(tmp_path / "wide.mp4", GREEN, 1.0, (96, 48), fps=12), "shot wide"),
             ClipSource(still(tmp_path / "tall.png", BLUE, (32, 64)), "shot tall", 0.5)]
    result = assemble(clips, tmp_path / "mixed.mp4", crossfade_s=0)
    assert (result.width, result.height, result.fps) == (64, 64, 30.0)    # the first clip's
    assert result.frame_count == 30 + 30 + 15                              # each keeps its own duration
    frames, _, _, _ = read_video(result.path)
    wide = frames[45]                      # 96x48 scaled to 64x32, bars above and below
    assert near(wide[18:46], GREEN) and wide[:14].max() < 20 and wide[50:].max() < 20
    tall = frames[70]                      # 32x64 scaled to 32x64, bars left and right
    assert near(tall[:, 18:46], BLUE) and tall[:, :14].max() < 20 and tall[:, 50:].max() < 20

    given = assemble(clips[:2], tmp_path / "given.mp4", crossfade_s=0.2, fps=24, size="128x72")
    info = probe_media(given.path)
    assert (info.width, info.height, info.fps, info.frame_count) == (128, 72, 24.0, 24 + 24 - 5)


def test_music_is_ducked_under_the_dialogue(tmp_path):
    speech = np.concatenate([tone(1000, 1.5, 0.25), np.zeros((2, round(0.5 * SAMPLE_RATE)), np.float32)], axis=1)
    clips = [ClipSource(solid_clip(tmp_path / "talk.mp4", RED, 2.0, audio=speech), "shot talk"),
             ClipSource(solid_clip(tmp_path / "quiet.mp4", BLUE, 2.0), "shot quiet")]  # no audio at all
    music = write_wav(tmp_path / "music.wav", tone(220, 2.0, 0.2), SAMPLE_RATE)  # 2 s, the scene 4 s: it loops

    result = assemble(clips, tmp_path / "scored.mp4", crossfade_s=0, music=music)
    assert result.music == music and result.duration_s == 4.0
    _, _, audio, _ = read_video(result.path)
    under_speech = level_db(audio, 220, 0.4, 1.3)
    in_the_clear = level_db(audio, 220, 2.2, 2.9)   # after the speech, before the last second's fade-out
    assert level_db(audio, 1000, 0.4, 1.3) > under_speech + 6  # the dialogue on top
    assert in_the_clear - under_speech > 8                     # ducked (12 dB deep by default)
    assert in_the_clear > -30                                  # and the music is really there, looped
    assert level_db(audio, 220, 3.9, 4.0) < in_the_clear - 12  # faded out at the end


def test_episode_file_names_follow_media_library_conventions(tmp_path):
    mp4, jpg = episode_paths(tmp_path, 1, 2, "Pilot: The Rooftop")
    assert mp4 == tmp_path / "Season 01" / "S01E02 - Pilot - The Rooftop.mp4"
    assert jpg == tmp_path / "Season 01" / "S01E02 - Pilot - The Rooftop.jpg"
    assert episode_paths(tmp_path, 12, 34, "x")[0].name == "S12E34 - x.mp4"
    for season, number, field in ((0, 1, "episode.season"), (100, 1, "episode.season"), (1, True, "episode.number"),
                                  (1, 2.0, "episode.number")):
        with pytest.raises(AssemblyError) as caught:
            episode_paths(tmp_path, season, number, "x")
        assert caught.value.field == field


@pytest.mark.parametrize("title, expected", [
    ("A/B\\C", "A B C"),
    ('What? "Why" <now> | *here*', "What Why now here"),
    ("  many   spaces\tand\nlines  ", "many spaces and lines"),
    ("...dots at the ends...", "dots at the ends"),
    ("Café 東京", "Café 東京"),
    ("Part 1:The End", "Part 1 - The End"),
])
def test_titles_are_sanitised_for_file_systems(title, expected):
    assert sanitise_title(title) == expected


def test_long_and_empty_titles():
    long = sanitise_title("é" * 500)
    assert len(long.encode()) <= 180 and set(long) == {"é"}
    for title in ("", "  ", "???", "..", None, 3):
        with pytest.raises(AssemblyError) as caught:
            sanitise_title(title)
        assert caught.value.field == "episode.title"


def test_an_episode_from_scene_files(three_clips, tmp_path):
    first = assemble(three_clips[:2], tmp_path / "sc01.mp4", crossfade_s=0.25)
    second = assemble(three_clips[2:], tmp_path / "sc02.mp4", crossfade_s=0.25)
    mp4, jpg = episode_paths(tmp_path / "library", 1, 1, "Pilot")
    episode = assemble([ClipSource(first.path, "scene sc01"), ClipSource(second.path, "scene sc02")], mp4,
                       thumbnail=jpg, crossfade_s=0.5)
    assert episode.path == tmp_path / "library" / "Season 01" / "S01E01 - Pilot.mp4" and jpg.is_file()
    assert episode.frame_count == first.frame_count + second.frame_count - 12
    info = probe_media(mp4)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert info.duration_s == pytest.approx(first.duration_s + second.duration_s - 0.5, abs=1 / FPS)


def test_what_cannot_be_assembled_is_named(three_clips, tmp_path):
    def field_of(clips, **options):
        with pytest.raises(AssemblyError) as caught:
            assemble(clips, tmp_path / "x.mp4", **options)
        return caught.value.field, caught.value.message

    field, message = field_of(three_clips, crossfade_s=0.6)  # the middle clip would fade on both sides
    assert field == "crossfade_s" and "shot 1" in message
    assert field_of(three_clips, size="65x64")[0] == "size"
    assert field_of(three_clips, fps=0)[0] == "fps"
    assert field_of(three_clips, music=tmp_path / "none.wav")[0] == "music"
    assert field_of([])[1].startswith("nothing to assemble")
    (tmp_path / "notes.txt").write_text("hello")
    field, message = field_of([ClipSource(tmp_path / "notes.txt", "shot n")])
    assert field is None and "shot n" in message and "notes.txt" in message
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
    field, message = field_of([ClipSource(tmp_path / "broken.mp4", "shot b")])
    assert "shot b" in message and "broken.mp4" in message
    field, message = field_of([ClipSource(still(tmp_path / "s.png", RED), "shot s")])
    assert "shot s" in message and "duration" in message
    assert not (tmp_path / "x.mp4").exists()


def test_assembly_requests_name_the_field():
    request = validated(AssemblyRequest, {"scenes": ["sc01", "sc02"], "crossfade_s": 0.25, "fps": 30,
                                          "size": "640x360", "episode": {"season": 1, "number": 3, "title": "Rain"}})
    assert (request.scenes, request.crossfade_s, request.fps, request.size) == (["sc01", "sc02"], 0.25, 30.0,
                                                                                (640, 360))
    assert (request.episode.season, request.episode.number, request.episode.title) == (1, 3, "Rain")
    assert validated(AssemblyRequest, {}).crossfade_s == 0.5 and validated(AssemblyRequest, {}).scenes is None
    for data, field in (({"scenes": []}, "scenes"), ({"scenes": ["ok", "../x"]}, "scenes[1]"),
                        ({"scenes": ["a", "a"]}, "scenes"), ({"crossfade_s": -1}, "crossfade_s"),
                        ({"crossfade_s": "soft"}, "crossfade_s"), ({"fps": 1000}, "fps"), ({"size": "big"}, "size"),
                        ({"size": "641x360"}, "size"), ({"music": "/srv/music/none.mp3"}, "music"),
                        ({"episode": {"season": 1, "number": 1}}, "episode.title"),
                        ({"episode": {"season": 1, "number": 0, "title": "x"}}, "episode.number"),
                        ({"episode": {"season": 1, "number": 1, "title": "x", "show": "y"}}, "episode.show"),
                        ({"episode": "S01E01"}, "episode"), ({"colour": "red"}, "colour")):
        with pytest.raises(InputError) as caught:
            validated(AssemblyRequest, data)
        assert caught.value.field == field, data


def test_a_queued_request_reads_back_as_it_was_parsed():
    """A job stores the parsed request's JSON form; the worker validates it again, to the same request."""
    for data in ({}, {"scenes": ["sc02", "sc01"], "crossfade_s": 0, "fps": 23.976, "size": " 640 x 360 ",
                      "music": "sha256:" + "ab" * 32, "episode": {"season": 2, "number": 3, "title": "Rain: Night"}},
                 {"size": [640, 360]}):
        request = validated(AssemblyRequest, data)
        stored = request.model_dump(mode="json", exclude_none=True)
        assert validated(AssemblyRequest, stored) == request


def test_job_failures_keep_the_status_the_request_would_have_had():
    from shotline_controller.media.assembly_jobs import AssemblyConflict, BatchNotFound, SourceUnavailable
    assert failure(AssemblyConflict("scene 'x' has no approved shot")) == (
        {"message": "scene 'x' has no approved shot", "field": None, "status": 409}, True)
    assert failure(SourceUnavailable("gone"))[0]["status"] == 502
    assert failure(BatchNotFound("no batch"))[0] == {"message": "no batch", "field": "batch_id", "status": 404}
    assert failure(AssemblyError("crossfade_s", "too long")) == (
        {"message": "too long", "field": "crossfade_s", "status": 400}, True)
    assert failure(AssemblyError(None, "cannot decode x.mp4"))[0]["status"] == 422
    assert failure(OSError("disk full")) == ({"message": "OSError: disk full", "field": None, "status": 500}, False)


def test_the_file_a_shot_contributes():
    image = {"filename": "a_00001_.png", "subfolder": "s", "type": "output"}
    last_image = {**image, "filename": "a_00002_.png"}
    preview = {"filename": "preview.mp4", "subfolder": "", "type": "temp"}
    video = {"filename": "a_00001_.mp4", "subfolder": "s", "type": "output"}
    wav = {"filename": "a.wav", "subfolder": "s", "type": "output"}
    assert choose_output([image, last_image]) == last_image
    assert choose_output([image, video, last_image]) == video
    assert choose_output([image, preview]) == image         # saved files before temp previews
    assert choose_output([preview]) == preview
    assert choose_output([wav]) is None and choose_output([]) is None


def test_audio_of_any_rate_and_layout_becomes_48k_stereo_at_its_level(tmp_path):
    t = np.arange(22050) / 22050
    path = write_wav(tmp_path / "mono.wav", 0.5 * np.sin(2 * np.pi * 500 * t)[None], 22050)
    audio = decode_audio(path, "music")
    assert audio.shape[0] == 2 and abs(audio.shape[1] - SAMPLE_RATE) <= 64
    for channel in audio:
        assert level_db(channel[None], 500, 0.1, 0.9) == pytest.approx(20 * np.log10(0.5), abs=0.2)
    assert decode_audio(solid_clip(tmp_path / "silent.mp4", RED), "shot") is None
