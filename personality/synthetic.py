"""The embedded default dataset: talking-head clips animated from real face photos, with speech-like
audio and Big-Five labels that follow documented behavioural cues. Offline and deterministic.

    python -m stages.ingest                   # with ingest.source: synthetic (the default)
    python -m personality.synthetic --preview out.png   # one contact sheet of frames, for a look

How a clip is made (docs/data_card.md has the full story and the numbers):
  1. Ten latent cues per clip, each N(0, 1): a subject part (60% of the variance) and a clip part.
     Visual: smile, brow_raise, brow_lower, blink_rate, head_motion.
     Vocal:  pitch, pitch_var, loudness, speech_rate, pause.
  2. Video: a real photo (matplotlib's grace_hopper.jpg, scikit-image's astronaut.png) is warped per
     frame along its MediaPipe face landmarks. One dense displacement field per expression unit
     (smile, brow raise, brow lower, jaw open, blink, yaw, pitch) is precomputed once from landmark
     displacements (Delaunay-linear interpolation); a frame is a linear mix of the fields applied
     with cv2.remap, an open mouth gets its dark interior painted, and the head is placed with roll,
     scale and shift on the subject's background with the subject's colour cast.
  3. Audio: a glottal pulse train following a pitch contour, through vowel formant filters, in
     syllables with consonant noise bursts, phrases and pauses; its envelope drives the jaw.
  4. Labels: trait = clip(0.5 + 0.13 * (w_t . cues) / |w_t| + N(0, sigma_t), 0, 1); the ceiling a
     model can reach given sigma_t is `noise_ceiling()`.
  5. A simulated user study: raters with their own bias and noise score a subset of clips on 1-5
     through a *perception* mapping that weighs the cues differently.

One file because the generator is one pipeline (face rig, rendering, speech, labels, the
user study) whose pieces share its constants; its sections follow that order.
"""
from __future__ import annotations

import argparse
import dataclasses
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

from personality.common import atomic_file
from personality.executor import map_jobs
from personality.law import (CUES, LABEL_NOISE, LABEL_SCALE, LABEL_WEIGHTS,  # noqa: F401
                             VISUAL_CUES, VOCAL_CUES, explainable, labels_from_cues,
                             noise_ceiling)
from personality.schemas import TRAITS

# --------------------------------------------------------------------------------------------------
# cues and labels

SUBJECT_SHARE = 0.6  # share of each cue's variance that belongs to the subject, not the clip

# How simulated raters *perceive* the cues: they over-read smiles and loudness and miss blinks, so
# fine-tuning on their ratings moves a model's predictions measurably.
PERCEPTION_WEIGHTS = np.array([
    [0.45,  0.30,  0.00,  0.00,  0.10,  0.00,  0.20,  0.20,  0.20,  0.00],  # O
    [0.20,  0.00,  -0.30, 0.00,  -0.40, 0.00,  0.00,  0.20,  0.00,  -0.30],  # C
    [0.60,  0.00,  0.00,  0.00,  0.20,  0.00,  0.10,  0.70,  0.20,  0.00],  # E
    [0.80,  0.00,  -0.30, 0.00,  0.00,  0.10,  0.00,  0.00,  0.00,  0.00],  # A
    [-0.50, 0.00,  0.50,  0.00,  0.00,  0.00,  0.00,  -0.20, 0.00,  0.20],  # N
])


def draw_cues(rng: np.random.Generator, subject_of_clip: np.ndarray, n_subjects: int) -> np.ndarray:
    """Latent cues, (n_clips, 10), each N(0, 1): subject part plus clip part."""
    subject = rng.standard_normal((n_subjects, len(CUES))) * np.sqrt(SUBJECT_SHARE)
    clip = rng.standard_normal((len(subject_of_clip), len(CUES))) * np.sqrt(1 - SUBJECT_SHARE)
    return subject[subject_of_clip] + clip


