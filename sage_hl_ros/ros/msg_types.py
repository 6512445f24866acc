"""Message classes by type name (``pkg/msg/Type``), shared by the nodes that handle any type.

The recorder subscribes and the replayer publishes whatever types a graph or a bag holds; both
need the installed Python class for a type string. A node module never imports another node
module, so this lives here.
"""

from __future__ import annotations

import importlib

__all__ = ["message_class"]


def message_class(msgtype: str):
    """Python class of ``pkg/msg/Type`` (or ``pkg/Type``); raises ValueError if not importable."""
    parts = msgtype.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"bad message type {msgtype!r} (expected pkg/msg/Type)")
    try:
        from rosidl_runtime_py.utilities import get_message  # type: ignore[import-not-found]

        return get_message("/".join(parts))
    except ImportError:
        pass
    except (AttributeError, ModuleNotFoundError, ValueError) as exc:
        raise ValueError(f"message type {msgtype!r} is not installed: {exc}") from exc
    try:
        return getattr(importlib.import_module(f"{parts[0]}.{parts[1]}"), parts[2])
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"message type {msgtype!r} is not installed: {exc}") from exc
