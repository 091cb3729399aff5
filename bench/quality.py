"""Mask quality against reference masks: the default pipeline against the one-pass baseline, in one run.

Scores follow ../shared/eval/person-masks/README.md exactly (backdrop.evaluation): mean and 10th
percentile IoU, boundary F, MAE. The photos are split into two halves, A and B (every other
photo by number), printed apart: tune on one, check on the other. Prints a per-photo table, writes the worst five
as a contact sheet (photo | reference | ours | baseline) and a strip of frames from the shared clips
(frame | matte | blur) for eyes on real scenes.

    .venv/bin/python bench/quality.py [--eval ../shared/eval] [--out var/quality] [--only 52,48]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from backdrop.evaluation import MaskScore, score_matte
from backdrop.params import JobParams
from backdrop.pipeline import Pipeline
from backdrop.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SHEET_HEIGHT = 200


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


def summary(scored: list[Scored]) -> str:
    iou = [s.score.iou for s in scored]
    return (
        f"mIoU {statistics.fmean(iou):.3f}  p10 IoU {np.percentile(iou, 10):.3f}  "
        f"boundary F {statistics.fmean(s.score.boundary_f for s in scored):.3f}  "
        f"MAE {statistics.fmean(s.score.mae for s in scored):.4f}  "
        f"({len(scored)} photos, {statistics.median(s.milliseconds for s in scored):.1f} ms median)"
    )


def half(scored: list[Scored], parity: int) -> list[Scored]:
    """Every other photo, in the order of their numbers: two halves of 22, one to tune on, one to check."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval", type=Path, default=ROOT.parent / "shared" / "eval")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "quality")
    parser.add_argument("--only", help="comma-separated photo numbers")
    parser.add_argument("--keep", default="targets", help="the keep parameter (targets or held)")
    parser.add_argument("--no-clips", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    settings = replace(Settings.from_env(), threads=2)
    pairs = load_pairs(args.eval / "person-masks", set(args.only.split(",")) if args.only else None)
    params = JobParams.parse({"effect": "mask", "keep": args.keep})
    default = score_set(Pipeline(settings), pairs, params)
    baseline = score_set(Pipeline(replace(settings, closer_look=False, segment_views=False)), pairs, params)

    print(f"{'photo':>6} {'size':>9} {'IoU':>6} {'bF':>6} {'MAE':>7} | {'base IoU':>8} {'bF':>6} {'MAE':>7}")
    for ours, base, (_, photo, _) in zip(default, baseline, pairs, strict=True):
        size = f"{photo.shape[1]}x{photo.shape[0]}"
        print(
            f"{ours.name:>6} {size:>9} {ours.score.iou:6.3f} {ours.score.boundary_f:6.3f} {ours.score.mae:7.4f} | "
            f"{base.score.iou:8.3f} {base.score.boundary_f:6.3f} {base.score.mae:7.4f}"
        )
    print()
    for label, scored in (("default", default), ("one-pass baseline", baseline)):
        print(f"{label:>18}: {summary(scored)}")
        for parity, name in ((0, "half A"), (1, "half B")):
            if half(scored, parity):
                print(f"{name:>18}: {summary(half(scored, parity))}")

    worst = sorted(zip(default, baseline, pairs, strict=True), key=lambda t: t[0].score.iou)[:5]
    rows = [
        row(photo, gray(reference), gray(ours.matte), gray(base.matte)) for ours, base, (_, photo, reference) in worst
    ]
    cv2.imwrite(str(args.out / "worst.png"), sheet(rows))
    names = ", ".join(w[0].name for w in worst)
    print(f"\nworst five (photo | reference | ours | one-pass): {args.out / 'worst.png'}  ({names})")
    if not args.no_clips:
        clips = sorted(p for p in (args.eval / "videos").iterdir() if p.suffix in (".mp4", ".mkv"))
        clip_strip(Pipeline(settings), clips, args.out / "clips.png")


if __name__ == "__main__":
    main()
