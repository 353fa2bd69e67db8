"""Run ../shared/peers/loadgen.py with one TCP connection per client channel.

grpc shares one connection between channels of a process that have the same target and arguments
(its global subchannel pool), so the load generator's `--connections 8` opens one TCP connection, and
SO_REUSEPORT, which spreads connections, would send every request of a cell to one server process.
This wrapper gives each `grpc.aio` channel its own pool ("grpc.use_local_subchannel_pool"), so N
channels are N connections, for every server alike (a one-process server sees N connections too).

    python bench/peers_loadgen.py PATH/TO/loadgen.py run --target vae ...
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Any

import grpc

__all__ = ["own_connections"]


def own_connections() -> None:
    """Patch grpc.aio.insecure_channel: each channel gets its own subchannel pool (own connection)."""
    plain = grpc.aio.insecure_channel

    def insecure_channel(target: str, options: Any = None, *args: Any, **kwargs: Any) -> Any:
        return plain(target, [*(options or []), ("grpc.use_local_subchannel_pool", 1)], *args, **kwargs)

    grpc.aio.insecure_channel = insecure_channel  # type: ignore[assignment]


if __name__ == "__main__":
    own_connections()
    loadgen = Path(sys.argv[1]).resolve()
    sys.path.insert(0, str(loadgen.parent))
    sys.argv = [str(loadgen), *sys.argv[2:]]
    runpy.run_path(str(loadgen), run_name="__main__")
