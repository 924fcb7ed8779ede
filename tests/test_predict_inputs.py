"""What a clip offers against what a model reads: a clip with neither a face nor usable audio has
nothing to score (a functionals model would give its train mean), and the warnings never offer a
modality that is missing too; a truncated file (cut off mid-data, moov first: no demuxer error)
is reported by the frames code and by predict, and a whole file never is."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.engine import save_checkpoint
from models.registry import build_model
from personality.common import StageInputError
from personality.video_io import cut_container_s, ends_short, iter_frames, stream_extent
from stages import audio, predict
from tests.conftest import real_fixture, write_video

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NOTHING = {"face_share": 0.0, "n_frames": 50, "has_audio": False}


def test_functionals_need_a_face_or_usable_audio():
    needs = {"functionals"}
    assert predict.missing_inputs(needs, NOTHING) == \
        "no face and no usable audio: nothing to score"
    silent = {**NOTHING, "has_audio": True, "audio_silent": True}
    assert "nothing to score" in predict.missing_inputs(needs, silent)
    assert predict.missing_inputs(needs, {**NOTHING, "face_share": 0.8}) == ""
    voice = {**NOTHING, "has_audio": True, "audio_silent": False, "voiced_share": 0.4}
    assert predict.missing_inputs(needs, voice) == ""


def test_warnings_never_offer_a_modality_that_is_missing_too():
    for facts in (NOTHING, {**NOTHING, "has_audio": True, "audio_silent": True}):
        warnings = predict.clip_warnings(facts)
        assert len(warnings) == 1 and warnings[0].endswith("nothing to score"), warnings
        assert "alone" not in warnings[0]
    voice = predict.clip_warnings({**NOTHING, "has_audio": True, "voiced_share": 0.4})
    assert voice == ["no face in any of the 50 sampled frames: scores can come from the voice "
                     "alone"]
    face = predict.clip_warnings({"face_share": 1.0, "has_audio": True, "audio_silent": True})
    assert face == ["the audio track is silent: scores can come from the face alone"]


def test_warnings_are_worded_for_what_the_model_reads():
    """A lack or damage in a modality the model never reads is no warning; one it reads says
    where its scores come from; a model left with nothing it reads gives its training mean."""
    face, audio, both = (frozenset(m) for m in ({"face"}, {"audio"}, {"face", "audio"}))
    silent = {"face_share": 1.0, "n_frames": 20, "has_audio": True, "audio_silent": True,
              "audio_notes": ["3 corrupt audio packet(s) read as silence"]}
    assert predict.clip_warnings(silent, face) == []
    assert predict.clip_warnings(silent, both) == [
        "the audio track is silent: its scores come from the face alone",
        "3 corrupt audio packet(s) read as silence"]
    assert predict.clip_warnings({"face_share": 1.0, "has_audio": False}, audio) == [
        "no audio track: the model reads only audio"]  # and missing_inputs refuses it
    speech = {"face_share": 0.0, "n_frames": 20, "has_audio": True, "voiced_share": 0.02,
              "video_notes": ["2 corrupt video packet(s) skipped: scores rest on the 18 "
                              "frame(s) that decoded"], "audio_cut_at_s": 300.0,
              "duration_s": 600.0}
    assert predict.clip_warnings(speech, audio) == [
        "almost no voiced speech (2% of the audio)",
        "audio features stop at 300 s (audio.max_feature_seconds) of a 600 s clip"]
    assert predict.clip_warnings(speech, face)[0] == (
        "no face in any of the 20 sampled frames: the model reads only the face")
    assert predict.clip_warnings(speech, both)[0] == \
        "no face in any of the 20 sampled frames: its scores come from the voice alone"
    few = {"face_share": 0.3, "n_frames": 20, "has_audio": True, "voiced_share": 0.5,
           "faces_summary": {"frames_with_several_faces": 5}}
    assert predict.clip_warnings(few, audio) == [] and len(predict.clip_warnings(few, face)) == 2
    cut = {"face_share": 1.0, "n_frames": 20, "has_audio": True, "voiced_share": 0.5,
           "ends_at_s": 1.0, "declared_s": 4.0}  # a truncated file: whatever the model reads
    assert all(predict.clip_warnings(cut, m) for m in (face, audio, both))


def test_a_model_reads_the_modalities_of_its_inputs_and_columns():
    from stages.predict_model import model_reads as reads

    assert reads({"aus", "aus_mask"}) == {"face"} and reads({"logmel"}) == {"audio"}
    assert reads({"face", "wave"}) == {"face", "audio"} == reads({"functionals"})
    au_only = {"functionals": {"columns": ["AU12_r_mean", "blink_rate", "face_share"]}}
    voice_only = {"functionals": {"columns": ["fn_rms_db_mean", "f0_semitone_sd",
                                              "egemaps_loudness_sma3_amean"]}}
    assert reads({"functionals"}, au_only) == {"face"}
    assert reads({"functionals"}, voice_only) == {"audio"}


AU_ONLY = {"functionals": {"columns": ["AU12_r_mean", "blink_rate", "face_share"]}}
VOICE_ONLY = {"functionals": {"columns": ["fn_rms_db_mean", "f0_semitone_sd"]}}


def test_a_functionals_model_of_one_modality_needs_that_one():
    """Its other columns are absent (0 after standardisation) on a clip lacking that modality,
    so it gave every such clip the same scores (a ridge exactly its train mean, the trees one
    leaf path: measured on the default data's functionals); now refused like a model of that
    modality's inputs, so that choose_model takes one that can read the clip."""
    face_only = {"face_share": 1.0, "n_frames": 20, "has_audio": False}
    voice_only = {"face_share": 0.0, "n_frames": 20, "has_audio": True, "voiced_share": 0.4}
    silent = {"face_share": 1.0, "n_frames": 20, "has_audio": True, "audio_silent": True}
    need = {"functionals"}
    assert predict.missing_inputs(need, face_only, config=VOICE_ONLY) == \
        "no audio track; this model needs audio (its functionals are all audio ones)"
    assert predict.missing_inputs(need, silent, config=VOICE_ONLY) == \
        "the audio track is silent; this model needs audio (its functionals are all audio ones)"
    assert predict.missing_inputs(need, face_only, probed_only=True, config=VOICE_ONLY) == \
        "no audio track; this model needs audio (its functionals are all audio ones)"
    assert predict.missing_inputs(need, voice_only, config=AU_ONLY) == \
        "no face was found in any of its sampled frames; this model needs one (its " \
        "functionals are all face ones)"
    assert predict.missing_inputs(need, voice_only, config=VOICE_ONLY) == ""
    assert predict.missing_inputs(need, face_only, config=AU_ONLY) == ""
    both = {"functionals": {"columns": ["AU12_r_mean", "fn_rms_db_mean"]}}
    for facts in (face_only, voice_only):  # either modality will do for a model of both
        assert predict.missing_inputs(need, facts, config=both) == ""
        assert predict.missing_inputs(need, facts) == ""  # no columns kept: both


def test_the_default_choice_passes_an_audio_only_functionals_model_over_for_a_mute_clip(
        tmp_path):
    """The audio-only functionals model ranks first on validation; a clip with a face and no
    audio track gets the face model, and the warnings say why the better one was passed over."""
    torch.manual_seed(0)
    for name, ccc, extra in (("functionals_ridge", 0.9, {"source_config": VOICE_ONLY}),
                             ("perfex_cnn", 0.1, {"inputs": ["aus", "aus_mask"]})):
        save_checkpoint(tmp_path / "data" / "models" / name / "best.pt",
                        model=build_model(name), model_name=name, train_mean=[0.5] * 5,
                        best_epoch=1, history=[{"epoch": 1, "val_ccc": ccc}],
                        **{"inputs": ["functionals"], **extra})
    mute = {"face_share": 1.0, "n_frames": 20, "has_audio": False, "video": "mute.mp4"}
    name, _, said = predict.choose_model(tmp_path, mute)
    assert name == "perfex_cnn" and said == [
        "functionals_ridge ranks higher on validation but cannot score this clip: no audio track"]
    speech = {**mute, "has_audio": True, "voiced_share": 0.5}
    assert predict.choose_model(tmp_path, speech)[0] == "functionals_ridge"


def test_predict_refuses_an_audio_only_functionals_model_for_a_clip_without_audio(
        tmp_path, caplog):
    """Exit 2 and one line from the file's probe, before the front-end, as for an audio model."""
    torch.manual_seed(0)
    model = build_model("functionals_ridge")
    ckpt = save_checkpoint(tmp_path / "m" / "best.pt", model=model,
                           model_name="functionals_ridge", train_mean=[0.5] * 5,
                           inputs=["functionals"], source_config=VOICE_ONLY)
    video = write_video(tmp_path / "mute.mp4", n_frames=10, audio=False)
    assert predict.main([str(video), "--out", str(tmp_path / "o"), "--model", str(ckpt)]) == 2
    assert "mute.mp4: no audio track; this model needs audio (its functionals are all audio " \
           "ones)" in caplog.text
    assert not (tmp_path / "o").exists()


def test_an_audio_track_the_audio_stage_cannot_use_is_no_usable_audio(tmp_path):
    """A 21 ms AAC track is 'too short' for the audio stage (an error row): predict must not
    count it as audio (an audio model chosen for it would then fail), and says why."""
    import av

    video = tmp_path / "tinyaudio.mkv"  # PCM: AAC would pad the track to 64 ms at least
    with av.open(str(video), "w") as c:
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream("pcm_s16le", rate=16000, layout="mono")
        for i in range(25):
            frame = np.full((48, 64, 3), i * 9, np.uint8)
            for packet in v.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(packet)
        for packet in v.encode():
            c.mux(packet)
        sound = av.AudioFrame.from_ndarray(np.full((1, 336), 3000, np.int16), format="s16",
                                           layout="mono")
        sound.sample_rate = 16000
        for packet in [*a.encode(sound), *a.encode()]:
            c.mux(packet)
    facts = predict.run_front_end(video, tmp_path / "work")
    assert facts["has_audio"] and facts["audio_silent"] and "too short" in facts["audio_error"]
    assert predict.missing_inputs({"logmel"}, facts)  # an audio model cannot score it
    assert any("the audio track is unusable (" in w for w in facts["warnings"]), facts["warnings"]


@pytest.fixture(scope="module")
def functionals_root(tmp_path_factory):
    """A repo-like root whose only (and so best) model reads the functionals."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("root")
    save_checkpoint(root / "data" / "models" / "functionals_ridge" / "best.pt",
                    model=build_model("functionals_ridge"), model_name="functionals_ridge",
                    train_mean=[0.5] * 5, inputs=["functionals"])
    return root


def test_no_default_model_for_a_clip_with_nothing_to_score(functionals_root):
    with pytest.raises(StageInputError, match="no trained model can score it.*nothing to score"):
        predict.choose_model(functionals_root, {**NOTHING, "video": "green.mp4"})
    voice = {**NOTHING, "has_audio": True, "audio_silent": False, "voiced_share": 0.4}
    assert predict.choose_model(functionals_root, voice)[0] == "functionals_ridge"


def test_predict_refuses_a_clip_without_face_or_audio(functionals_root, tmp_path, caplog,
                                                      monkeypatch):
    """End to end on a real face-less, silent clip: exit 2 and one line, no scores."""
    video = write_video(tmp_path / "green.mp4", n_frames=10, audio=False)
    monkeypatch.setattr(predict, "repo_root", lambda: functionals_root)
    assert predict.main([str(video), "--out", str(tmp_path / "o")]) == 2
    assert "green.mp4: no trained model can score it" in caplog.text
    assert "nothing to score" in caplog.text and "alone" not in caplog.text
    caplog.clear()
    assert predict.main([str(video), "--out", str(tmp_path / "o"), "--model",
                         "functionals_ridge"]) == 2
    assert "green.mp4: no face and no usable audio: nothing to score" in caplog.text
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------------------
# truncated files


def cut_remux(folder, name: str, **options):
    """The face fixture's packets remuxed (no re-encode) into `folder`/whole.<ext> with PyAV's
    `options` (format, muxer options), then cut to its first 30% as `name`."""
    import av

    whole = folder / ("whole" + Path(name).suffix)
    with av.open(str(real_fixture("single_face.mp4"))) as src, \
            av.open(str(whole), "w", **options) as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                dst.mux(packet)
    data = whole.read_bytes()
    (folder / name).write_bytes(data[: int(len(data) * 0.3)])
    return folder / name


@pytest.fixture(scope="module")
def truncated(tmp_path_factory):
    """The face fixture re-muxed with its index first (faststart), then cut to its first 30%:
    the demuxer meets EOF without an error, as with a half-finished download."""
    return cut_remux(tmp_path_factory.mktemp("cut"), "cut.mp4", options={"movflags": "faststart"})


@pytest.fixture(scope="module")
def truncated_mkv(tmp_path_factory):
    """The same in Matroska (its streams declare no duration), cut to 30%."""
    return cut_remux(tmp_path_factory.mktemp("cut_mkv"), "cut.mkv", format="matroska")


def test_a_file_cut_off_mid_data_is_truncated_and_a_whole_one_is_not(truncated):
    for sampling in ({"fps": 8.0}, {"per_video": 5}, {}):
        report: dict = {}
        kept = list(iter_frames(truncated, report=report, max_side=64, **sampling))
        assert kept and report["truncated"], sampling
        assert report["ends_at_s"] < 1.0 and report["declared_s"] == pytest.approx(2.4)
        whole: dict = {}
        list(iter_frames(real_fixture("single_face.mp4"), report=whole, max_side=64, **sampling))
        assert not whole["truncated"] and whole["errors"] == 0, sampling
    assert ends_short(*stream_extent(truncated))
    for name in ("single_face.mp4", "no_face.mp4"):
        assert not ends_short(*stream_extent(real_fixture(name)))
    assert not ends_short(0.0, 0.04) and not ends_short(8.1, 9.0) and ends_short(7.9, 9.0)


def frames_summary(root: Path, cut: Path, whole: Path) -> dict:
    """metrics/frames.json of the frames stage run on `cut` and `whole`, copied into `root` as
    videos "cut" and "whole"."""
    import pandas as pd

    from personality.common import BaseParams
    from stages import frames
    from stages.ingest import write_manifest

    for vid, video in (("cut", cut), ("whole", whole)):
        shutil.copy(video, root / f"{vid}{video.suffix}")
    write_manifest(pd.DataFrame([{
        "video_id": vid, "path": f"{vid}{video.suffix}", "split": "test", "subject_id": vid,
        "dataset": "predict", **{t: float("nan") for t in "OCEAN"}, "duration_s": 2.4,
        "fps": 30.0, "has_audio": True, "label_scale": "unit"}
        for vid, video in (("cut", cut), ("whole", whole))]), root)
    frames.run(frames.FramesParams(fps=4.0, max_side=64), BaseParams(workers=1), root=root)
    return json.loads((root / "metrics" / "frames.json").read_text())


def test_the_frames_stage_names_a_truncated_file(truncated, tmp_path):
    summary = frames_summary(tmp_path, truncated, real_fixture("single_face.mp4"))
    [warning] = summary["warnings"]
    assert summary["n_warnings"] == 1
    assert warning["video_id"] == "cut" and warning["warning"].startswith(
        "the video stream breaks off early: scores rest on the ")


def predicted(video, tmp_path) -> dict:
    """prediction.json of `predict video` with an untrained AU model (perfex_cnn): the clip's
    facts and warnings, whatever the scores."""
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "perfex_cnn" / "best.pt", model=build_model("perfex_cnn"),
                           model_name="perfex_cnn", train_mean=[0.5] * 5,
                           inputs=["aus", "aus_mask"])
    assert predict.main([str(video), "--out", str(tmp_path / "o"), "--model", str(ckpt),
                         "--no-explain"]) == 0
    return json.loads((tmp_path / "o" / "prediction.json").read_text())


def test_predict_warns_that_a_file_looks_truncated(truncated, tmp_path, capsys):
    result = predicted(truncated, tmp_path)
    assert result["truncated"] is True and result["ends_at_s"] < 1.0
    assert "the video ends at 0.7 s of its declared 2.4 s: the file looks truncated" in \
        result["warnings"]
    assert not any("breaks off" in w for w in result["warnings"])  # said once, not twice
    assert "looks truncated" in capsys.readouterr().out


def test_predict_names_a_cut_matroska_files_declared_length_once(truncated_mkv, tmp_path):
    """A cut MKV's duration_s is what its packets measure (0.7 s): the warning said 'ends at 0.7 s
    of its declared 0.7 s', and the audio stage's truncation note said it a second time."""
    result = predicted(truncated_mkv, tmp_path)
    assert result["truncated"] is True and result["declared_s"] == pytest.approx(2.4, abs=0.1)
    said = [w for w in result["warnings"] if "truncated" in w]
    assert len(said) == 1 and said[0].startswith("the video ends at 0.") and \
        said[0].endswith("of its declared 2.4 s: the file looks truncated"), result["warnings"]


def test_predict_warns_that_video_packets_were_damaged(tmp_path):
    """Damaged video packets were only in metrics/frames.json of predict's work folder: its
    scores rested on the frames left, without a word in prediction.json."""
    data = bytearray(real_fixture("single_face.mp4").read_bytes())  # moov at the end
    cut = slice(int(len(data) * 0.35), int(len(data) * 0.55))
    data[cut] = np.random.default_rng(0).integers(0, 256, cut.stop - cut.start,
                                                  dtype=np.uint8).tobytes()
    (tmp_path / "damaged.mp4").write_bytes(bytes(data))
    warnings = predicted(tmp_path / "damaged.mp4", tmp_path)["warnings"]
    damaged = [w for w in warnings if "corrupt video packet(s) skipped" in w]
    assert len(damaged) == 1 and "scores rest on the " in damaged[0], warnings


def write_mkv(path, *, video_s: int, audio_s: int, video_at: int = 0, audio_at: int = 0):
    """H.264 + AAC in Matroska (`video_s` and `audio_s` seconds, their timestamps starting at
    `video_at` and `audio_at` s): Matroska declares no per-stream duration, and its container's
    covers the audio too."""
    import av

    with av.open(str(path), "w", format="matroska") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        audio = out.add_stream("aac", rate=48000)
        for i in range(25 * video_s):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i, np.uint8), format="rgb24")
            frame.pts = 25 * video_at + i
            out.mux(video.encode(frame))
        out.mux(video.encode())
        for start in range(0, audio_s * 48000, 1024):
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="flt",
                                                 layout="mono")
            samples.sample_rate, samples.pts = 48000, 48000 * audio_at + start
            out.mux(audio.encode(samples))
        out.mux(audio.encode())
    return path


def test_audio_running_past_the_video_is_not_truncation(tmp_path):
    """A whole 5 s video beside 8 s of audio must not read as a cut-off file."""
    path = write_mkv(tmp_path / "long_audio.mkv", video_s=5, audio_s=8)
    report: dict = {}
    assert list(iter_frames(path, report=report, fps=4.0, max_side=64))
    assert not report["truncated"] and not ends_short(*stream_extent(path))
    assert "notes" not in audio.process_video("v", path, audio.AudioParams())


@pytest.mark.parametrize("video_at, audio_at, video_s, audio_s", [
    (10, 10, 6, 6),  # timestamps from 10 s (a remux with -copyts): Matroska's duration is 16 s
    (0, 5, 3, 5)])   # a sound track that starts at 5 s and ends after the 3 s video
def test_matroska_streams_that_do_not_start_at_zero_are_not_truncation(tmp_path, video_at,
                                                                       audio_at, video_s, audio_s):
    """cut_container_s measured each stream from its own start against the container's duration,
    which Matroska counts from 0: a whole file whose streams start late read as cut off."""
    path = write_mkv(tmp_path / "late.mkv", video_s=video_s, audio_s=audio_s,
                     video_at=video_at, audio_at=audio_at)
    report: dict = {}
    assert list(iter_frames(path, report=report, fps=4.0, max_side=64))
    assert not report["truncated"] and not ends_short(*stream_extent(path))
    assert "notes" not in audio.process_video("v", path, audio.AudioParams())
    whole = path.read_bytes()
    (tmp_path / "cut.mkv").write_bytes(whole[: len(whole) // 2])  # still a cut when cut
    assert np.isfinite(cut_container_s(tmp_path / "cut.mkv"))


def test_probe_measures_a_matroska_video_without_the_truncation_demux(tmp_path, monkeypatch):
    """probe measured a WebM / MKV's video through stream_extent, whose truncation check
    (cut_container_s) demuxes every stream again for an answer probe threw away: 4x the time."""
    from personality import video_io

    path = write_mkv(tmp_path / "a.mkv", video_s=2, audio_s=2)
    monkeypatch.setattr(video_io, "cut_container_s", lambda p: pytest.fail("demuxed again"))
    assert video_io.probe(path).duration_s == pytest.approx(2.0, abs=0.005)


def test_a_matroska_file_cut_off_is_truncated(tmp_path):
    """A WebM / MKV with sound cut part-way (a half-finished download, a browser recording that
    stopped) read as whole: its streams declare no duration, so nothing was compared. Its
    container's duration covers every stream, and now every stream stopping short of it is a cut."""
    whole = write_mkv(tmp_path / "whole.mkv", video_s=6, audio_s=6).read_bytes()
    path = tmp_path / "cut.mkv"
    path.write_bytes(whole[: len(whole) // 2])
    report: dict = {}
    assert list(iter_frames(path, report=report, fps=4.0, max_side=64))
    assert report["truncated"] and report["declared_s"] == pytest.approx(6.0, abs=0.1)
    ends_at, declared = stream_extent(path)
    assert ends_short(ends_at, declared) and ends_at < 4.5
    [note] = audio.process_video("v", path, audio.AudioParams())["notes"]
    assert note.startswith("the audio ends at ") and "of its declared 6.0 s" in note


def test_an_avi_cut_off_is_truncated(tmp_path):
    """A cut AVI read as whole: FFmpeg estimates its duration from what is left, so nothing
    looked short. Its header still counts every frame (76 here: 3 s at 25 fps)."""
    import av

    whole = tmp_path / "whole.avi"
    with av.open(str(whole), "w", format="avi") as out:
        video = out.add_stream("mpeg4", rate=25)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        noise = np.random.default_rng(0).integers(0, 256, (75, 64, 64, 3), dtype=np.uint8)
        for image in noise:  # noise: the frames, not the header and index, fill the file
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(video.encode())
    data = whole.read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) // 2])
    for path, cut in ((whole, False), (tmp_path / "cut.avi", True)):
        report: dict = {}
        assert list(iter_frames(path, report=report, fps=4.0, max_side=64))
        assert report["truncated"] is cut and report["declared_s"] == pytest.approx(3.0, abs=0.1)
        assert ends_short(*stream_extent(path)) is cut


def test_predict_run_outside_the_project_uses_the_checkout_its_code_is_in(tmp_path, monkeypatch):
    """`PYTHONPATH=/repo python -m stages.predict clip.mp4 --out o` from another folder failed
    with "<that folder>/params.yaml: params file not found"; it now works from the checkout the
    code is in, and only where that is no project either says to run it from one."""
    from stages import predict_model

    repo = Path(predict_model.__file__).resolve().parents[1]
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert predict_model.enter_project() is None and Path.cwd() == repo
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(predict_model, "__file__", str(tmp_path / "stages" / "predict_model.py"))
    problem = predict_model.enter_project()
    assert problem.startswith(f"{tmp_path} is not inside the project") and Path.cwd() == tmp_path
    assert predict.main(["nothere.mp4", "--out", "o"]) == 2  # refused before any work


def test_a_one_frame_clip_is_not_said_to_last_0_0_s():
    from types import SimpleNamespace

    from stages.predict_caveats import model_warnings

    loaded = SimpleNamespace(ckpt={"train_duration_s": [6.0, 10.0]}, net=None)  # nothing padded
    [one_frame] = model_warnings(loaded, [], "v", {"duration_s": 0.033})
    assert one_frame.startswith("the clip is 0.033 s long; the model learnt from clips of 6.0")
    [short] = model_warnings(loaded, [], "v", {"duration_s": 0.3})
    assert short.startswith("the clip is 0.3 s long")


def test_predict_in_the_project_keeps_the_paths_as_the_user_named_them(tmp_path, monkeypatch):
    """Inside the project predict does not move, so the paths stay as given: they are the
    `video` of prediction.json / predictions.csv and its messages ("as the caller named it").
    They all became absolute when the outside-the-project case was added; only that case
    needs them so."""
    from pathlib import Path

    from stages import predict_model

    repo = Path(predict_model.__file__).resolve().parents[1]
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(repo)
    seen = []
    monkeypatch.setattr(predict, "_single", lambda video, out, model, explain=True:
                        seen.append((video, out, model)) or 0)
    monkeypatch.setattr(predict, "sweep_dead_work", lambda: None)
    clip = Path("tests") / "clip.mp4"
    out = Path(tmp_path.relative_to(tmp_path.anchor)).name  # a relative folder, not made
    assert predict.main([str(clip), "--out", out, "--model", "x/best.pt"]) == 0
    assert seen == [(clip, Path(out), "x/best.pt")] and Path.cwd() == repo
    monkeypatch.chdir(tmp_path)  # outside it: absolute, so they keep their meaning in the repo
    seen.clear()
    assert predict.main([str(clip), "--out", "o", "--model", "x/best.pt"]) == 0
    assert seen == [(tmp_path / clip, tmp_path / "o", str(tmp_path / "x/best.pt"))]
    assert Path.cwd() == repo
