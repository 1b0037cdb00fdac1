"""A minimal QMP client: one connection per command, over the VM's unix socket."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any


class QmpError(Exception):
    pass


async def qmp_command(sock: Path, command: str, arguments: dict[str, Any] | None = None,
                      wait: float = 5.0) -> Any:
    """Negotiate capabilities, run one command, return its "return" value. Events in between are skipped."""
    async with asyncio.timeout(wait):
        try:
            reader, writer = await asyncio.open_unix_connection(str(sock))
        except OSError as exc:
            raise QmpError(f"cannot connect to {sock}: {exc.strerror or exc}") from exc
        try:
            greeting = await _read(reader)
            if "QMP" not in greeting:
                raise QmpError("not a QMP greeting")
            await _exec(reader, writer, "qmp_capabilities", None)
            return await _exec(reader, writer, command, arguments)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


async def _exec(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, command: str,
                arguments: dict[str, Any] | None) -> Any:
    msg: dict[str, Any] = {"execute": command}
    if arguments:
        msg["arguments"] = arguments
    writer.write(json.dumps(msg).encode() + b"\n")
    await writer.drain()
    while True:
        reply = await _read(reader)
        if "return" in reply:
            return reply["return"]
        if "error" in reply:
            raise QmpError(f"{command}: {reply['error'].get('desc', reply['error'])}")
        # {"event": ...}: asynchronous notification, not our answer


async def _read(reader: asyncio.StreamReader) -> dict[str, Any]:
    line = await reader.readline()
    if not line:
        raise QmpError("QMP connection closed")
    value = json.loads(line)
    if not isinstance(value, dict):
        raise QmpError("unexpected QMP message")
    return value
