"""Tell running nodes to load a new checkpoint (the runtime's reload path), from outside them.

For each node: set its ``model_dir`` parameter to the checkpoint directory; the node then loads it
on a worker thread while its loops keep running (context_node / control_node). Used by
``sage-hl-sleep --reload-node``. The only rclpy in the training tools lives here.
"""

from __future__ import annotations

import time


def reload_nodes(model_dir: str, nodes: list[str], timeout_s: float = 20.0) -> dict[str, tuple[bool, str]]:
    """``{node: (accepted, reason)}`` after setting ``model_dir`` on each node (names with or without '/')."""
    import rclpy
    from rcl_interfaces.srv import SetParameters
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    own_context = not rclpy.ok()
    if own_context:
        rclpy.init(args=[])
    node = Node(f"sage_sleep_reload_{int(time.time() * 1000) % 100000}")
    results: dict[str, tuple[bool, str]] = {}
    try:
        for name in nodes:
            fq = name if name.startswith("/") else f"/{name}"
            client = node.create_client(SetParameters, f"{fq}/set_parameters")
            try:
                if not client.wait_for_service(timeout_sec=timeout_s):
                    results[name] = (False, f"no {fq}/set_parameters service within {timeout_s:.0f} s")
                    continue
                request = SetParameters.Request()
                request.parameters = [Parameter("model_dir", value=str(model_dir)).to_parameter_msg()]
                future = client.call_async(request)
                rclpy.spin_until_future_complete(node, future, timeout_sec=timeout_s)
                if not future.done() or future.result() is None:
                    results[name] = (False, f"{fq}: no answer within {timeout_s:.0f} s")
                    continue
                res = future.result().results[0]
                results[name] = (bool(res.successful), res.reason or "reload started")
            finally:
                node.destroy_client(client)
    finally:
        node.destroy_node()
        if own_context:
            rclpy.shutdown()
    return results
