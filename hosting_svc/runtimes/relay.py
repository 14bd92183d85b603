"""A confined model's front door: 127.0.0.1:PORT on the host, forwarded to the model's Unix socket.

`python relay.py PORT SOCKET_DIR -- COMMAND...` starts COMMAND (the sandbox) and forwards every TCP
connection on 127.0.0.1:PORT to SOCKET_DIR/model.sock, byte for byte. The sandbox has no network
at all (its own empty network namespace), so this port is the only way in and there is no way out.
It exits with the sandbox; SIGTERM stops the sandbox first. Standalone on purpose (no package
imports): hosting runs it with its own interpreter, by path.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

SOCKET = "model.sock"  # relative: the socket folder's absolute path may exceed the 108-byte sun_path


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def forward(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
    try:
        model_reader, model_writer = await asyncio.open_unix_connection(SOCKET)
    except OSError:  # not listening yet (loading) or gone: the caller sees UNAVAILABLE and retries
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, model_writer), pipe(model_reader, client_writer))


async def serve(port: int, sandbox: subprocess.Popen) -> int:
    server = await asyncio.start_server(forward, "127.0.0.1", port)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, sandbox.kill)
    loop.add_signal_handler(signal.SIGINT, sandbox.kill)
    code = await loop.run_in_executor(None, sandbox.wait)
    server.close()
    return code


def main(argv: list[str]) -> int:
    port, socket_dir, separator, *command = argv
    assert separator == "--" and command, "usage: relay.py PORT SOCKET_DIR -- COMMAND..."
    os.chdir(socket_dir)
    sandbox = subprocess.Popen(command)
    return asyncio.run(serve(int(port), sandbox))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
