"""Bags (pure: no rclpy). rosbag2 directories, MCAP by default, sqlite3 as an option.

- ``bag_writer``: the bag writer the recorder node uses (splits, flushes, episode bookkeeping), on
  ``mcap_writer`` / ``sqlite_writer`` (one storage file each), ``metadata`` (metadata.yaml),
  ``message_definitions`` and ``qos``; ``repair``: crash repair (``repair_bag``: also drops chunks
  that fail their CRC); ``episodes``: episode-marker parsing; ``topics``: the runtime's topics and
  which ones replay must not republish (``replay_hazard``); ``layout``: a bag's storage files;
  ``mcap_scan``: MCAP files read record by record.
- ``verify``: reads every storage file (MCAP chunk CRCs and summary, sqlite3 ``quick_check``)
  before a command uses a bag; problems name the storage file.
- ``info``: a bag's summary (topics, types, counts, duration, episodes).
- ``dataset``: bags -> aligned training samples.

Nothing is imported here, so ``import sage_hl_ros.bags.info`` stays cheap.
"""
