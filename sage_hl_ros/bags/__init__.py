"""Bags (pure: no rclpy). rosbag2 directories, MCAP by default, sqlite3 as an option.

- ``recording``: the bag writer the recorder node uses (splits, flushes, episode bookkeeping),
  crash repair (``repair_bag``: also drops chunks that fail their CRC), episode-marker parsing,
  which topics replay must not republish (``replay_hazard``).
- ``verify``: reads every storage file (MCAP chunk CRCs and summary, sqlite3 ``quick_check``)
  before a command uses a bag; problems name the storage file.
- ``info``: a bag's summary (topics, types, counts, duration, episodes).
- ``dataset``: bags -> aligned training samples.

Nothing is imported here, so ``import sage_hl_ros.bags.info`` stays cheap.
"""
