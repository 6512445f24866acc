"""Command-line tools that orchestrate processes (bring-up, demo); no rclpy import here."""
