"""Regenerate the README's before/after pictures with Backdrop itself: `.venv/bin/python docs/make_examples.py`.

The video example (``video-blur.gif``) is made from a real clip, ``webcam-sign.mkv`` of the team's evaluation
set (Intel's sample videos, CC BY 4.0), rendered as a video (with smoothing over time) and shown beside
the original: pass ``--clip PATH`` to use another.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from skimage import data as samples

from backdrop.params import JobParams
from backdrop.pipeline import Pipeline

OUT = Path(__file__).parent / "images"
WIDTH = 256


def jpeg(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def thumbnail(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:  # show transparency on a checkerboard
        rows, cols = np.indices(image.shape[:2]) // 16
        tiles = ((rows + cols) % 2 * 60 + 170).astype(np.uint8)
        board = cv2.merge([tiles] * 3)
        alpha = image[:, :, 3:].astype(np.float32) / 255
        image = (image[:, :, :3] * alpha + board * (1 - alpha)).astype(np.uint8)
    height = round(image.shape[0] * WIDTH / image.shape[1])
    return cv2.resize(image, (WIDTH, height), interpolation=cv2.INTER_AREA)


def video_example(pipeline: Pipeline, clip: Path, out: Path, seconds: float = 2.4, fps: int = 10) -> None:
    """Original | blurred, side by side, as an animated GIF (every third frame of a 30 fps clip)."""
    from PIL import Image

    from backdrop.video.media import VideoSource
    from backdrop.video.temporal import TemporalState

    history = TemporalState()
    params = JobParams.parse({"strength": "80"})
    tiles = []
    with VideoSource(clip) as video:
        step = max(1, round(video.fps / fps))
        for index, frame in enumerate(video.frames(0.0, seconds)):
            rendered = pipeline.process_frame(frame.image, params, history=history).rendered
            if index % step == 0:
                side = np.hstack([thumbnail_pixels(frame.image, 200), thumbnail_pixels(rendered, 200)])
                tiles.append(Image.fromarray(np.ascontiguousarray(side[:, :, ::-1])).quantize(colors=96))
    tiles[0].save(out, save_all=True, append_images=tiles[1:], duration=1000 // fps, loop=0, optimize=True)
    print(out)


def thumbnail_pixels(image: np.ndarray, width: int) -> np.ndarray:
    height = round(image.shape[0] * width / image.shape[1])
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    clips = Path(__file__).resolve().parent.parent.parent / "shared" / "eval" / "videos"
    parser.add_argument("--clip", type=Path, default=clips / "webcam-sign.mkv")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    pipeline = Pipeline()
    astronaut, chelsea, coffee = jpeg(samples.astronaut()), jpeg(samples.chelsea()), jpeg(samples.coffee())
    examples = {
        "original": (astronaut, None, None),
        "blur": (astronaut, {"strength": "70"}, None),
        "lens": (astronaut, {"strength": "90", "bokeh": "lens"}, None),
        "gray": (astronaut, {"effect": "gray"}, None),
        "replace": (astronaut, {"effect": "replace"}, coffee),
        "cutout": (astronaut, {"effect": "cutout"}, None),
        "cat-original": (chelsea, None, None),
        "cat-blur": (chelsea, {"targets": "cat", "strength": "80"}, None),
        "cat-mask": (chelsea, {"targets": "cat", "effect": "mask"}, None),
    }
    for name, (photo, params, background) in examples.items():
        result = photo if params is None else pipeline.process(photo, JobParams.parse(params), background).data
        cv2.imwrite(str(OUT / f"{name}.jpg"), thumbnail(result), [cv2.IMWRITE_JPEG_QUALITY, 85])
        print(OUT / f"{name}.jpg")
    if args.clip.is_file():
        video_example(pipeline, args.clip, OUT / "video-blur.gif")
    else:
        print(f"no clip at {args.clip}: the video example was not made")


if __name__ == "__main__":
    main()
