"""SAGE V2 H<->L controller for ROS 2.

Layout: ``core`` (pure models and configs), ``safety`` (pure command safety),
``bags`` / ``training`` (offline learning), ``ros`` (thin rclpy nodes; the only rclpy importer).
"""

__version__ = "0.1.0"