def simulate_user_study(cues: np.ndarray, video_ids: list[str], rng: np.random.Generator, *,
                        n_raters: int, raters_per_video: int) -> pd.DataFrame:
    """Likert ratings 1-5, one row per (video, rater), through the perception mapping."""
    perceived = explainable(cues, PERCEPTION_WEIGHTS)  # (n, 5) on [0, 1]
    bias = rng.normal(0.0, 0.3, size=(n_raters, len(TRAITS)))  # per-rater leniency, Likert points
    rows = []
    for i, vid in enumerate(video_ids):
        raters = rng.choice(n_raters, size=min(raters_per_video, n_raters), replace=False)
        for r in sorted(raters):
            score = 1 + 4 * perceived[i] + bias[r] + rng.normal(0.0, 0.5, len(TRAITS))
            rows.append({"video_id": vid, "rater_id": f"rater_{r:02d}",
                         **{t: float(v) for t, v in zip(TRAITS, np.clip(np.rint(score), 1, 5))}})
    columns = ["video_id", "rater_id", *TRAITS]
    return pd.DataFrame(rows, columns=columns).astype({t: float for t in TRAITS})


# --------------------------------------------------------------------------------------------------
# face photos and expression fields

SPRITE = 256  # the face sprite is SPRITE x SPRITE pixels

# MediaPipe face-mesh indices (478-point topology).
BROW_R = [70, 63, 105, 66, 107, 46, 53, 52, 65, 55]
BROW_L = [300, 293, 334, 296, 336, 276, 283, 282, 295, 285]
BROW_INNER = [107, 66, 55, 65, 336, 296, 285, 295]
UPPER_LID_R = [246, 161, 160, 159, 158, 157, 173]
LOWER_LID_R = [33, 7, 163, 144, 145, 153, 154, 155, 133]
UPPER_LID_L = [466, 388, 387, 386, 385, 384, 398]
LOWER_LID_L = [263, 249, 390, 373, 374, 380, 381, 382, 362]
INNER_LIPS = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178,
              88, 95]
UPPER_INNER_LIP = [191, 80, 81, 82, 13, 312, 311, 310, 415]
MOUTH_CORNERS = (61, 291)
CHEEK_R = [205, 50, 187, 123, 116, 117, 118, 101, 36]
CHEEK_L = [425, 280, 411, 352, 345, 346, 347, 330, 266]
EYE_R = [33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7]
EYE_L = [263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249]
UNITS = ("smile", "brow_raise", "brow_lower", "jaw", "blink", "yaw", "pitch")
# The astronaut photo already smiles broadly (MediaPipe mouthSmile 0.87), which leaves a smile
# episode little to add (0.97). A reversed smile field at rest brings her to 0.52, so an episode
# moves her as visibly as the neutral Grace Hopper (0.52 -> 0.87 at full strength).
REST_EXPRESSION = {"astronaut": {"smile": -1.0}}


def face_photos() -> dict[str, Path]:
    """Real face photos shipped inside installed packages (public-domain / permissive)."""
    import matplotlib
    import skimage

    return {"hopper": Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
            "astronaut": Path(skimage.__file__).parent / "data" / "astronaut.png"}


@dataclasses.dataclass
class FaceRig:
    """One base face: its sprite, mask, landmarks and one displacement field per unit."""

    name: str
    sprite: np.ndarray  # (S, S, 3) uint8 RGB
    mask: np.ndarray  # (S, S) float32 in [0, 1], the head ellipse, feathered
    landmarks: np.ndarray  # (478, 3) sprite pixels (x, y, z)
    landmark_disp: dict[str, np.ndarray]  # unit -> (478, 2) displacement at full strength
    fields: np.ndarray  # (len(UNITS), S, S, 2) float32 dense displacement per unit
    lid_colour: tuple[float, float, float]  # skin above the eyes: paints closed eyelids
    rest: np.ndarray  # (len(UNITS),) unit strengths of the resting face (added to every frame)

    @property
    def landmark_stack(self) -> np.ndarray:
        """(len(UNITS), 478, 2) landmark displacements, in UNITS order."""
        return np.stack([self.landmark_disp[u] for u in UNITS])


