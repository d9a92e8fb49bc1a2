"""The live perception node: rclpy subscriptions, publishers and threads around ``StreamCore``.

Everything that decides something lives in ``perception4d.ros`` (decoding,
poses, the keep-newest mailbox, the outputs, the counters and diagnostics) and
is exercised without ROS by ``p4d ros-replay`` and the package's tests; this
module only connects it to rclpy:

* the cloud subscription uses the sensor-data QoS (best effort, keep last 1);
  its callback only hands the message to the mailbox (``StreamCore.offer``),
  so the executor never blocks on the network;
* one worker thread takes the newest cloud (``process_next``), runs the
  predictor and publishes the outputs. A cloud that arrives while the worker
  is busy replaces the waiting one (counted): old frames are skipped, never
  queued;
* poses come from tf2 (``tf2_ros.Buffer.lookup_transform`` at the cloud's
  stamp, waiting up to ``tf_timeout_s`` in the worker thread while the
  executor keeps receiving ``/tf``) or from an odometry topic;
* outputs are published reliable, keep last 1 (they match reliable and
  best-effort subscribers); diagnostics on a timer.

rclpy and the ROS message packages are imported when the node starts, never
at import time of the ``perception4d`` package.
"""

from __future__ import annotations

import threading
import traceback
from dataclasses import MISSING, fields


class Tf2Transforms:
    """``lookup(target, source, stamp_ns, timeout_s) -> SE3`` through a tf2_ros buffer and listener."""

    def __init__(self, node):
        from tf2_ros import Buffer, TransformListener

        self.buffer = Buffer()
        self.listener = TransformListener(self.buffer, node)

    def lookup(self, target: str, source: str, stamp: int, timeout_s: float = 0.0):
        import tf2_ros
        from rclpy.duration import Duration
        from rclpy.time import Time

        from perception4d.ros.messages import transform_se3
        from perception4d.ros.poses import TransformUnavailable

        try:
            ts = self.buffer.lookup_transform(target.lstrip("/"), source.lstrip("/"), Time(nanoseconds=int(stamp)),
                                              timeout=Duration(nanoseconds=int(timeout_s * 1e9)))
        except tf2_ros.TransformException as exc:
            raise TransformUnavailable(f"tf2: {exc}") from None
        try:
            return transform_se3(ts.transform)
        except ValueError as exc:
            raise TransformUnavailable(f"tf2 transform {target} <- {source}: {exc}") from None


def read_parameters(node):
    """Declare every ``NodeParams`` field as a ROS parameter (its default as the value) and read them back."""
    from rclpy.exceptions import ParameterUninitializedException
    from rclpy.parameter import Parameter

    from perception4d.ros.params import NodeParams

    values = {}
    for f in fields(NodeParams):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if isinstance(default, list) and not default:  # an empty list has no ROS type: declare the type
            node.declare_parameter(f.name, Parameter.Type.STRING_ARRAY)
        else:
            node.declare_parameter(f.name, default)
        try:
            values[f.name] = node.get_parameter(f.name).value
        except ParameterUninitializedException:
            values[f.name] = default
    return NodeParams.from_mapping(values, f"node {node.get_fully_qualified_name()} parameters")


class PerceptionNode:
    """The node's ROS plumbing (see the module docstring); ``node`` is an ``rclpy.node.Node``."""

    def __init__(self, node):
        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import Odometry
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import PointCloud2
        from visualization_msgs.msg import MarkerArray

        from perception4d.ros.core import StreamCore, build_predictor
        from perception4d.ros.messages import RclpyMessages
        from perception4d.ros.poses import OdometryBuffer, PoseResolver

        self.node = node
        self.log = node.get_logger()
        self.params = p = read_parameters(node)
        self.predictor = build_predictor(p)
        self.odometry = OdometryBuffer() if p.pose_source == "odometry" else None
        poses = PoseResolver(p.frames, Tf2Transforms(node), self.odometry)
        self.core = StreamCore(p, self.predictor, RclpyMessages(), poses)
        sensor_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                                durability=DurabilityPolicy.VOLATILE)
        out_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(PointCloud2, p.cloud_topic, self._on_cloud, sensor_qos)
        if self.odometry is not None:
            # best effort matches reliable and best-effort odometry publishers alike
            node.create_subscription(Odometry, p.odom_topic, self.odometry.add_message,
                                     QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50,
                                                reliability=ReliabilityPolicy.BEST_EFFORT))
        self.publishers = {p.output_cloud_topic: node.create_publisher(PointCloud2, p.output_cloud_topic, out_qos)}
        if "occupancy" in self.core.tasks:
            self.publishers[p.occupancy_topic] = node.create_publisher(PointCloud2, p.occupancy_topic, out_qos)
            if p.occupancy_markers:
                self.publishers[p.occupancy_markers_topic] = node.create_publisher(
                    MarkerArray, p.occupancy_markers_topic, out_qos)
        self.diagnostics = node.create_publisher(DiagnosticArray, p.diagnostics_topic, 10)
        if p.diagnostics_period_s > 0:
            node.create_timer(p.diagnostics_period_s, self._publish_diagnostics)
        self._stop = threading.Event()
        self.worker = threading.Thread(target=self._work, name="perception4d-worker", daemon=True)
        self.worker.start()
        self.log.info(f"perception4d: {'+'.join(self.core.tasks)} on {p.cloud_topic} -> {p.output_cloud_topic}; "
                      f"pose from {p.pose_source}")

    def _on_cloud(self, msg) -> None:
        self.core.offer(msg, self.node.get_clock().now().nanoseconds)

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                pubs = self.core.process_next(timeout_s=0.1)
            except Exception:  # noqa: BLE001 - a bug in the runtime: say so loudly and stop the node
                self.log.fatal("perception4d worker failed:\n" + traceback.format_exc())
                import rclpy

                rclpy.try_shutdown()
                return
            for pub in pubs or ():
                self.publishers[pub.topic].publish(pub.message)

    def _publish_diagnostics(self) -> None:
        stamp = self.node.get_clock().now().nanoseconds
        self.diagnostics.publish(self.core.diagnostics(stamp).message)

    def close(self) -> None:
        self._stop.set()
        self.worker.join(timeout=5.0)
        try:  # the clouds still waiting for their flow (the context may already be shut down by Ctrl-C)
            for pub in self.core.finish():
                self.publishers[pub.topic].publish(pub.message)
        except Exception as exc:  # noqa: BLE001 - shutting down anyway
            self.log.warning(f"perception4d: last clouds not published: {exc}")
        close = getattr(self.predictor, "close", None)
        if close is not None:
            close()


def main(args=None) -> None:
    import rclpy

    rclpy.init(args=args)
    node = rclpy.create_node("perception4d_node")
    perception = None
    try:
        perception = PerceptionNode(node)
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        if perception is not None:
            perception.close()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
