"""Live mode: a WebSocket server beside the API and the workers (its own process, scaled apart), serving
camera frames through the same frame pipeline in real time. ``python -m live``; the API never imports it."""
