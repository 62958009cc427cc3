"""Messages <-> vectors: observation/action specs, per-stream message codecs, rosbag2 import and export.

No rclpy here: the nodes and the bag tools share these codecs."""