def build_rig(name: str, photo: Path, landmarker) -> FaceRig:
    import cv2
    from scipy.interpolate import griddata

    from personality.facemodel import detect_rgb

    rgb = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    result = detect_rgb(landmarker, rgb)
    if not result.face_landmarks:
        raise RuntimeError(f"{photo}: no face found in the base photo")
    h, w = rgb.shape[:2]
    pts = np.array([[p.x * w, p.y * h, p.z * w] for p in result.face_landmarks[0]])
    pts = np.round(pts * 8) / 8  # quantised so tiny float jitter cannot change a rendered pixel
    # square crop around the face, 1.7 x the face height, resized to the sprite
    x0, y0 = pts[:, :2].min(0)
    x1, y1 = pts[:, :2].max(0)
    cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2 - 0.08 * (y1 - y0), 1.7 * (y1 - y0)
    scale = SPRITE / side
    affine = np.array([[scale, 0, SPRITE / 2 - cx * scale], [0, scale, SPRITE / 2 - cy * scale]])
    sprite = cv2.warpAffine(rgb, affine, (SPRITE, SPRITE), flags=cv2.INTER_AREA,
                            borderMode=cv2.BORDER_REPLICATE)
    lm = pts.copy()
    lm[:, :2] = pts[:, :2] * scale + affine[:, 2]
    lm[:, 2] = pts[:, 2] * scale

    yy, xx = np.mgrid[0:SPRITE, 0:SPRITE].astype(np.float32)
    ell = ((xx - SPRITE / 2) / (0.40 * SPRITE)) ** 2 + ((yy - SPRITE * 0.47) / (0.50 * SPRITE)) ** 2
    mask = np.clip((1.0 - ell) / 0.25, 0, 1).astype(np.float32)

    disp = unit_displacements(lm)
    border = np.linspace(0, SPRITE - 1, 17)
    anchors = np.array([(x, y) for x in border for y in (0, SPRITE - 1)]
                       + [(x, y) for y in border[1:-1] for x in (0, SPRITE - 1)])
    ctrl = np.vstack([lm[:, :2], anchors])
    fields = np.zeros((len(UNITS), SPRITE, SPRITE, 2), np.float32)
    for k, unit in enumerate(UNITS):
        values = np.vstack([disp[unit], np.zeros((len(anchors), 2))])
        for c in range(2):
            fields[k, :, :, c] = griddata(ctrl, values[:, c], (xx, yy), method="linear",
                                          fill_value=0.0)
    above = [(lm[105, :2] + lm[159, :2]) / 2, (lm[334, :2] + lm[386, :2]) / 2]
    skin = np.mean([sprite[int(y) - 2 : int(y) + 3, int(x) - 2 : int(x) + 3].reshape(-1, 3).mean(0)
                    for x, y in above], axis=0)
    rest = np.array([REST_EXPRESSION.get(name, {}).get(u, 0.0) for u in UNITS])
    return FaceRig(name, sprite, mask, lm, disp, fields, tuple(float(v) for v in skin), rest)


def unit_displacements(lm: np.ndarray) -> dict[str, np.ndarray]:
    """Landmark displacements (478, 2) in sprite pixels for each expression unit at strength 1."""
    n = len(lm)
    xy, z = lm[:, :2], lm[:, 2]
    eye_r, eye_l = xy[468], xy[473]  # iris centres
    iod = float(np.linalg.norm(eye_l - eye_r))
    centre = xy.mean(0)
    out = {u: np.zeros((n, 2)) for u in UNITS}

    # smile (AU12 + AU06): corners out and up, cheeks up, falling off with distance
    for idx, side in zip(MOUTH_CORNERS, (-1, 1)):
        d = np.linalg.norm(xy - xy[idx], axis=1)
        wgt = np.exp(-(d / (0.18 * iod)) ** 2)[:, None]
        out["smile"] += wgt * np.array([side * 0.10 * iod, -0.09 * iod])
    for cheek in (CHEEK_R, CHEEK_L):
        out["smile"][cheek] += np.array([0.0, -0.04 * iod])
    for lid in (LOWER_LID_R, LOWER_LID_L):
        out["smile"][lid] += np.array([0.0, -0.02 * iod])

    # brow raise (AU01 + AU02), brow lower (AU04)
    for brow in (BROW_R, BROW_L):
        out["brow_raise"][brow] = np.array([0.0, -0.13 * iod])
        out["brow_lower"][brow] = np.array([0.0, 0.07 * iod])
    for lid in (UPPER_LID_R, UPPER_LID_L):
        out["brow_raise"][lid] = np.array([0.0, -0.02 * iod])
    for i in BROW_INNER:
        out["brow_lower"][i, 0] += 0.05 * iod * np.sign(centre[0] - xy[i, 0])

    # jaw open (AU25 + AU26): everything below the lips goes down, most at the chin
    mouth_y = (xy[13, 1] + xy[14, 1]) / 2
    chin_y = xy[152, 1]
    below = xy[:, 1] > mouth_y + 0.01 * iod
    below[UPPER_INNER_LIP] = False
    frac = np.clip((xy[:, 1] - mouth_y) / max(chin_y - mouth_y, 1.0), 0, 1) * 0.5 + 0.5
    lateral = np.exp(-((xy[:, 0] - xy[14, 0]) / (0.9 * iod)) ** 2)
    out["jaw"][below, 1] = (0.40 * iod * frac * lateral)[below]
    out["jaw"][UPPER_INNER_LIP, 1] = -0.02 * iod

    # blink (AU45): the upper lid closes onto the lower lid
    for upper, lower in ((UPPER_LID_R, LOWER_LID_R), (UPPER_LID_L, LOWER_LID_L)):
        for i in upper:
            j = lower[int(np.argmin(np.abs(xy[lower, 0] - xy[i, 0])))]
            out["blink"][i, 1] = 0.9 * (xy[j, 1] - xy[i, 1])

    # head turn (yaw) and nod (pitch), 0.3 rad at strength 1, from the landmark depth
    theta = 0.3
    zc = z - z.mean()
    out["yaw"][:, 0] = (xy[:, 0] - centre[0]) * (np.cos(theta) - 1) - zc * np.sin(theta)
    out["pitch"][:, 1] = (xy[:, 1] - centre[1]) * (np.cos(theta) - 1) - zc * np.sin(theta)
    return out


