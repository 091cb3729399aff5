"""Mask quality against reference masks: the default pipeline against its views and the one-pass
baseline, in one run; and masks of clips (fast motion, small figures).

Scores follow ../shared/eval/person-masks/README.md exactly (backdrop.evaluation): mean and 10th
percentile IoU, boundary F, MAE, and how many photos score below IoU 0.5. The photos are split into two
halves, A and B (every other photo by number), printed apart: tune on one, check on the other; and into
the set's first 44 and the photos added to them. Printed: a per-photo table; the default (views voting,
subjects=main) against the selfie view alone (BACKDROP_FULL_BODY=false), the full-body view alone (on the
photos where it ran, with the others on the same photos), subjects=all, the photo's own view only
(BACKDROP_SEGMENT_VIEWS=false) and the one-pass baseline. Written to --out: the worst 20 (photo |
reference | default | own view only | baseline, ten a sheet), the photos where the
subject choice changed the mask (photo | subjects=all | main | reference), frames of the shared clips
(frame | matte | blur), and with --clips a strip of small figures at 432x240 (scene | matte).

With --clips: each shared clip's first frames as a video against the same frames as stills (flicker and
IoU, the worst frame included), and four people at once in a 432x240 clip (four tiles of the juggler,
each a quarter-second apart): how often each is found (IoU 0.5 or more in their tile against the matte
their full-resolution frame gets as a still), with and without the full-body view.

    .venv/bin/python bench/quality.py [--eval ../shared/eval] [--out var/quality] [--only 52,48] [--clips]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from backdrop.evaluation import MaskScore, flicker, score_matte
from backdrop.params import JobParams, Subjects
from backdrop.pipeline import PREVIEW_LONG_SIDE, Pipeline
from backdrop.pipeline.geometry import make_preview
from backdrop.pipeline.people import on_grid
from backdrop.pipeline.refine import refine_alpha
from backdrop.pipeline.subject import work_size
from backdrop.settings import Settings
from backdrop.video.media import VideoSource
from backdrop.video.temporal import TemporalState

ROOT = Path(__file__).resolve().parent.parent
SHEET_HEIGHT = 200
# The set's first 44 photos (the others were added on 2026-12-07): ../shared/eval/person-masks/README.md.
FIRST_44 = {"1", *(str(n) for n in range(4, 53, 2)), "56", "58", "60", "63", "70", "75", "81", "88", "96", "102",
            "104", "109", "155", "225", "261", "264", "270", "287"}  # fmt: skip
WORST = 20
SMALL_SCENE = (432, 240)  # four people in 2x2 tiles of 216x120
CLIP_FRAMES = 120


@dataclass(frozen=True)
class Scored:
    name: str
    score: MaskScore
    matte: np.ndarray
    milliseconds: float


def matte_of(pipeline: Pipeline, photo: np.ndarray, params: JobParams) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    frame = pipeline.process_frame(photo, params)
    return frame.rendered, (time.perf_counter() - started) * 1e3


def score_set(pipeline: Pipeline, pairs: list[tuple[str, np.ndarray, np.ndarray]], params: JobParams) -> list[Scored]:
    scored = []
    for name, photo, reference in pairs:
        matte, ms = matte_of(pipeline, photo, params)
        scored.append(Scored(name, score_matte(matte, reference), matte, ms))
    return scored


def full_body_only(pipeline: Pipeline, photo: np.ndarray) -> np.ndarray | None:
    """The matte made from the full-body view alone (the people's own segmentations, through the same
    trimap matte), or None when the landmark model did not run on this photo (a close-up)."""
    preview = make_preview(photo, PREVIEW_LONG_SIDE)
    people, _ = pipeline.finder.find_people(preview)
    work_w, work_h = work_size(preview.shape[1], preview.shape[0])
    scale = work_w / preview.shape[1]
    bodies = [on_grid(p, scale, work_w, work_h).segmentation for p in people if p.pose is not None]
    if not bodies:
        return None
    probability = np.maximum.reduce(bodies)
    model_pixel = max(p.pose.region.size for p in people if p.pose is not None) / 256
    return refine_alpha(probability, photo, preview, model_pixel=model_pixel).full


def summary(scored: list[Scored]) -> str:
    iou = [s.score.iou for s in scored]
    return (
        f"mIoU {statistics.fmean(iou):.3f}  p10 IoU {np.percentile(iou, 10):.3f}  "
        f"boundary F {statistics.fmean(s.score.boundary_f for s in scored):.3f}  "
        f"MAE {statistics.fmean(s.score.mae for s in scored):.4f}  below 0.5: {sum(i < 0.5 for i in iou)}  "
        f"({len(scored)} photos, {statistics.median(s.milliseconds for s in scored):.1f} ms median)"
    )


def parts(scored: list[Scored]) -> list[tuple[str, list[Scored]]]:
    """The halves (tune on A, check on B), the first 44 and the photos added to them."""
    return [
        ("half A", half(scored, 0)),
        ("half B", half(scored, 1)),
        ("first 44", [s for s in scored if s.name in FIRST_44]),
        ("added", [s for s in scored if s.name not in FIRST_44]),
    ]


def half(scored: list[Scored], parity: int) -> list[Scored]:
    """Every other photo, in the order of their numbers: two halves, one to tune on, one to check."""
    return [s for i, s in enumerate(sorted(scored, key=lambda s: int(s.name))) if i % 2 == parity]


def gray(mask: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(mask, cv2.COLOR_GRAY2BGR)


def row(*tiles: np.ndarray) -> np.ndarray:
    scale = SHEET_HEIGHT / tiles[0].shape[0]
    size = (round(tiles[0].shape[1] * scale), SHEET_HEIGHT)
    resized = [cv2.resize(t, size, interpolation=cv2.INTER_AREA) for t in tiles]
    return np.hstack([cv2.copyMakeBorder(t, 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=(255, 255, 255)) for t in resized])


def sheet(rows: list[np.ndarray]) -> np.ndarray:
    width = max(r.shape[1] for r in rows)
    return np.vstack([cv2.copyMakeBorder(r, 0, 0, 0, width - r.shape[1], cv2.BORDER_CONSTANT) for r in rows])


def load_pairs(folder: Path, only: set[str] | None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    pairs = []
    for image_path in sorted((folder / "images").glob("*.jpg"), key=lambda p: int(p.stem)):
        if only and image_path.stem not in only:
            continue
        photo = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        reference = cv2.imread(str(folder / "masks" / f"{image_path.stem}.png"), cv2.IMREAD_GRAYSCALE)
        pairs.append((image_path.stem, photo, reference))
    return pairs


def clip_strip(pipeline: Pipeline, clips: list[Path], out: Path) -> None:
    """A few frames of each shared clip: frame | matte | blur, for eyes on real moving scenes."""
    rows = []
    for clip in clips:
        capture = cv2.VideoCapture(str(clip))
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or 1
        for index in (total // 5, total // 2, 4 * total // 5):
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = capture.read()
            if not ok:
                continue
            matte = pipeline.process_frame(frame, JobParams.parse({"effect": "mask"})).rendered
            blurred = pipeline.process_frame(frame, JobParams.parse({"strength": "70"})).rendered
            rows.append(row(frame, gray(matte), blurred))
        capture.release()
    if rows:
        cv2.imwrite(str(out), sheet(rows))
        print(f"frames of the shared clips: {out}")


def tile_iou(matte: np.ndarray, truth: np.ndarray) -> float:
    return score_matte(matte, truth).iou


def clip_frames(clip: Path, count: int) -> list[np.ndarray]:
    with VideoSource(clip) as video:
        return [frame.image for _, frame in zip(range(count), video.frames(), strict=False)]


def fast_motion(settings: Settings, clips: list[Path]) -> None:
    """Each clip's first frames as a video against the same frames as stills, and against each frame alone
    through the clip's own path (a fresh memory per frame: the detectors run, nothing is smoothed), which
    tells how closely the smoothing follows motion apart from what stills get that clip frames do not
    (three views, a full-body pass for everyone)."""
    mask = JobParams.parse({"effect": "mask"})
    print(f"\nclips, first {CLIP_FRAMES} frames as a video against the same frames as stills and each alone:")
    print(
        f"{'clip':>32} {'flicker stills':>14} {'video':>8} {'ratio':>6} {'IoU vs stills':>14} {'lowest':>7} "
        f"{'vs alone':>9} {'lowest':>7}"
    )
    runs = [(clip.name, clip, settings) for clip in clips]
    juggler = next((clip for clip in clips if clip.name.startswith("juggle")), None)
    if juggler is not None:
        runs.append(("juggle, BACKDROP_CLIP_FULL_BODY", juggler, replace(settings, clip_full_body=True)))
    for label, clip, run_settings in runs:
        pipeline = Pipeline(run_settings)
        frames = clip_frames(clip, CLIP_FRAMES)
        stills = [pipeline.process_frame(frame, mask).rendered for frame in frames]
        alone = [pipeline.process_frame(frame, mask, history=TemporalState()).rendered for frame in frames]
        history = TemporalState()
        video = [pipeline.process_frame(frame, mask, history=history).rendered for frame in frames]
        ious = [tile_iou(v, s) for v, s in zip(video, stills, strict=True)]
        own = [tile_iou(v, a) for v, a in zip(video, alone, strict=True)]
        still_flicker, video_flicker = flicker(frames, stills), flicker(frames, video)
        print(
            f"{label[:32]:>32} {still_flicker:14.4f} {video_flicker:8.4f} {video_flicker / still_flicker:6.2f} "
            f"{statistics.fmean(ious):14.3f} {min(ious):7.3f} {statistics.fmean(own):9.3f} {min(own):7.3f}"
        )


# Four people walking across a 432x240 street, their paths crossing: (height in pixels, x of their feet at
# the start, y of their feet, frames of the clip they are behind the first, pixels a frame to the right),
# the smallest a child far off.
FIGURES = ((110, 60, 228, 0, 1), (84, 250, 212, 7, -1), (66, 150, 200, 14, 1), (52, 400, 192, 21, -1))


def empty_street(frame: np.ndarray, matte: np.ndarray) -> np.ndarray:
    """The clip's own grass and trees with nobody on them: the part of the frame left of the juggler and
    its mirror image side by side, at the scene's size."""
    left = int(np.nonzero((matte >= 128).any(axis=0))[0].min() * 0.9)
    half = frame[:, :left]
    return cv2.resize(np.hstack([half, half[:, ::-1]]), SMALL_SCENE, interpolation=cv2.INTER_AREA)


