"""The ``backdrop`` command: process photos locally and manage the model files.

Exit codes: 0 all done; 1 some inputs could not be processed (each is named on stderr);
2 bad command line or parameters; 3 a model file could not be obtained; 4 an input or output file
could not be read or written; 5 (submit) the service could not be reached.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from backdrop.errors import BackdropError, ModelUnavailable, UnknownModel
from backdrop.params import BLUR_LEVELS, LIVE_EFFECTS, Bokeh, Effect, JobParams, Keep, MediaKind, Subjects
from backdrop.settings import Settings
from backdrop.sniff import HEAD_BYTES, media_kind

if TYPE_CHECKING:
    from backdrop.client import ApiError
    from backdrop.pipeline import Pipeline

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_MODEL, EXIT_IO, EXIT_SERVICE = 0, 1, 2, 3, 4, 5
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".gif"}
_SUFFIX_FORMATS = {
    ".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp", ".zip": "zip", ".mp4": "mp4", ".webm": "webm",
}  # fmt: skip


class UsageError(Exception):
    pass


class UnreadableFile(Exception):
    """A file the command needs could not be read (already reported on stderr)."""


def build_parser() -> argparse.ArgumentParser:
    # --verbose is accepted before or after the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
        help="also show what the libraries underneath say (model runtime, downloads)",
    )  # fmt: skip
    parser = argparse.ArgumentParser(prog="backdrop", description="Portrait mode for your photos.", parents=[common])
    commands = parser.add_subparsers(dest="command", required=True)

    process = commands.add_parser(
        "process",
        parents=[common],
        help="blur, replace or cut out the background of photos, on this machine",
        description="Process photos or folders of photos. Settings come from BACKDROP_* environment variables.",
    )
    _add_job_arguments(process)

    submit = commands.add_parser(
        "submit",
        parents=[common],
        help="send photos to a running Backdrop service and download the results",
        description="Submit photos or folders of photos to a Backdrop service, wait, and download the results.",
    )
    _add_job_arguments(submit)
    submit.add_argument("--url", help="the service (default: BACKDROP_URL or http://127.0.0.1:8080)")
    submit.add_argument("--api-key", help="API key, when the service requires one (default: BACKDROP_API_KEY)")
    submit.add_argument("--parallel", type=int, default=4, help="jobs in flight at once (default 4)")
    submit.add_argument("--timeout", type=float, default=600, help="seconds to wait for each job (default 600)")
    submit.add_argument(
        "--wait",
        type=float,
        default=10,
        help="ask the service to answer with the finished job when it ends within this many seconds, "
        "before polling (Prefer: wait; default 10, 0: poll only)",
    )
    submit.add_argument("--callback-url", help="the service POSTs each job's JSON there when it ends (signed)")

    live = commands.add_parser(
        "live",
        parents=[common],
        help="a camera (or a clip, as if it were one) through a service's live mode, written to a video",
        description="Send frames to a Backdrop service's live mode and write what comes back. This build of "
        "OpenCV has no windows: the processed stream is written to --output.",
    )
    source = live.add_mutually_exclusive_group(required=True)
    source.add_argument("--camera", type=int, metavar="N", help="camera number (0: the first)")
    source.add_argument("--input", type=Path, metavar="CLIP", help="a video file, sent frame by frame as a camera")
    live.add_argument("--output", "-o", type=Path, required=True, help="the processed stream: .mp4 or .webm")
    live.add_argument("--seconds", type=float, help="stop after this long (camera: default 10)")
    live.add_argument("--effect", choices=[e.value for e in LIVE_EFFECTS], default="blur")
    live.add_argument("--strength", help=f"1-100 or {'|'.join(BLUR_LEVELS)}")
    live.add_argument("--bokeh", choices=[b.value for b in Bokeh])
    live.add_argument("--targets", help="classes to keep sharp, comma-separated (default person)")
    live.add_argument("--subjects", choices=[s.value for s in Subjects], help="main (default) or all")
    live.add_argument("--color", help="background colour #RRGGBB for --effect color")
    live.add_argument("--background", type=Path, help="background image for --effect replace")
    live.add_argument("--in-flight", type=int, default=2, help="frames sent ahead of the answers (default 2)")
    live.add_argument("--url", help="the service (default: BACKDROP_URL or http://127.0.0.1:8080)")
    live.add_argument("--api-key", help="API key, when the service requires one (default: BACKDROP_API_KEY)")

    models = commands.add_parser("models", parents=[common], help="list or fetch the segmentation models")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    listing = model_commands.add_parser(
        "list", parents=[common], help="the model cache folder, the models, their classes and cached files"
    )
    listing.add_argument("--json", action="store_true")
    fetch = model_commands.add_parser("fetch", parents=[common], help="download and verify model files into the cache")
    fetch.add_argument("names", nargs="*", metavar="NAME", help="models to fetch (default: all)")
    fetch.add_argument("--all", action="store_true", help="fetch every model")
    return parser


def _add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags shared by `process` (local) and `submit` (service): one per job parameter."""
    parser.add_argument("inputs", nargs="+", type=Path, metavar="IN", help="photo or video files, or folders")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="output file (one input) or folder; default: beside each input, named NAME_backdrop.EXT",
    )
    parser.add_argument("--effect", choices=[e.value for e in Effect], default="blur")
    parser.add_argument("--strength", help=f"1-100 or {'|'.join(BLUR_LEVELS)} (blur only; default 50)")
    parser.add_argument("--bokeh", choices=[b.value for b in Bokeh], help="blur kind (default gaussian)")
    parser.add_argument("--targets", default="person", help="classes to keep sharp, comma-separated (default person)")
    parser.add_argument("--model", help="segmentation model (default: chosen from the targets)")
    parser.add_argument("--background", type=Path, help="background image for --effect replace")
    parser.add_argument(
        "--color", help="background colour #RRGGBB (#RRGGBBAA: translucent) or a name, for --effect color"
    )
    parser.add_argument(
        "--format",
        choices=["jpeg", "jpg", "png", "webp", "zip", "mp4", "webm"],
        help="output format: jpeg, png, webp for photos (default: the input's); mp4, webm for videos (default mp4)",
    )
    parser.add_argument("--quality", help="JPEG/WebP quality 1-100 (default 90)")
    parser.add_argument(
        "--keep",
        choices=[k.value for k in Keep],
        help="targets: only the target classes (default); held: also what they hold, ride or sit on",
    )
    parser.add_argument(
        "--subjects",
        choices=[s.value for s in Subjects],
        help="main: the most prominent person and those with them, others blurred (default); all: everyone",
    )
    parser.add_argument("--keep-islands", action="store_true", help="keep small subject regions far from the main one")
    parser.add_argument(
        "--keep-metadata", action="store_true", help="copy the input's EXIF (GPS included) to the output"
    )
    framing = parser.add_argument_group("framing (photos)")
    framing.add_argument("--max-pixels", help="shrink larger photos to at most this many pixels first")
    framing.add_argument("--roi", help="only this region may be the subject: 'x1 y1 x2 y2' in px or %%")
    framing.add_argument("--crop", action="store_true", help="crop the result to the subject")
    framing.add_argument("--crop-margin", help="margin around a crop: 1, 2 or 4 values in px or %% of the subject")
    framing.add_argument("--scale", help="the subject's size on a new background: 10%%-100%% of the picture")
    framing.add_argument("--position", help="where the subject goes: center, or 'X%% Y%%'")
    parser.add_argument("--json", action="store_true", help="print one JSON report line per input on stdout")