def load_rigs() -> list[FaceRig]:
    from personality.facemodel import open_landmarker

    with open_landmarker(mode="image") as landmarker:
        return [build_rig(name, path, landmarker) for name, path in face_photos().items()]


# --------------------------------------------------------------------------------------------------
# per-clip signals


def smooth_noise(rng: np.random.Generator, n: int, fps: float, period_s: float) -> np.ndarray:
    """Band-limited noise, (n,), zero mean, unit sd, varying over about `period_s` seconds."""
    k = max(int(period_s * fps), 1)
    raw = rng.standard_normal(n + 4 * k)
    kernel = np.hanning(2 * k + 1)
    sm = np.convolve(raw, kernel / kernel.sum(), mode="same")[2 * k : 2 * k + n]
    return (sm - sm.mean()) / (sm.std() + 1e-9)


def synthesize_speech(rng: np.random.Generator, cue: dict[str, float], duration: float, sr: int,
                      base_pitch: float) -> tuple[np.ndarray, np.ndarray]:
    """Speech-like audio and its syllable envelope, both (duration * sr,) float32.

    Pitch contour (declination + accents) -> glottal pulses -> vowel formants; syllables at the
    cue's rate with consonant bursts; phrases separated by pauses. (The draws from `rng` come in
    a fixed order: schedule, pitch, noise, syllable amplitudes: the same seed, the same wave.)
    """
    from scipy import signal

    n = int(round(duration * sr))
    f0_mean = base_pitch * np.exp(0.18 * cue["pitch"])
    range_st = float(np.clip(3.0 + 1.2 * cue["pitch_var"], 1.0, 7.0))  # intonation, semitones
    gain = 10 ** ((-22 + 4.0 * cue["loudness"]) / 20)
    rate = 4.0 * np.exp(0.18 * cue["speech_rate"])  # syllables per second
    pause_frac = float(np.clip(0.22 + 0.09 * cue["pause"], 0.05, 0.5))
    syllables = _syllable_schedule(rng, duration, rate, pause_frac)
    source = _glottal_source(rng, syllables, n, sr, duration, f0_mean, range_st)
    noise = rng.standard_normal(n)
    env, per_vowel, consonant = _syllable_envelopes(rng, syllables, n, sr)
    out = _vowels(source, per_vowel, sr)
    hiss = signal.lfilter(*signal.butter(2, 2500 / (sr / 2), "high"), noise)
    out += hiss / (np.abs(hiss).max() + 1e-9) * consonant
    out = out * gain + 10 ** (-62 / 20) * noise  # plus a quiet room tone
    return out.astype(np.float32), np.clip(env, 0, 1).astype(np.float32)


