"""Bags (pure: no rclpy). rosbag2 directories, MCAP by default, sqlite3 as an option.

- ``recording``: the bag writer the recorder node uses (splits, flushes, episode bookkeeping),
  crash repair (``repair_bag``), episode-marker parsing.
- ``info``: a bag's summary (topics, types, counts, duration, episodes).
- ``dataset``: bags -> aligned training samples.

Nothing is imported here, so ``import sage_hl_ros.bags.info`` stays cheap.
"""
