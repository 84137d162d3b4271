"""One open SSH connection to one host, on paramiko directly: run a command, write a file, close.

Every step of a rollout and every host of `fab exec` goes through `HostConnection.run`. It was Fabric's
`Connection.run` (an invoke Runner: a Config lookup chain, two output threads and a timer thread per
command); profiled at 50 hosts that machinery cost more client CPU than paramiko's own handshake
(issue 17). Here a command is one session channel read in the calling thread: both output streams
are drained as they arrive (a full stderr can never stall stdout), and the wait is a select() on the
channel, woken by data and by the channel's close.
"""

from __future__ import annotations

import select
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import paramiko

CHUNK = 32768
# a select() that was not woken re-checks the channel this often: the exit status and the end of the
# output arrive without data (the close that follows them wakes the wait at once in practice)
WAIT_SLICE = 0.2
# stdin larger than this is written from its own thread, so a command that answers while it reads
# (and fills the SSH window) cannot deadlock against our write
STDIN_INLINE = 256 * 1024


@dataclass(frozen=True)
class CommandResult:
    """What a remote command did: its exit code (-1 when it ended without one, e.g. by a signal) and
    its whole output, decoded as UTF-8 (undecodable bytes replaced)."""

    exited: int
    stdout: str
    stderr: str


class CommandTimedOut(Exception):
    """The command did not finish within its timeout; its channel was closed (sshd then ends it)."""

    def __init__(self, script: str, timeout: float) -> None:
        self.script = script
        self.timeout = timeout
        super().__init__(f"command did not finish within {timeout:g} s (its channel was closed)")


class HostConnection:
    """An authenticated paramiko client and, once asked for, its SFTP session."""

    def __init__(self, client: paramiko.SSHClient) -> None:
        self.client = client
        self._sftp: paramiko.SFTPClient | None = None

    @property
    def transport(self) -> paramiko.Transport:
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise EOFError("the SSH connection is closed")
        return transport

    def run(self, script: str, *, timeout: float | None = None, stdin: str | None = None) -> CommandResult:
        """Run `script` through the remote user's shell; never raises on a non-zero exit.

        Raises CommandTimedOut past `timeout`, and paramiko/OS errors when the connection breaks."""
        chan = self.transport.open_session(timeout=timeout)
        try:
            return _drive(chan, script, timeout, stdin)
        finally:
            chan.close()

    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = self.client.open_sftp()
        return self._sftp

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        self.client.close()


def _drive(chan: paramiko.Channel, script: str, timeout: float | None, stdin: str | None) -> CommandResult:
    deadline = None if timeout is None else time.monotonic() + timeout
    chan.exec_command(script)
    writer = _feed(chan, stdin)
    out: list[bytes] = []
    err: list[bytes] = []
    while True:
        while chan.recv_ready():
            out.append(chan.recv(CHUNK))
        while chan.recv_stderr_ready():
            err.append(chan.recv_stderr(CHUNK))
        # done when the command has exited AND its output has ended: sshd may send the exit status
        # while output is still on its way (a background child holding stdout open writes later)
        ended = chan.eof_received or chan.closed
        if ended and chan.exit_status_ready() and not (chan.recv_ready() or chan.recv_stderr_ready()):
            break
        wait = WAIT_SLICE
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                chan.close()
                raise CommandTimedOut(script, float(timeout or 0))
            wait = min(wait, left)
        select.select([chan], [], [], wait)
    if writer is not None:
        writer.join(5)
    transport = chan.get_transport()
    if chan.exit_status == -1 and (transport is None or not transport.is_active()):
        # no exit status because the connection itself went away, not the command: the runner reports
        # the host unreachable (the command may or may not have run to its end)
        raise EOFError("the SSH connection closed before the command reported its exit status")
    return CommandResult(
        exited=chan.recv_exit_status(),
        stdout=b"".join(out).decode("utf-8", "replace"),
        stderr=b"".join(err).decode("utf-8", "replace"),
    )


def _feed(chan: paramiko.Channel, stdin: str | None) -> threading.Thread | None:
    """Send `stdin` and end it (EOF); with none, the command's stdin is closed at once."""
    if stdin is None:
        chan.shutdown_write()
        return None
    data = stdin.encode()

    def write() -> None:
        try:
            chan.sendall(data)
            chan.shutdown_write()
        except OSError:
            pass  # the command ended (or the channel closed) before it read everything

    if len(data) <= STDIN_INLINE:
        write()
        return None
    thread = threading.Thread(target=write, name="ssh-stdin", daemon=True)
    thread.start()
    return thread
