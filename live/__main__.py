"""``python -m live [--host H] [--port P]``: the live WebSocket server (settings from the environment)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from backdrop.pipeline.allocator import retain_freed_memory
from backdrop.service.observability import configure_logging
from backdrop.settings import Settings
from live.server import PATH, LiveServer

log = logging.getLogger("backdrop.live")


async def run(settings: Settings, host: str, port: int) -> None:
    server = LiveServer(settings)
    server.load()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with await server.serve(host, port):
        log.info("live ready on ws://%s:%d%s", host, port, PATH)
        await stop.wait()
    log.info("live stopped")


def main() -> None:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(prog="python -m live", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (containers: 0.0.0.0)")
    parser.add_argument("--port", type=int, default=settings.live_port)
    args = parser.parse_args()
    configure_logging("live", settings.log_level)
    retain_freed_memory(settings.retain_freed_memory_mb)
    asyncio.run(run(settings, args.host, args.port))


if __name__ == "__main__":
    main()
