"""Bags (pure: no rclpy). rosbag2 directories, MCAP by default, sqlite3 as an option.

Writing (the recorder node):
- ``bag_writer``: the bag writer (splits, flushes, episode bookkeeping), on ``mcap_writer`` /
  ``sqlite_writer`` (one storage file each), ``metadata`` (metadata.yaml), ``message_definitions``
  and ``qos`` (what each connection records).
- ``repair``: crash repair (``repair_bag``: also drops chunks that fail their CRC).

Shared by writers and readers:
- ``topics``: the runtime's topics and which ones replay must not republish (``replay_hazard``).
- ``episodes``: episode-marker parsing and tracking.
- ``layout``: a bag's storage files, and which bags a list of paths names.
- ``mcap_format``: MCAP opcodes; ``errors``: ``BagError``.

Reading:
- ``mcap_scan``: MCAP files record by record (summary, intact chunks, bad chunks).
- ``verify``: reads every storage file (MCAP chunk CRCs and summary, sqlite3 ``quick_check``)
  before a command uses a bag; problems name the storage file.
- ``info``: a bag's summary (topics, types, counts, duration, episodes).
- ``bag_dataset``: bags -> aligned training samples, configured by ``dataset_config``, split by
  ``splits``, with ``normalizer_stats``; ``npz_export`` writes them as .npz shards.

Nothing is imported here, so ``import sage_hl_ros.bags.info`` stays cheap.
"""
