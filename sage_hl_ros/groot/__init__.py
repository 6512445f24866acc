"""GR00T (NVIDIA Isaac-GR00T N1.5 / N1.6) as a teacher: the policy server's wire protocol, a ZMQ client
with timeouts, the modality map from ROS joints and cameras to GR00T keys, and a protocol stand-in.

GR00T is a vision-language-action *policy*: given an observation it returns a chunk of future
actions. It offers no world-model endpoint, and nothing here claims one.

Pure: no rclpy (the ROS side is ``sage_hl_ros.ros.groot_teacher_node``).
"""
