"""The image pipeline, a plain library (numpy, OpenCV, LiteRT): decode → segment → refine → effect → encode.

Where each part lives:

- ``process``: ``Pipeline``, which runs those stages for a photo (``process``) or a frame of a clip or a
  live session (``process_frame``);
- ``loaded``: the models a process has loaded, one engine per model file, and the calls that run them;
- ``finding``: finding the subject, as named steps, each a module of pure functions:
  the whole frame's views, tiles and closer looks (``segment``, ``subject``) → the people in it
  (``people``) → each person's region (``regions``) → who is a subject (``choice``) → the mask
  (``refine``, ``objects``);
- ``refine``: the matte at full resolution; ``effects``: blur, colour, grey, replace, cutout;
  ``framing``: crops around the subject; ``imageio``, ``metadata``: bytes in and out.
"""

from backdrop.pipeline.finding import FOUND_MIN_COVERAGE, FrameHistory, SubjectFinder, SubjectMap
from backdrop.pipeline.loaded import LoadedModels
from backdrop.pipeline.process import PREVIEW_LONG_SIDE, STAGES, FrameResult, Pipeline, ProcessResult, StageClock

__all__ = [
    "FOUND_MIN_COVERAGE",
    "PREVIEW_LONG_SIDE",
    "STAGES",
    "FrameHistory",
    "FrameResult",
    "LoadedModels",
    "Pipeline",
    "ProcessResult",
    "StageClock",
    "SubjectFinder",
    "SubjectMap",
]
