"""The GR00T policy server's wire protocol (Isaac-GR00T ``gr00t/eval/service.py`` for N1.5,
``gr00t/policy/server_client.py`` for N1.6), written from its documented behaviour.

Transport: ZeroMQ REQ/REP, one msgpack frame per message. A request is
``{"endpoint": str, "data": ..., "api_token": str}`` (``data`` only for endpoints that take input,
``api_token`` only when set); a failed request is answered ``{"error": msg}``. numpy arrays travel
as ``{"__ndarray_class__": True, "as_npy": <np.save bytes>}`` and modality configs as
``{"__ModalityConfig_class__": True, "as_json": ...}`` (a JSON string in N1.5, a plain map in N1.6).

Why decoding is strict: the reply comes from another machine. Arrays are loaded with
``allow_pickle=False`` (an object array, i.e. a pickle, is refused, never executed); anything that
is not one msgpack value, or whose arrays do not have the shapes the modality map declares, is a
:class:`ProtocolError` naming what was wrong, so the caller can report it and drop the reply.

The two versions differ only in how an observation and an action chunk are laid out:

=========  ==========================================================  ===============================
version    observation (``get_action`` data)                           reply
=========  ==========================================================  ===============================
n1.5       flat: ``video.<cam>`` uint8 (T,H,W,3), ``state.<g>`` (T,D),  ``{"action.<g>": (K, D)}``
           ``<language key>``: [instruction]
n1.6       ``{"observation": {"video": {cam: (B,T,H,W,3)},              ``[{<g>: (B, K, D)}, info]``
           "state": {g: (B,T,D)}, "language": {key: [[instr]]}},
           "options": None}``
=========  ==========================================================  ===============================

Here B = T = 1: one robot, the latest frame (see :func:`observation_horizon_problem`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

__all__ = [
    "PROTOCOLS", "N15", "N16", "ProtocolError", "ServerError", "ModalityConfig",
    "encode", "decode", "make_request", "check_reply", "encode_modality_configs", "parse_modality_configs",
    "detect_version", "observation_horizon_problem", "action_horizon", "observation_payload",
    "parse_observation", "action_payload", "parse_action",
]

N15, N16 = "n1.5", "n1.6"
PROTOCOLS = (N15, N16)
NDARRAY_TAG = "__ndarray_class__"
MODALITY_TAG = "__ModalityConfig_class__"
PING_REPLY = {"status": "ok", "message": "Server is running"}
MODALITIES = ("video", "state", "action", "language")


class ProtocolError(ValueError):
    """A reply that does not follow the protocol: undecodable, pickled, or the wrong keys/shapes."""


class ServerError(RuntimeError):
    """The server answered ``{"error": msg}`` (e.g. a bad observation or an invalid API token)."""


@dataclass(frozen=True)
class ModalityConfig:
    """What the server samples for one modality: time offsets (``delta_indices``, in dataset steps)
    and the keys. ``len(delta_indices)`` of the action modality is the chunk length."""

    delta_indices: tuple[int, ...]
    modality_keys: tuple[str, ...]


# --------------------------------------------------------------------------- codec


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError("object arrays cannot be sent: np.save would pickle them")
        buf = io.BytesIO()
        np.save(buf, obj, allow_pickle=False)
        return {NDARRAY_TAG: True, "as_npy": buf.getvalue()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def encode(obj: Any) -> bytes:
    """One msgpack frame; ndarrays as tagged ``np.save`` bytes (never pickled)."""
    return msgpack.packb(obj, default=_encode_default, use_bin_type=True)


def _load_array(obj: dict) -> np.ndarray:
    payload = obj.get("as_npy")
    if not isinstance(payload, bytes):
        raise ProtocolError(f"array payload 'as_npy' is {type(payload).__name__}, expected bytes")
    try:
        arr = np.load(io.BytesIO(payload), allow_pickle=False)
    except ValueError as exc:  # numpy refuses object arrays without allow_pickle
        raise ProtocolError(f"refused an array that needs unpickling ({exc})") from None
    except Exception as exc:  # truncated or foreign bytes
        raise ProtocolError(f"array payload is not .npy data ({type(exc).__name__}: {exc})") from None
    if not isinstance(arr, np.ndarray):  # np.load also opens .npz archives
        raise ProtocolError(f"array payload is a {type(arr).__name__}, not one .npy array")
    return arr


def _load_modality_config(obj: dict) -> ModalityConfig:
    raw = obj.get("as_json")
    if isinstance(raw, str):  # N1.5: pydantic model_dump_json()
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ProtocolError(f"modality config 'as_json' is not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ProtocolError(f"modality config 'as_json' is {type(raw).__name__}, expected a JSON object")
    delta, keys = raw.get("delta_indices"), raw.get("modality_keys")
    if not (isinstance(delta, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in delta)):
        raise ProtocolError(f"modality config delta_indices must be a list of integers, got {delta!r}")
    if not (isinstance(keys, list) and keys and all(isinstance(k, str) for k in keys)):
        raise ProtocolError(f"modality config modality_keys must be a non-empty list of strings, got {keys!r}")
    return ModalityConfig(tuple(delta), tuple(keys))


def _decode_hook(obj: dict) -> Any:
    if obj.get(NDARRAY_TAG) is True:
        return _load_array(obj)
    if obj.get(MODALITY_TAG) is True:
        return _load_modality_config(obj)
    return obj


def decode(frame: bytes) -> Any:
    """One msgpack frame -> Python values with arrays restored; ProtocolError if it is anything else
    (a pickle, two frames glued together, a truncated frame)."""
    try:
        return msgpack.unpackb(frame, object_hook=_decode_hook, raw=False)
    except ProtocolError:
        raise
    except msgpack.ExtraData:
        raise ProtocolError(f"reply is not one msgpack value ({len(frame)} bytes; a pickle?)") from None
    except Exception as exc:
        raise ProtocolError(f"reply is not valid msgpack ({type(exc).__name__}: {exc})") from None


def make_request(endpoint: str, data: Any = None, api_token: str = "", requires_input: bool = True) -> dict:
    request: dict[str, Any] = {"endpoint": endpoint}
    if requires_input:
        request["data"] = data
    if api_token:
        request["api_token"] = api_token
    return request


def check_reply(reply: Any) -> Any:
    """Raise ServerError for an error reply (``{"error": msg}``); otherwise return the reply."""
    if isinstance(reply, dict) and "error" in reply:
        raise ServerError(str(reply["error"]))
    return reply


# --------------------------------------------------------------------------- modality configs


def encode_modality_configs(configs: Mapping[str, ModalityConfig], version: str) -> dict:
    """How a server of ``version`` sends its ``get_modality_config`` reply (used by the stand-in)."""
    out = {}
    for name, cfg in configs.items():
        body = {"delta_indices": list(cfg.delta_indices), "modality_keys": list(cfg.modality_keys)}
        out[name] = {MODALITY_TAG: True, "as_json": json.dumps(body) if version == N15 else body}
    return out


def parse_modality_configs(reply: Any) -> dict[str, ModalityConfig]:
    """``get_modality_config`` reply -> {modality: ModalityConfig}; ProtocolError if malformed."""
    if not isinstance(reply, dict):
        raise ProtocolError(f"modality config reply is {type(reply).__name__}, expected a map")
    bad = [k for k, v in reply.items() if not isinstance(v, ModalityConfig)]
    if bad:
        raise ProtocolError(f"modality config reply: {bad[0]!r} is not a ModalityConfig")
    return dict(reply)


def detect_version(configs: Mapping[str, ModalityConfig]) -> str:
    """N1.5 keys carry their modality prefix (``action.left_arm``), N1.6 keys do not (``left_arm``)."""
    action = configs.get("action")
    if action is None:
        raise ProtocolError("the server's modality config has no 'action' modality: cannot tell "
                            "n1.5 from n1.6 (set protocol explicitly)")
    prefixed = [k.startswith("action.") for k in action.modality_keys]
    if all(prefixed):
        return N15
    if not any(prefixed):
        return N16
    raise ProtocolError(f"action keys mix prefixed and bare names: {list(action.modality_keys)}")


def observation_horizon_problem(configs: Mapping[str, ModalityConfig]) -> str:
    """'' when the server wants one frame of video and state (what this client sends), else why not."""
    for name in ("video", "state"):
        cfg = configs.get(name)
        if cfg is not None and len(cfg.delta_indices) != 1:
            return (f"the server wants {len(cfg.delta_indices)} {name} frames (delta_indices "
                    f"{list(cfg.delta_indices)}); this client sends the latest one only")
    return ""


def action_horizon(configs: Mapping[str, ModalityConfig]) -> int | None:
    action = configs.get("action")
    return len(action.delta_indices) if action is not None and action.delta_indices else None


# --------------------------------------------------------------------------- observations


def observation_payload(version: str, video: Mapping[str, np.ndarray], state: Mapping[str, np.ndarray],
                        language_key: str, instruction: str) -> Any:
    """``get_action`` data for one observation: ``video[cam]`` (H, W, 3) uint8, ``state[g]`` (D,)."""
    if version == N15:
        data: dict[str, Any] = {f"video.{k}": np.asarray(v, dtype=np.uint8)[None] for k, v in video.items()}
        data.update({f"state.{k}": np.asarray(v, dtype=np.float32)[None] for k, v in state.items()})
        data[language_key] = [instruction]
        return data
    if version == N16:
        return {"observation": {
            "video": {k: np.asarray(v, dtype=np.uint8)[None, None] for k, v in video.items()},
            "state": {k: np.asarray(v, dtype=np.float32)[None, None] for k, v in state.items()},
            "language": {language_key: [[instruction]]},
        }, "options": None}
    raise ValueError(f"unknown protocol {version!r}; choose one of {', '.join(PROTOCOLS)}")


def _strip(arr: Any, lead: int, what: str, trailing_ndim: int) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise ProtocolError(f"{what} is {type(arr).__name__}, expected an array")
    want = lead + trailing_ndim
    if arr.ndim != want or arr.shape[:lead] != (1,) * lead:
        raise ProtocolError(f"{what} has shape {arr.shape}, expected {(1,) * lead + ('...',) * trailing_ndim}")
    return arr.reshape(arr.shape[lead:])


def parse_observation(version: str, data: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, str]]:
    """Server side of :func:`observation_payload` (the stand-in): (video, state, language) for one robot."""
    if not isinstance(data, dict):
        raise ProtocolError(f"observation is {type(data).__name__}, expected a map")
    video, state, language = {}, {}, {}
    if version == N15:
        for key, value in data.items():
            if key.startswith("video."):
                video[key[6:]] = _strip(value, 1, key, 3)
            elif key.startswith("state."):
                state[key[6:]] = _strip(value, 1, key, 1)
            elif isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
                language[key] = value[0]
        return video, state, language
    obs = data.get("observation")
    if not isinstance(obs, dict):
        raise ProtocolError("N1.6 get_action data must be {'observation': {...}, 'options': ...}")
    for key, value in (obs.get("video") or {}).items():
        video[key] = _strip(value, 2, f"video {key}", 3)
    for key, value in (obs.get("state") or {}).items():
        state[key] = _strip(value, 2, f"state {key}", 1)
    for key, value in (obs.get("language") or {}).items():
        if not (isinstance(value, list) and len(value) == 1 and isinstance(value[0], list)
                and len(value[0]) == 1 and isinstance(value[0][0], str)):
            raise ProtocolError(f"language {key} must be [[str]], got {value!r}")
        language[key] = value[0][0]
    return video, state, language


# --------------------------------------------------------------------------- actions


def action_payload(version: str, actions: Mapping[str, np.ndarray]) -> Any:
    """Server side of :func:`parse_action`: ``actions[g]`` (K, D) as a server of ``version`` replies."""
    if version == N15:
        return {f"action.{k}": np.asarray(v, dtype=np.float32) for k, v in actions.items()}
    return [{k: np.asarray(v, dtype=np.float32)[None] for k, v in actions.items()}, {}]


def parse_action(version: str, reply: Any, groups: Mapping[str, int], horizon: int | None = None
                 ) -> dict[str, np.ndarray]:
    """A ``get_action`` reply -> ``{group: (K, D) float64}`` for the declared ``groups`` (name -> D).

    Every declared group must be present with D columns, the same K >= 1 in all of them (equal to
    ``horizon`` when given), real numbers and finite. Extra groups are ignored (a server may
    drive more of the robot than the map declares).
    """
    if version == N15:
        if not isinstance(reply, dict):
            raise ProtocolError(f"N1.5 action reply is {type(reply).__name__}, expected a map of action.<group>")
        found, lead, prefix = reply, 0, "action."
    elif version == N16:
        if not (isinstance(reply, list) and len(reply) == 2 and isinstance(reply[0], dict)):
            raise ProtocolError(f"N1.6 action reply must be [action_map, info], got {type(reply).__name__}"
                                + (f" of {len(reply)}" if isinstance(reply, list) else ""))
        found, lead, prefix = reply[0], 1, ""
    else:
        raise ValueError(f"unknown protocol {version!r}; choose one of {', '.join(PROTOCOLS)}")
    out: dict[str, np.ndarray] = {}
    k_seen = None
    for group, dim in groups.items():
        key = prefix + group
        if key not in found:
            raise ProtocolError(f"action reply lacks {key!r} (has {sorted(map(str, found))})")
        arr = _strip(found[key], lead, key, 2)
        if arr.dtype.kind not in "fiu":
            raise ProtocolError(f"{key} has dtype {arr.dtype}, expected numbers")
        if arr.shape[1] != dim or arr.shape[0] < 1:
            raise ProtocolError(f"{key} has shape {arr.shape}, expected (K, {dim})")
        if k_seen is not None and arr.shape[0] != k_seen:
            raise ProtocolError(f"{key} has {arr.shape[0]} steps, other groups {k_seen}")
        k_seen = arr.shape[0]
        values = arr.astype(np.float64)
        if not np.isfinite(values).all():
            raise ProtocolError(f"{key} has non-finite values")
        out[group] = values
    if horizon is not None and k_seen is not None and k_seen != horizon:
        raise ProtocolError(f"action chunk has {k_seen} steps, the modality config says {horizon}")
    return out