def _syllable_schedule(rng: np.random.Generator, duration: float, rate: float,
                       pause_frac: float) -> list[tuple[float, float, int]]:
    """(start s, length s, vowel index) per syllable: phrases of speech, pauses between them."""
    syllables = []
    t = float(rng.uniform(0.1, 0.4))
    while t < duration - 0.3:
        phrase = rng.uniform(1.2, 2.8) * (1 - pause_frac) / 0.78
        end = min(t + phrase, duration - 0.2)
        while t < end:
            length = float(rng.uniform(0.8, 1.2) / rate)
            syllables.append((t, length, int(rng.integers(len(VOWELS)))))
            t += length
        t += rng.uniform(0.6, 1.4) * phrase * pause_frac / (1 - pause_frac)
    return syllables


def _glottal_source(rng: np.random.Generator, syllables: list, n: int, sr: int, duration: float,
                    f0_mean: float, range_st: float) -> np.ndarray:
    """(n,) glottal pulses along the pitch contour: declination per phrase plus an accent per
    syllable, smoothed, with jitter; a sawtooth with extra tilt, peak-normalised."""
    from scipy import signal

    st = np.zeros(n)
    for start, length, _ in syllables:
        a, b = int(start * sr), min(int((start + length) * sr), n)
        st[a:b] = rng.normal(0, range_st / 2)
    st = np.convolve(st, np.hanning(int(0.08 * sr)) / (0.04 * sr), mode="same")
    st += range_st / 2 * np.cos(np.linspace(0, np.pi * duration / 2.2, n))  # slow declination
    f0 = f0_mean * 2 ** (st / 12) * (1 + 0.004 * rng.standard_normal(n))  # with jitter
    phase = np.cumsum(f0 / sr)
    source = 2 * (phase % 1.0) - 1.0  # sawtooth: all harmonics at -6 dB/octave
    source = signal.lfilter([1.0], [1.0, -0.7], source)  # extra glottal tilt
    return source / (np.abs(source).max() + 1e-9)


def _syllable_envelopes(rng: np.random.Generator, syllables: list, n: int,
                        sr: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(envelope (n,), per-vowel envelopes (len(VOWELS), n), consonant bursts (n,))."""
    env = np.zeros(n)
    per_vowel = np.zeros((len(VOWELS), n))
    consonant = np.zeros(n)
    for start, length, vowel in syllables:
        c_len = min(0.25 * length, 0.07)
        a = int((start + c_len) * sr)
        b = min(int((start + length) * sr), n)
        if b - a < 16:
            continue
        shape = np.sin(np.linspace(0, np.pi, b - a)) ** 0.6
        amp = rng.uniform(0.6, 1.0)
        per_vowel[vowel, a:b] += shape * amp
        env[a:b] += shape * amp
        ca = int(start * sr)
        consonant[ca:a] += np.hanning(a - ca) * rng.uniform(0.1, 0.35)
    return env, per_vowel, consonant


def _vowels(source: np.ndarray, per_vowel: np.ndarray, sr: int) -> np.ndarray:
    """The source through each vowel's formant filters, mixed by the per-vowel envelopes."""
    from scipy import signal

    out = np.zeros(len(source))
    for v, formants in enumerate(VOWELS):
        if not per_vowel[v].any():
            continue
        y = source.copy()
        for f, bw in formants:
            r = np.exp(-np.pi * bw / sr)
            theta = 2 * np.pi * f / sr
            y = signal.lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], y)
        out += y / (np.abs(y).max() + 1e-9) * per_vowel[v]
    return out


# (formant Hz, bandwidth Hz) for /a/, /e/, /i/, /o/, /u/, schwa
VOWELS = (((730, 90), (1090, 110), (2440, 170)), ((530, 70), (1840, 100), (2480, 160)),
          ((290, 60), (2250, 100), (2890, 170)), ((570, 80), (840, 100), (2410, 160)),
          ((300, 60), (870, 90), (2240, 160)), ((500, 80), (1500, 100), (2500, 160)))


@dataclasses.dataclass(frozen=True)
class Appearance:
    """What makes a synthetic subject look like somebody else."""

    rig: int  # index into the base photos
    scale: float  # head height / frame height
    dx: float  # head centre offset, fraction of width
    dy: float
    tint: tuple[float, float, float]  # per-channel colour gain
    bg_a: tuple[int, int, int]  # background gradient colours
    bg_b: tuple[int, int, int]
    base_pitch: float  # Hz: the voice's register