def street_scene(frames: list[np.ndarray], mattes: list[np.ndarray], street: np.ndarray, t: int):
    """Frame ``t`` of the four people walking across ``street``: the picture and each one's visible part."""
    height, width = street.shape[:2]
    picture = street.astype(np.float32)
    truths: list[np.ndarray] = []
    for size, x, y, offset, step in FIGURES:
        frame, matte = frames[t + offset], mattes[t + offset]
        ys, xs = np.nonzero(matte >= 128)
        top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        w = max(1, round((right - left) * size / (bottom - top)))
        person = cv2.resize(frame[top:bottom, left:right], (w, size), interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(matte[top:bottom, left:right], (w, size), interpolation=cv2.INTER_AREA)
        x0, y0 = x + step * t - w // 2, y - size
        xs0, xs1 = max(0, x0), min(width, x0 + w)
        canvas = np.zeros((height, width), np.float32)
        canvas[y0 : y0 + size, xs0:xs1] = alpha[:, xs0 - x0 : xs1 - x0] / 255
        full = np.zeros((height, width, 3), np.float32)
        full[y0 : y0 + size, xs0:xs1] = person[:, xs0 - x0 : xs1 - x0]
        picture = picture * (1 - canvas[..., None]) + full * canvas[..., None]
        truths = [truth * (1 - canvas) for truth in truths]  # who walks behind is hidden there
        truths.append(canvas)
    return picture.astype(np.uint8), truths


def found_in(matte: np.ndarray, truth: np.ndarray) -> float:
    """IoU of the matte and one person's visible part, around them (a fifth of their height further)."""
    ys, xs = np.nonzero(truth >= 0.5)
    if not len(ys):
        return 0.0
    pad = max(4, (ys.max() - ys.min()) // 5)
    region = (slice(max(0, ys.min() - pad), ys.max() + pad), slice(max(0, xs.min() - pad), xs.max() + pad))
    return tile_iou(matte[region], truth[region])


def small_figures(settings: Settings, clip: Path, out: Path) -> None:
    """Four people of 110 to 52 pixels walking across a 432x240 clip: cut out of the juggler clip (each
    from another moment, by the matte its full-resolution frame gets as a still), drifting a pixel a
    frame (their paths cross), over the clip's own grass and trees. A person is found in a frame when the
    clip's matte overlaps their visible part at IoU 0.5 or more around them."""
    frames = clip_frames(clip, CLIP_FRAMES)
    mask = JobParams.parse({"effect": "mask"})
    reference_pipeline = Pipeline(settings)
    mattes = [reference_pipeline.process_frame(frame, mask).rendered for frame in frames]
    street = empty_street(frames[0], mattes[0])
    count = len(frames) - max(f[3] for f in FIGURES)
    print(f"\nfour people walking across a {SMALL_SCENE[0]}x{SMALL_SCENE[1]} clip (52-110 px tall), {count} frames:")
    strip = []
    for label, full_body, subjects in (
        ("default, subjects=all", True, "all"),
        ("default (subjects=main)", True, "main"),
        ("without the full-body view", False, "all"),
    ):
        pipeline = Pipeline(replace(settings, full_body=full_body))
        params = JobParams.parse({"effect": "mask", "subjects": subjects})
        history = TemporalState()
        found = np.zeros(len(FIGURES), int)
        ious = []
        for t in range(count):
            picture, truths = street_scene(frames, mattes, street, t)
            matte = pipeline.process_frame(picture, params, history=history).rendered
            for index, truth in enumerate(truths):
                iou = found_in(matte, truth)
                ious.append(iou)
                found[index] += iou >= 0.5
            if full_body and subjects == "all" and t % (count // 4) == 0:
                strip.append(row(picture, gray(matte)))
        rates = " ".join(f"{100 * f / count:5.1f}%" for f in found)
        print(f"{label:>28}: found, tallest to smallest {rates}; IoU around each, mean {statistics.fmean(ious):.3f}")
    cv2.imwrite(str(out), sheet(strip))
    print(f"small figures (scene | matte): {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval", type=Path, default=ROOT.parent / "shared" / "eval")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "quality")
    parser.add_argument("--only", help="comma-separated photo numbers")
    parser.add_argument("--keep", default="targets", help="the keep parameter (targets or held)")
    parser.add_argument("--no-clips", action="store_true", help="no strip of the shared clips' frames")
    parser.add_argument("--clips", action="store_true", help="also the clip checks (fast motion, small figures)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    settings = replace(Settings.from_env(), threads=2)
    pairs = load_pairs(args.eval / "person-masks", set(args.only.split(",")) if args.only else None)
    params = JobParams.parse({"effect": "mask", "keep": args.keep})
    pipeline = Pipeline(settings)
    default = score_set(pipeline, pairs, params)
    selfie = score_set(Pipeline(replace(settings, full_body=False)), pairs, params)
    everyone = score_set(pipeline, pairs, replace(params, subjects=Subjects.ALL))
    views_off = score_set(Pipeline(replace(settings, segment_views=False)), pairs, params)
    baseline = score_set(
        Pipeline(replace(settings, closer_look=False, segment_views=False, full_body=False)), pairs, params
    )
    bodies = []
    for ours, view, (name, photo, reference) in zip(default, selfie, pairs, strict=True):
        matte = full_body_only(pipeline, photo)
        if matte is not None:
            bodies.append((Scored(name, score_matte(matte, reference), matte, 0.0), ours, view))

    header = f"{'photo':>6} {'size':>9} {'IoU':>6} {'bF':>6} {'MAE':>7} | {'selfie':>6} | {'body':>6} | {'base IoU':>8}"
    print(header)
    body_of = {b.name: b for b, _, _ in bodies}
    for ours, view, base, (_, photo, _) in zip(default, selfie, baseline, pairs, strict=True):
        size = f"{photo.shape[1]}x{photo.shape[0]}"
        body = f"{body_of[ours.name].score.iou:6.3f}" if ours.name in body_of else f"{'-':>6}"
        print(
            f"{ours.name:>6} {size:>9} {ours.score.iou:6.3f} {ours.score.boundary_f:6.3f} {ours.score.mae:7.4f} | "
            f"{view.score.iou:6.3f} | {body} | {base.score.iou:8.3f}"
        )
    print()
    rows_of = (
        ("default (fused)", default),
        ("selfie view", selfie),
        ("subjects=all", everyone),
        ("own view only (no views)", views_off),
        ("one-pass baseline", baseline),
    )
    for label, scored in rows_of:
        print(f"{label:>26}: {summary(scored)}")
        for name, part in parts(scored):
            if part:
                print(f"{name:>26}: {summary(part)}")
    if bodies:
        print(f"\non the {len(bodies)} photos where the landmark model ran:")
        for label, column in (("full-body view alone", 0), ("default (fused)", 1), ("selfie view", 2)):
            print(f"{label:>26}: {summary([b[column] for b in bodies])}")

    worst = sorted(zip(default, views_off, baseline, pairs, strict=True), key=lambda t: t[0].score.iou)[:WORST]
    rows = [
        row(photo, gray(reference), gray(ours.matte), gray(own.matte), gray(base.matte))
        for ours, own, base, (_, photo, reference) in worst
    ]
    for index in range(0, len(rows), 10):  # ten rows a sheet, for eyes
        cv2.imwrite(str(args.out / f"worst-{index // 10 + 1}.png"), sheet(rows[index : index + 10]))
    names = ", ".join(f"{w[0].name} ({w[0].score.iou:.2f})" for w in worst)
    print(
        f"\nworst {len(worst)} (photo | reference | default | the photo's own view only | one-pass): "
        f"{args.out}/worst-*.png  ({names})"
    )
    changed = [
        (ours, every, pair)
        for ours, every, pair in zip(default, everyone, pairs, strict=True)
        if score_matte(ours.matte, every.matte >= 128).iou < 0.99
    ]
    if changed:
        rows = [row(photo, gray(every.matte), gray(ours.matte), gray(ref)) for ours, every, (_, photo, ref) in changed]
        cv2.imwrite(str(args.out / "subjects.png"), sheet(rows))
        names = ", ".join(c[0].name for c in changed)
        print(f"subject choice changed (photo | all | main | reference): {args.out / 'subjects.png'}  ({names})")
    clips = sorted(p for p in (args.eval / "videos").iterdir() if p.suffix in (".mp4", ".mkv"))
    if not args.no_clips:
        clip_strip(pipeline, clips, args.out / "clips.png")
    if args.clips:
        fast_motion(settings, clips)
        small_figures(settings, args.eval / "videos" / "juggle-720p.mp4", args.out / "small-figures.png")


if __name__ == "__main__":
    main()
