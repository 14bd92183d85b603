"""A confined model's front door: 127.0.0.1:PORT on the host, forwarded to the model's Unix socket.

`python relay.py PORT SOCKET -- COMMAND...` starts COMMAND (the sandbox) and forwards every TCP
connection on 127.0.0.1:PORT to SOCKET inside it, byte for byte, reached as /proc/PID/root/SOCKET
through the sandbox's first process (bwrap's init, PID's root is the sandbox's root). The sandbox has
no network at all (its own empty network namespace) and no writable folder shared with the host, so
this port is the only way in and there is no way out. It exits with the sandbox, after one line saying
how the sandbox ended (an exit code, or the signal and the limit that sent it); SIGTERM stops the
sandbox first. Standalone on purpose (no package imports): hosting runs it with its own interpreter,
by path.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

# Signals a resource limit sends, as the line the log ends with says them.
LIMIT_SIGNALS = {
    signal.SIGXCPU: "its CPU time limit",
    signal.SIGXFSZ: "its file size limit",
    signal.SIGKILL: "its CPU time hard limit, or stopped",
}


def sandbox_root(pid: int) -> str:
    """/proc/N/root of the sandbox's first process (a child of bwrap, in the sandbox's mount namespace)."""
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        first = children.read().split()
    if not first:
        raise OSError("the sandbox has not started")
    return f"/proc/{first[0]}/root"


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def forwarder(sandbox: subprocess.Popen, socket: str):
    async def forward(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            model_reader, model_writer = await asyncio.open_unix_connection(sandbox_root(sandbox.pid) + socket)
        except OSError:  # not listening yet (loading) or gone: the caller sees UNAVAILABLE and retries
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, model_writer), pipe(model_reader, client_writer))

    return forward


def ending(code: int) -> str:
    """How the sandbox ended, from bwrap's exit status (128 + N when its command died of signal N)."""
    if code < 0:
        return f"model sandbox stopped by {signal.Signals(-code).name}"
    if code > 128 and code - 128 in signal.valid_signals():
        number = signal.Signals(code - 128)
        return f"model sandbox killed by {number.name}" + (
            f" ({LIMIT_SIGNALS[number]})" if number in LIMIT_SIGNALS else ""
        )
    return f"model sandbox exited with code {code}"


async def serve(port: int, socket: str, sandbox: subprocess.Popen) -> int:
    server = await asyncio.start_server(forwarder(sandbox, socket), "127.0.0.1", port)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, sandbox.kill)
    loop.add_signal_handler(signal.SIGINT, sandbox.kill)
    code = await loop.run_in_executor(None, sandbox.wait)
    server.close()
    print(ending(code), flush=True)
    return code


def main(argv: list[str]) -> int:
    port, socket, separator, *command = argv
    assert separator == "--" and command, "usage: relay.py PORT SOCKET -- COMMAND..."
    sandbox = subprocess.Popen(command)
    return asyncio.run(serve(int(port), socket, sandbox))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