def draw_appearance(rng: np.random.Generator, n_rigs: int, index: int) -> Appearance:
    return Appearance(
        rig=index % n_rigs,
        scale=float(rng.uniform(0.78, 0.98)),
        dx=float(rng.uniform(-0.08, 0.08)), dy=float(rng.uniform(-0.04, 0.05)),
        tint=tuple(float(v) for v in rng.uniform(0.82, 1.15, 3)),
        bg_a=tuple(int(v) for v in rng.integers(20, 235, 3)),
        bg_b=tuple(int(v) for v in rng.integers(20, 235, 3)),
        base_pitch=float(rng.choice([105.0, 125.0, 190.0, 215.0]) * rng.uniform(0.92, 1.08)),
    )


def episodes(rng: np.random.Generator, z: float, n: int, fps: float, *, period_s: float
             ) -> np.ndarray:
    """Expression strength per frame, (n,) in [0, 1]: zero at rest, episodes where smooth noise
    crosses a threshold. Higher z: lower threshold (more time expressive: 5% at z = -2, 21% at 0,
    50% at +2) and higher peaks (amplitude 0.55 + 0.2 z)."""
    amplitude = float(np.clip(0.55 + 0.2 * z, 0.05, 1.0))
    threshold = 0.8 - 0.4 * z
    drive = smooth_noise(rng, n, fps, period_s)
    return amplitude * np.clip((drive - threshold) / 0.6, 0.0, 1.0)


def expression_tracks(rng: np.random.Generator, cue: dict[str, float], n: int, fps: float,
                      jaw: np.ndarray) -> np.ndarray:
    """Unit strengths per frame, (n, len(UNITS)), from the visual cues and the speech envelope.

    Facial expressions come in episodes from a neutral rest (as people's do): a cue sets how
    often (the share of time above the rest) and how strongly. The face is at rest most of the
    time for all but the most expressive clips, so per-video neutral-baseline calibration (the
    `aus` stage, like OpenFace's) keeps the signal instead of subtracting it."""
    smile = episodes(rng, cue["smile"], n, fps, period_s=1.5)
    brow_r = episodes(rng, cue["brow_raise"], n, fps, period_s=0.8)
    brow_l = episodes(rng, cue["brow_lower"], n, fps, period_s=2.0)
    blink = np.zeros(n)
    interval = 1.0 / (0.30 * np.exp(0.5 * cue["blink_rate"]))  # seconds between blinks
    t = rng.uniform(0.2, interval)
    while t < n / fps:
        c = t * fps
        for k in range(max(int(c) - 4, 0), min(int(c) + 5, n)):  # ~0.3 s close-and-open
            blink[k] = max(blink[k], np.clip(1 - abs(k - c) / 3.5, 0, 1))
        t += interval * rng.uniform(0.8, 1.2)
    head = float(np.clip(0.35 + 0.18 * cue["head_motion"], 0.03, 0.9))
    yaw = head * smooth_noise(rng, n, fps, 1.2)
    pitch = 0.7 * head * smooth_noise(rng, n, fps, 0.9)
    return np.stack([smile, brow_r, brow_l, np.clip(jaw, 0, 1), blink,
                     np.clip(yaw, -1.5, 1.5), np.clip(pitch, -1.5, 1.5)], axis=1)


def mix(weights: np.ndarray, stack: np.ndarray) -> np.ndarray:
    """sum_k weights[k] * stack[k], element by element in a fixed order. Not np.tensordot: BLAS
    reductions may round differently with memory alignment and threads, and a last-bit change in
    a displacement can move an anti-aliased edge, so the same seed would not give the same pixels
    in another process."""
    weights = np.asarray(weights, dtype=stack.dtype)  # float32 fields stay float32 for cv2.remap
    out = stack[0] * weights[0]
    for k in range(1, len(weights)):
        out += stack[k] * weights[k]
    return out


