"""Shared test set-up: pinned threads (2 cores: oversubscription gives 100x latency spikes), own DDS domain."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"

# Before any test module is imported: this run's own DDS domain, reserved machine-wide, so two
# suites (or a suite and the fuzz benchmark) at once never see each other's topics.
from sage_hl_ros.tools.ros_domain import isolate_ros_graph  # noqa: E402

isolate_ros_graph(keep_existing=False)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from sage_hl_ros.core.config import SageConfig  # noqa: E402


def small_config(**model) -> SageConfig:
    """The default architecture on 32x32 images: same code paths, a fraction of the compute."""
    return SageConfig.from_dict({
        "observation": {"image_height_px": 32, "image_width_px": 32, "depth_height_px": 32, "depth_width_px": 32,
                        "audio_window_samples": 1024},
        "model": model,
    })


@pytest.fixture
def small_cfg() -> SageConfig:
    return small_config()