def _job_fields(args: argparse.Namespace) -> dict[str, str | None]:
    """The job parameters as the strings JobParams.parse and the HTTP form take."""
    fmt = args.format
    if fmt is None and args.output is not None and len(args.inputs) == 1 and not args.inputs[0].is_dir():
        fmt = _SUFFIX_FORMATS.get(args.output.suffix.lower())
    return {
        "effect": args.effect,
        "strength": args.strength,
        "bokeh": args.bokeh,
        "targets": args.targets,
        "model": args.model,
        "color": args.color,
        "format": fmt,
        "quality": args.quality,
        "keep": args.keep,
        "subjects": args.subjects,
        "keep_islands": "true" if args.keep_islands else None,
        "keep_metadata": "true" if args.keep_metadata else None,
        "max_pixels": args.max_pixels,
        "roi": args.roi,
        "crop": "true" if args.crop else None,
        "crop_margin": args.crop_margin,
        "scale": args.scale,
        "position": args.position,
    }


def _quiet_libraries(verbose: bool) -> None:
    """A command prints what its user asked for; the libraries' own chatter only with --verbose."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="backdrop: %(name)s: %(message)s", force=True
    )
    # TensorFlow's C++ logging (the optional engine) reads this when it is first imported.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "2")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries(getattr(args, "verbose", False))
    try:
        settings = Settings.from_env()
        if args.command == "models":
            return _models(args, settings)
        if args.command == "submit":
            return _submit(args, settings)
        if args.command == "live":
            return _live(args, settings)
        return _process(args, settings)
    except UsageError as exc:
        print(f"backdrop: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UnreadableFile:
        return EXIT_IO
    except (ModelUnavailable, UnknownModel) as exc:
        print(f"backdrop: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_MODEL if isinstance(exc, ModelUnavailable) else EXIT_USAGE
    except BackdropError as exc:
        print(f"backdrop: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `backdrop process ... --json | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at interpreter exit
        return EXIT_OK


def _models(args: argparse.Namespace, settings: Settings) -> int:
    from backdrop.models.fetch import cached_path, resolve_model_file
    from backdrop.models.registry import MODELS, PEOPLE_MODELS, catalog

    files = catalog()
    if args.models_command == "list":
        rows: list[dict] = []
        for name, spec in (*MODELS.items(), *PEOPLE_MODELS.items()):
            rows.append(
                {
                    "name": name,
                    "description": spec.description,
                    "classes": getattr(spec, "classes", ()),
                    "files": [
                        {
                            "variant": f.part,
                            "file": f.file.file_name,
                            "input": f.input,
                            "sha256": f.file.sha256,
                            "cached": str(cached_path(f.file, settings) or ""),
                            "sources": [s.describe() for s in f.file.sources],
                        }
                        for f in files
                        if f.model == name
                    ],
                }
            )
        if args.json:
            print(json.dumps({"cache": str(settings.model_dir), "models": rows}, indent=2))
            return EXIT_OK
        print(f"model cache: {settings.model_dir}  (BACKDROP_MODEL_DIR)")
        for row in rows:
            print(f"{row['name']}: {row['description']}")
            if row["classes"]:
                print(f"  classes: {', '.join(row['classes'])}")
            for f in row["files"]:
                state = f"cached at {f['cached']}" if f["cached"] else "not cached (run: backdrop models fetch)"
                print(f"  {f['variant']:<10} {f['input']:>8}  {f['file']}  {state}")
        return EXIT_OK

    known = {f.model for f in files}
    names = sorted(known, key=[f.model for f in files].index) if args.all or not args.names else args.names
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UsageError(f"unknown model {unknown[0]!r}; known models: {', '.join(sorted(known))}")
    failures = 0
    for entry in (f for name in names for f in files if f.model == name):
        try:
            path = resolve_model_file(entry.file, settings)
        except ModelUnavailable as exc:
            failures += 1
            print(f"backdrop: {exc.message}", file=sys.stderr)
            continue
        print(f"{entry.model}/{entry.part}: {path}")
    return EXIT_MODEL if failures else EXIT_OK


def _collect_inputs(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            suffixes = IMAGE_SUFFIXES | VIDEO_SUFFIXES
            found.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes))
        elif path.is_file():
            found.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder")
    if not found:
        suffixes = " ".join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))
        raise UsageError(f"no photos or videos found in the given folders (looked for {suffixes})")
    return found


def _job_inputs(args: argparse.Namespace, params: JobParams) -> tuple[bytes | None, list[Path], bool]:
    """The background (for replace), the photos to process, and whether the one input is a single file."""
    background = None
    if params.effect is Effect.REPLACE:
        if args.background is None:
            raise UsageError("--effect replace needs --background FILE")
        background = _read(args.background)
        if background is None:
            raise UnreadableFile(str(args.background))
    inputs = _collect_inputs(args.inputs)
    single_file = len(args.inputs) == 1 and args.inputs[0].is_file()
    if not single_file and args.output is not None and args.output.is_file():
        raise UsageError(f"{args.output}: several inputs need an output folder, and this is a file")
    return background, inputs, single_file


def _output_for(source: Path, output: Path | None, single_file: bool, ext: str) -> Path:
    if output is None:
        return source.with_name(f"{source.stem}_backdrop.{ext}")
    if single_file and output.suffix and not output.is_dir():
        return output
    return output / f"{source.stem}.{ext}"


def _kind_of(path: Path) -> MediaKind:
    try:
        with path.open("rb") as handle:
            return media_kind(handle.read(HEAD_BYTES))
    except OSError:
        return MediaKind.IMAGE  # reading it again reports the error


def _process(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from backdrop.pipeline import Pipeline
    from backdrop.pipeline.allocator import retain_freed_memory

    fields = _job_fields(args)
    background, inputs, single_file = _job_inputs(args, JobParams.parse({**fields, "format": None}))
    inputs_kinds = [(source, _kind_of(source)) for source in inputs]
    # Bad flags fail before any work, for each kind of input there is.
    params = {kind: JobParams.parse(fields, kind) for kind in {kind for _, kind in inputs_kinds}}

    retain_freed_memory(settings.retain_freed_memory_mb)
    pipeline = Pipeline(settings)
    failed = io_failed = 0
    with tqdm(inputs_kinds, unit="file", disable=len(inputs) < 2 or None, file=sys.stderr) as progress:
        for source, kind in progress:
            try:
                if kind is MediaKind.VIDEO:
                    target, report, line = _process_video(pipeline, source, args, params[kind], background, settings)
                else:
                    data = _read(source)
                    if data is None:
                        io_failed += 1
                        continue
                    result = pipeline.process(data, params[kind], background)
                    target = _output_for(source, args.output, single_file, result.format.extension)
                    _write(target, result.data)
                    report, line = result.report(), _describe_found(result.detected, result.found)
            except ModelUnavailable:
                raise
            except BackdropError as exc:
                failed += 1
                progress.write(f"backdrop: {source}: {exc.code}: {exc.message}", file=sys.stderr)
                continue
            except UnwritableFile as exc:
                io_failed += 1
                progress.write(f"backdrop: {exc}", file=sys.stderr)
                continue
            if args.json:
                print(json.dumps({"input": str(source), "output": str(target), **report}), flush=True)
            else:
                progress.write(f"{source} -> {target}  {line}")
    if io_failed:
        return EXIT_IO
    return EXIT_SOME_FAILED if failed else EXIT_OK


class UnwritableFile(Exception):
    """An output could not be written; the message names it and why."""


def _write(target: Path, data: bytes) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    except OSError as exc:
        raise UnwritableFile(f"{target}: cannot write: {exc.strerror}") from None


def _process_video(
    pipeline: Pipeline,
    source: Path,
    args: argparse.Namespace,
    params: JobParams,
    background: bytes | None,
    settings: Settings,
) -> tuple[Path, dict, str]:
    """One clip, with a progress bar in frames."""
    from tqdm import tqdm

    from backdrop.pipeline.imageio import load_image
    from backdrop.video.probe import probe_video
    from backdrop.video.render import render_video

    info = probe_video(source, max_seconds=settings.max_video_seconds, max_frame_pixels=settings.max_video_frame_pixels)
    fmt = params.video_format()
    single_file = len(args.inputs) == 1 and args.inputs[0].is_file()
    target = _output_for(source, args.output, single_file, fmt.extension)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UnwritableFile(f"{target}: cannot write: {exc.strerror}") from None
    backdrop_image = load_image(background, settings).bgr if background is not None else None
    with tqdm(total=info.frames, unit="frame", desc=source.name, file=sys.stderr, leave=False) as bar:
        done = 0

        def advance(count: int) -> None:
            nonlocal done
            bar.update(count - done)
            done = count

        try:
            joined = render_video(pipeline, source, target, params, fmt, background=backdrop_image, on_frame=advance)
        except OSError as exc:
            raise UnwritableFile(f"{target}: cannot write: {exc}") from None
    sound = "with sound" if joined.audio else "no sound"
    report = {
        "kind": "video",
        "format": fmt.value,
        "content_type": fmt.content_type,
        "width": info.width,
        "height": info.height,
        "frames": joined.frames,
        "duration_s": round(info.duration_s, 3),
        "audio": joined.audio,
        "bytes": target.stat().st_size,
    }
    return target, report, f"{joined.frames} frames, {info.duration_s:.1f} s, {sound}"


def _first_contact_failed(exc: ApiError) -> int:
    """Say why the service could not be used; the exit code tells an absent service from a refusal."""
    from backdrop.client import ServiceUnavailable

    if isinstance(exc, ServiceUnavailable):
        print(f"backdrop: {exc.message}", file=sys.stderr)
        return EXIT_SERVICE
    print(f"backdrop: {exc.code}: {exc.message}", file=sys.stderr)
    return EXIT_USAGE


def _submit(args: argparse.Namespace, settings: Settings) -> int:
    """Send photos to a service concurrently, wait for each job, download the results."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm import tqdm

    from backdrop.client import ApiError, Client, JobFailed

    fields = _job_fields(args)
    background, inputs, single_file = _job_inputs(args, JobParams.parse({**fields, "format": None}))
    for kind in {_kind_of(source) for source in inputs}:
        JobParams.parse(fields, kind)  # bad flags fail before any upload
    url, api_key = args.url or settings.client_url, args.api_key or settings.client_api_key
    client = Client(url, api_key=api_key)
    try:
        Client(url, api_key=api_key, retries=1).models()  # fail fast when the service is not there or the key is wrong
    except ApiError as exc:
        return _first_contact_failed(exc)

    def one(source: Path) -> tuple[Path, Path, dict]:
        extra = {"callback_url": args.callback_url} if args.callback_url else {}
        given = {k: v for k, v in fields.items() if v is not None}
        job = client.submit(source, background=background, wait=args.wait or None, **given, **extra)
        job.wait(timeout=args.timeout)
        extension = job.result["content_type"].split("/")[1].replace("jpeg", "jpg")  # type: ignore[index]
        target = _output_for(source, args.output, single_file, extension)
        target.parent.mkdir(parents=True, exist_ok=True)
        job.download(target)
        return source, target, job.data

    failed = 0
    with (
        ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool,
        tqdm(total=len(inputs), unit="photo", disable=len(inputs) < 2 or None, file=sys.stderr) as progress,
    ):
        futures = {pool.submit(one, source): source for source in inputs}
        for future in as_completed(futures):
            progress.update()
            source = futures[future]
            try:
                _, target, job = future.result()
            except JobFailed as exc:
                failed += 1
                progress.write(f"backdrop: {source}: {exc.code}: {exc.message}", file=sys.stderr)
                continue
            except (ApiError, TimeoutError, OSError) as exc:
                failed += 1
                progress.write(f"backdrop: {source}: {exc}", file=sys.stderr)
                continue
            if args.json:
                print(json.dumps({"input": str(source), "output": str(target), **job}), flush=True)
            else:
                progress.write(f"{source} -> {target}  {_describe_found(job['detected'] or {}, bool(job['found']))}")
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _live(args: argparse.Namespace, settings: Settings) -> int:
    """Frames from a camera or a clip, through the service's live mode, into a video file."""
    import tempfile
    import time

    import cv2
    import numpy as np
    from tqdm import tqdm

    from backdrop.client import ApiError, LiveClient
    from backdrop.params import VideoFormat
    from backdrop.video.media import FrameWriter, VideoSource, join

    fmt = VideoFormat.WEBM if args.output.suffix.lower() == ".webm" else VideoFormat.MP4
    limit = args.seconds if args.seconds is not None else (10.0 if args.camera is not None else None)

    def frames():  # type: ignore[no-untyped-def]
        """(time, JPEG) pairs from the camera (wall-clock time) or the clip (its own times)."""
        if args.input is not None:
            with VideoSource(args.input) as clip:
                for frame in clip.frames(0.0, limit if limit is not None else float("inf")):
                    yield frame.time_s, cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
            return
        capture = cv2.VideoCapture(args.camera)
        if not capture.isOpened():
            raise UsageError(f"camera {args.camera} cannot be opened (no camera, or no permission)")
        started = time.monotonic()
        try:
            while (now := time.monotonic() - started) < (limit or 10.0):
                ok, image = capture.read()
                if not ok:
                    break
                yield now, cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        finally:
            capture.release()

    url, api_key = args.url or settings.client_url, args.api_key or settings.client_api_key
    try:
        live = LiveClient.discover(url, api_key=api_key)
    except ApiError as exc:
        return _first_contact_failed(exc)
    times: list[float] = []

    def timed_frames():  # type: ignore[no-untyped-def]
        for time_s, jpeg in frames():
            times.append(time_s)
            yield jpeg

    with live, tempfile.TemporaryDirectory(prefix="backdrop-live-") as scratch:
        wanted = {"effect": args.effect, "strength": args.strength, "bokeh": args.bokeh, "targets": args.targets,
                  "subjects": args.subjects, "color": args.color, "background": args.background}  # fmt: skip
        try:
            live.configure(**wanted)
        except ApiError as exc:
            print(f"backdrop: {exc.code}: {exc.message}", file=sys.stderr)
            return EXIT_USAGE
        recording = Path(scratch) / "live.mkv"
        writer = None
        started = time.perf_counter()
        with tqdm(unit="frame", file=sys.stderr) as progress:
            for index, answer in enumerate(live.stream(timed_frames(), in_flight=max(1, args.in_flight))):
                image = cv2.imdecode(np.frombuffer(answer, np.uint8), cv2.IMREAD_COLOR)
                if writer is None:
                    fps = 30.0 if len(times) < 2 else max(1.0, (len(times) - 1) / max(times[-1] - times[0], 1e-3))
                    writer = FrameWriter(recording, fmt, image.shape[1], image.shape[0], fps)
                writer.write(image, times[index])
                progress.update()
        if writer is None:
            print("backdrop: no frame came back", file=sys.stderr)
            return EXIT_SOME_FAILED
        writer.close()
        report = join([recording], args.input, args.output, fmt)
    rate = report.frames / (time.perf_counter() - started)
    print(f"{args.input or f'camera {args.camera}'} -> {args.output}  {report.frames} frames, {rate:.1f} frames/s live")
    return EXIT_OK


def _describe_found(detected: dict[str, float], found: bool) -> str:
    if not found:
        return f"no {' or '.join(detected)} found: whole image treated as background"
    return ", ".join(f"{name} {share:.0%}" for name, share in detected.items())


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as exc:
        print(f"backdrop: {path}: cannot read: {exc.strerror}", file=sys.stderr)
        return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