def render_frame(rig: FaceRig, app: Appearance, strengths: np.ndarray, roll_deg: float,
                 background: np.ndarray) -> np.ndarray:
    """One RGB frame (H, W, 3) uint8: the rig warped by `strengths` (len(UNITS),) and placed."""
    import cv2

    strengths = strengths + rig.rest  # (len(UNITS),): the clip's expression over the resting face
    field = mix(strengths, rig.fields)  # (S, S, 2)
    grid = _sprite_grid()  # (S, S, 2) pixel coordinates x, y
    # backward map: the output pixel p shows the source pixel p - d(p) (small-displacement inverse)
    maps = grid - field
    face = cv2.remap(rig.sprite, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)
    jaw = float(strengths[UNITS.index("jaw")])
    blink = float(strengths[UNITS.index("blink")])
    if jaw > 0.05 or blink > 0.05:
        # A warp alone only stretches: an open mouth needs its dark interior painted, a closed
        # eye its lid (skin over the eye, a lash line at the bottom).
        moved = rig.landmarks[:, :2] + mix(strengths, rig.landmark_stack)  # (478, 2)
        if jaw > 0.05:
            overlay = face.copy()
            poly = np.round(moved[INNER_LIPS] * 16).astype(np.int32)
            cv2.fillPoly(overlay, [poly], (45, 18, 22), lineType=cv2.LINE_AA, shift=4)
            alpha = min(1.0, jaw * 2.5)
            face = cv2.addWeighted(overlay, alpha, face, 1 - alpha, 0)
        if blink > 0.05:
            overlay = face.copy()
            for eye in (EYE_R, EYE_L):
                poly = np.round(rig.landmarks[eye, :2] * 16).astype(np.int32)
                cv2.fillPoly(overlay, [poly], rig.lid_colour, lineType=cv2.LINE_AA, shift=4)
                lash = np.round(moved[eye[8:] + eye[:1], :2] * 16).astype(np.int32)
                cv2.polylines(overlay, [lash], False, (40, 30, 30), 1, cv2.LINE_AA, shift=4)
            alpha = min(1.0, blink * 1.2)
            face = cv2.addWeighted(overlay, alpha, face, 1 - alpha, 0)
    face = np.clip(face.astype(np.float32) * np.array(app.tint, np.float32), 0, 255)
    h, w = background.shape[:2]
    s = app.scale * h / SPRITE
    centre = (w / 2 + app.dx * w, h / 2 + app.dy * h)
    m = cv2.getRotationMatrix2D((SPRITE / 2, SPRITE / 2), roll_deg, s)
    m[:, 2] += np.array(centre) - np.array([SPRITE / 2, SPRITE / 2])
    placed = cv2.warpAffine(face, m, (w, h), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(rig.mask, m, (w, h), flags=cv2.INTER_LINEAR)[..., None]
    return (placed * alpha + background * (1 - alpha)).astype(np.uint8)


_GRID = None


def _sprite_grid() -> np.ndarray:
    global _GRID
    if _GRID is None:
        yy, xx = np.mgrid[0:SPRITE, 0:SPRITE].astype(np.float32)
        _GRID = np.stack([xx, yy], axis=-1)
    return _GRID


def make_background(app: Appearance, width: int, height: int) -> np.ndarray:
    ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    grad = np.array(app.bg_a, np.float32) * (1 - ramp) + np.array(app.bg_b, np.float32) * ramp
    return np.broadcast_to(grad, (height, width, 3)).astype(np.float32)


# FFmpeg's own MPEG-4 Part 2 encoder at a fixed quantiser (q 4: PSNR ~36 dB, ~0.7 Mbit/s here).
# Not libx264: in a long-lived process x264 gave different bytes for the same frames from one
# call to the next, and the same seed must give the same clips. (The front-end decodes H.264 and
# everything else FFmpeg reads; bench/frontend.py makes its H.264 clip itself.)
VIDEO_CODEC = "mpeg4"
VIDEO_OPTIONS = {"flags": "+qscale", "global_quality": str(4 * 118), "threads": "1"}  # 118: FF_QP2LAMBDA


def write_clip(path: Path, frames_rgb, audio: np.ndarray | None, fps: float, sr: int,
               width: int, height: int) -> None:
    """Encode RGB frames (MPEG-4 Part 2, yuv420p) and mono float audio (AAC) into an mp4,
    atomically, byte for byte the same for the same input in any process."""
    import av
    import cv2

    with atomic_file(path) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        video = container.add_stream(VIDEO_CODEC, rate=Fraction(fps).limit_denominator(1001),
                                     options=VIDEO_OPTIONS)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.thread_count = 1  # threaded encoding is not bit-reproducible
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=sr, layout="mono")
            astream.bit_rate = 64000
        for index, rgb in enumerate(frames_rgb):
            # RGB -> I420 with OpenCV: FFmpeg's swscale path (VideoFrame.reformat) does not give
            # the same bytes in every process, and the same seed must give the same file
            yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)  # (H * 3 / 2, W) uint8
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = index  # an unset pts leaves the encoder to guess
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if astream is not None:
            from personality.video_io import mux_mono_audio

            mux_mono_audio(container, astream, audio, sr)


