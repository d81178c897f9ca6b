"""Plain amqtt 0.12.1 as shipped, in a process of its own (its leaked sockets die with it).

python -m tests.conformance.plain_amqtt [MAX_CONNECTIONS]   # prints "READY <port>", stops on SIGTERM
"""

from __future__ import annotations

import asyncio
import signal
import sys
import warnings


async def main(max_connections: int) -> None:
    from amqtt.broker import Broker

    listener = {"type": "tcp", "bind": "127.0.0.1:0", "max_connections": max_connections}
    with warnings.catch_warnings():  # its own $SYS plugin warns about its own dependencies
        warnings.simplefilter("ignore", DeprecationWarning)
        broker = Broker({"listeners": {"default": listener}})
        await broker.start()
    print(f"READY {broker._servers['default'].instance.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else -1))
