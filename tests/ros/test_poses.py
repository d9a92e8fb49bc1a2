"""Ego pose and extrinsic from tf or odometry, with tf2's semantics (interpolation, not-yet, never)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from perception4d.core.se3 import SE3
from perception4d.ros.poses import OdometryBuffer, PoseFrames, PoseResolver, TfBuffer, TransformUnavailable

from .helpers import odometry, tf_message, transform_stamped

MOUNT = SE3.from_yaw(0.1, [1.2, 0.0, 1.8])


def pose_at(k: float) -> SE3:
    return SE3.from_yaw(0.05 * k, [2.0 * k, 0.5 * k, 0.0])


def tf_with_track(stamps=(0, 100, 200)) -> TfBuffer:
    tf = TfBuffer()
    tf.add_message(tf_message(transform_stamped(0, "base_link", "lidar", MOUNT)), static=True)
    for k, s in enumerate(stamps):
        tf.add_message(tf_message(transform_stamped(s, "odom", "base_link", pose_at(k))), static=False)
    return tf


def exact(pose: SE3) -> SE3:
    return SE3.from_quaternion(*pose.quaternion(), pose.translation)


def test_sample_at_the_stamp_comes_back_bit_for_bit_and_chains_compose():
    tf = tf_with_track()
    got = tf.lookup("odom", "base_link", 100)
    np.testing.assert_array_equal(got.as_matrix(), exact(pose_at(1)).as_matrix())
    np.testing.assert_array_equal(tf.lookup("base_link", "lidar", 12345).as_matrix(), exact(MOUNT).as_matrix())
    chain = tf.lookup("odom", "lidar", 200)
    assert chain.allclose(pose_at(2) @ MOUNT, atol=1e-9)
    inverse = tf.lookup("lidar", "odom", 200)
    assert inverse.allclose((pose_at(2) @ MOUNT).inverse(), atol=1e-9)


def test_interpolation_between_samples():
    tf = tf_with_track()
    mid = tf.lookup("odom", "base_link", 150)
    np.testing.assert_allclose(mid.translation, [3.0, 0.75, 0.0], atol=1e-12)
    assert mid.yaw == pytest.approx(0.075, abs=1e-12)


def test_newer_than_the_newest_sample_is_retry_older_than_the_cache_is_not():
    tf = tf_with_track()
    with pytest.raises(TransformUnavailable) as e:
        tf.lookup("odom", "base_link", 201)
    assert e.value.retry and "after the newest sample" in str(e.value)
    with pytest.raises(TransformUnavailable) as e:
        tf.lookup("odom", "base_link", -5)
    assert not e.value.retry and "before the oldest" in str(e.value)
    with pytest.raises(TransformUnavailable) as e:
        tf.lookup("map", "lidar", 100)
    assert e.value.retry and "frames known" in str(e.value)


def test_cache_depth_drops_old_samples():
    tf = TfBuffer(cache_s=1.0)
    for k in range(5):
        tf.add_message(tf_message(transform_stamped(k * 500_000_000, "odom", "base_link", pose_at(k))), static=False)
    with pytest.raises(TransformUnavailable):
        tf.lookup("odom", "base_link", 0)
    tf.lookup("odom", "base_link", 1_000_000_000)


def test_degenerate_transforms_are_rejected_and_counted():
    tf = TfBuffer()
    bad = transform_stamped(0, "odom", "base_link", pose_at(0))
    bad.transform.rotation.w = bad.transform.rotation.z = 0.0
    nan = transform_stamped(10, "odom", "base_link", pose_at(0))
    nan.transform.translation.x = float("nan")
    assert tf.add_message(tf_message(bad, nan), static=False) == 2 and tf.rejected == 2


def test_lookup_waits_for_a_transform_that_arrives_within_the_timeout():
    tf = tf_with_track()

    def later():
        time.sleep(0.05)
        tf.add_message(tf_message(transform_stamped(300, "odom", "base_link", pose_at(3))), static=False)

    threading.Thread(target=later).start()
    got = tf.lookup("odom", "base_link", 300, timeout_s=5.0)
    np.testing.assert_array_equal(got.as_matrix(), exact(pose_at(3)).as_matrix())
    t0 = time.monotonic()
    with pytest.raises(TransformUnavailable):
        tf.lookup("odom", "base_link", 400, timeout_s=0.05)
    assert time.monotonic() - t0 < 1.0


def test_resolver_with_tf_and_with_odometry():
    tf = tf_with_track()
    resolver = PoseResolver(PoseFrames("tf", "odom", "base_link"), tf)
    pose, extrinsic = resolver.resolve("lidar", 100)
    assert pose.allclose(pose_at(1), atol=1e-12) and extrinsic.allclose(MOUNT, atol=1e-12)
    pose, extrinsic = resolver.resolve("base_link", 100)  # a cloud already in the ego frame
    assert extrinsic.allclose(SE3.identity())

    odom = OdometryBuffer()
    for k, s in enumerate((0, 100, 200)):
        odom.add_message(odometry(s, "odom", "base_link", pose_at(k)))
    via_odom = PoseResolver(PoseFrames("odometry", "odom", "base_link"), tf, odom)
    pose, extrinsic = via_odom.resolve("lidar", 200)
    np.testing.assert_array_equal(pose.as_matrix(), exact(pose_at(2)).as_matrix())
    wrong_child = PoseResolver(PoseFrames("odometry", "odom", "chassis"), tf, odom)
    with pytest.raises(TransformUnavailable, match="child_frame_id is 'base_link'"):
        wrong_child.resolve("lidar", 200)
    with pytest.raises(TransformUnavailable) as e:
        via_odom.resolve("lidar", 250)
    assert e.value.retry