# --------------------------------------------------------------------------------------------------
# one clip, in a worker

_RIGS: list[FaceRig] | None = None


def _init_worker(rigs: list[FaceRig]) -> None:
    global _RIGS
    _RIGS = rigs
    import cv2

    cv2.setNumThreads(1)  # one clip per process: threads would only fight over the cores


def clip_signals(job: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One clip's audio (n_samples,), unit strengths per frame (n_frames, len(UNITS)) and roll
    per frame (n_frames,) in degrees, drawn from the job's seed: what `render_clip` renders, and
    the per-frame ground truth of the synthetic dataset (no pixels needed to re-draw it)."""
    rng = np.random.default_rng([job["seed"], job["index"], 1])
    cue = dict(zip(CUES, job["cues"]))
    fps, sr = job["fps"], job["sr"]
    n_frames = int(round(job["duration"] * fps))
    audio, env = synthesize_speech(rng, cue, n_frames / fps, sr, job["appearance"].base_pitch)
    # jaw follows the syllable envelope, sampled at frame times
    hop = len(env) / n_frames
    jaw = np.array([env[int(i * hop) : int((i + 1) * hop)].mean() for i in range(n_frames)])
    tracks = expression_tracks(rng, cue, n_frames, fps, 0.9 * jaw)
    head = float(np.clip(0.35 + 0.18 * cue["head_motion"], 0.03, 0.9))
    roll = 5.0 * head * smooth_noise(rng, n_frames, fps, 2.0)  # degrees
    return audio, tracks, roll


def render_clip(job: dict) -> dict:
    """Render one clip to `job['path']`. Returns its manifest facts and its per-frame unit
    strengths (`tracks`, (n_frames, len(UNITS)) float32: the ground truth of every frame)."""
    assert _RIGS is not None, "worker not initialised"
    app: Appearance = job["appearance"]
    fps, sr = job["fps"], job["sr"]
    audio, tracks, roll = clip_signals(job)
    n_frames = len(tracks)
    rig = _RIGS[app.rig]
    bg = make_background(app, job["width"], job["height"])
    frames = (render_frame(rig, app, tracks[i], float(roll[i]), bg) for i in range(n_frames))
    write_clip(Path(job["path"]), frames, audio, fps, sr, job["width"], job["height"])
    return {"video_id": job["video_id"], "duration_s": n_frames / fps, "fps": fps,
            "has_audio": True,
            "mean_tracks": dict(zip(UNITS, np.abs(tracks).mean(0).round(4).tolist())),
            "tracks": tracks.astype(np.float32)}


def render_all(jobs: list[dict], rigs: list[FaceRig], workers: int, progress_bar=None) -> list[dict]:
    """Render every clip on personality/executor.py's executor (`workers` local processes, or the
    Dask cluster PERSONALITY_CLUSTER names); results in job order. The rigs travel once per worker."""
    results = []
    for res in map_jobs(render_clip, jobs, workers=workers, label=lambda job: job["video_id"],
                        setup=_init_worker, setup_args=(rigs,)):
        results.append(res)
        if progress_bar is not None:
            progress_bar.update(1)
    return results


def _preview(out: str) -> None:
    import cv2

    rigs = load_rigs()
    _init_worker(rigs)
    rng = np.random.default_rng(0)
    tiles = []
    for r in range(len(rigs)):
        app = draw_appearance(rng, len(rigs), r)
        bg = make_background(app, 320, 240)
        for unit in UNITS:
            s = np.zeros(len(UNITS))
            s[UNITS.index(unit)] = 1.0
            tiles.append(render_frame(rigs[r], app, s, 0.0, bg))
    rows = [np.hstack(tiles[i : i + len(UNITS)]) for i in range(0, len(tiles), len(UNITS))]
    cv2.imwrite(out, cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))
    print(f"wrote {out}: rows = base photos, columns = {', '.join(UNITS)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preview", default="synthetic_preview.png")
    _preview(parser.parse_args().preview)
