# SPDX-License-Identifier: Apache-2.0
"""Checks of command-line values that run before anything heavy is imported or loaded.

Everything here is standard library only: a wrong `--top-p`, a missing `--model` file or a busy
`--port` must cost milliseconds, not the seconds it takes to import torch and load a model.
Each check raises UsageError (exit 2, one line); the checks mirror the ones in the generation
and serving code, which still validate for library callers.
"""

from __future__ import annotations

import argparse
import errno
import socket

from .common import UsageError


def check_model_path(value: str | None, option: str = "--model") -> None:
    """`--model` must name a local file or folder, or a hub repo id in the local HF cache
    (io.hub.resolve_model: torch-free, and an id never downloaded fails without even importing
    huggingface_hub). `default` is the command's own embedded model."""
    if value is None or value == "default":
        return
    from ..io.errors import CheckpointError
    from ..io.hub import resolve_model

    try:
        resolve_model(value)
    except CheckpointError as e:
        raise UsageError(f"{option} {e}") from None


def check_threads(value: int | None) -> None:
    if value is not None and value < 1:
        raise UsageError(f"--threads must be >= 1, got {value}")


def check_port(host: str, port: int) -> None:
    """The port must be in range and free on `host`: bind it once and release it at once, so a
    busy port is reported before the model loads rather than by uvicorn after it."""
    if not 1 <= port <= 65535:
        raise UsageError(f"--port must be in [1, 65535], got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn picks it
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: cannot resolve ({e.strerror})") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        # as uvicorn binds: SO_REUSEADDR lets a port in TIME_WAIT be reused, not one in use
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UsageError(f"--port {port}: address {host}:{port} is already in use") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise UsageError(f"--host {host}: not an address of this machine") from None
            if e.errno == errno.EACCES:
                raise UsageError(f"--port {port}: permission denied (ports below 1024 need privileges)") from None
            raise UsageError(f"--port {port}: cannot bind {host}:{port} ({e.strerror})") from None


def check_model_args(args: argparse.Namespace) -> None:
    """What every command built with `add_model_args` can check without loading anything."""
    check_model_path(getattr(args, "model", None))
    check_threads(getattr(args, "threads", None))
