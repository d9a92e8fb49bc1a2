"""ROS 2 package of the perception4d node; the logic lives in ``perception4d.ros`` (no rclpy there)."""
