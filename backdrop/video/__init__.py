"""Video: a loop around the frame pipeline.

- ``probe``: what a file is (by content), its size, length, rotation and sound, and the limits; PyAV only,
  so the HTTP API can refuse a bad upload without the ML stack.
- ``media``: frames in and out with FFmpeg's libraries (PyAV): decoding to upright BGR arrays with their
  timestamps, encoding H.264 or VP9 (with alpha), joining chunks without re-encoding, carrying the sound.
- ``temporal``: the state a sequence of frames shares (smoothing over time, expensive steps spread over
  frames); the same object serves video chunks and live sessions.
- ``chunks``: cutting a clip into time ranges that workers render in parallel.
- ``render``: one chunk (or a whole clip) through the pipeline, frame by frame.
"""
