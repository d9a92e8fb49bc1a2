"""ROS 2 integration without rclpy: message conversion, the node's logic and bag replay.

* ``pointcloud2``: ``sensor_msgs/msg/PointCloud2`` <-> numpy (offsets, byte
  order, padding, ``point_step``, ``row_step``, ``is_dense``);
* ``messages``: message factories (rosbags dataclasses, rclpy classes) and
  the builders of the output messages;
* ``poses``: ego pose from tf or odometry, sensor extrinsic from tf;
* ``outputs``: the annotated cloud (flow, moving probability) and occupied
  voxels from the runtime's results;
* ``core``: ``StreamCore``, the node's logic (keep-newest mailbox, counters,
  diagnostics), driven by the live node (ros_nodes/perception4d_ros) and by
* ``replay``: ``p4d ros-replay`` over rosbag2 files with the ``rosbags`` library.

None of these modules imports rclpy; the live node does, lazily.
"""
