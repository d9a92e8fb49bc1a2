import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perception4d.core.se3 import SE3

angles = st.floats(-np.pi, np.pi, allow_nan=False)
coords = st.floats(-100, 100, allow_nan=False)


def _pose(yaw, pitch, roll, t):
    from pyquaternion import Quaternion

    q = Quaternion(axis=[0, 0, 1], angle=yaw) * Quaternion(axis=[0, 1, 0], angle=pitch) * \
        Quaternion(axis=[1, 0, 0], angle=roll)
    return SE3.from_quaternion(q.w, q.x, q.y, q.z, t)


@settings(max_examples=60, deadline=None)
@given(angles, angles, angles, st.tuples(coords, coords, coords), angles, st.tuples(coords, coords, coords))
def test_inverse_and_composition(yaw, pitch, roll, t, yaw2, t2):
    a = _pose(yaw, pitch, roll, t)
    b = SE3.from_yaw(yaw2, t2)
    assert (a @ a.inverse()).allclose(SE3.identity(), atol=1e-9)
    pts = np.random.default_rng(0).normal(size=(20, 3)) * 10
    np.testing.assert_allclose((a @ b).transform_points(pts), a.transform_points(b.transform_points(pts)),
                               atol=1e-8)
    np.testing.assert_allclose((a @ b).as_matrix(), a.as_matrix() @ b.as_matrix(), atol=1e-9)
    for derived in (a @ b, a.inverse(), (a @ b).inverse() @ a):  # not re-checked, but what the checks accept
        again = SE3(derived.rotation, derived.translation)
        assert derived.rotation.dtype == np.float64 and derived.translation.shape == (3,)
        np.testing.assert_array_equal(again.as_matrix(), derived.as_matrix())
    with pytest.raises(TypeError):
        a @ pts  # products are of transforms only (points: transform_points)


@settings(max_examples=40, deadline=None)
@given(angles, angles, angles, st.tuples(coords, coords, coords))
def test_quaternion_round_trip(yaw, pitch, roll, t):
    a = _pose(yaw, pitch, roll, t)
    b = SE3.from_quaternion(*a.quaternion(), a.translation)
    assert a.allclose(b, atol=1e-9)


def test_float32_points_stay_float32_and_distances_preserved():
    a = SE3.from_yaw(0.3, [1, 2, 3])
    p = np.random.default_rng(1).normal(size=(100, 3)).astype(np.float32)
    q = a.transform_points(p)
    assert q.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(q[1:] - q[:-1], axis=1), np.linalg.norm(p[1:] - p[:-1], axis=1),
                               rtol=1e-5)


def test_rejects_non_rotation_and_nan():
    with pytest.raises(ValueError, match="rotation"):
        SE3(np.diag([1.0, 1.0, -1.0]), np.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        SE3(np.eye(3), np.array([np.nan, 0, 0]))
    with pytest.raises(ValueError, match="3x4 or 4x4"):
        SE3.from_matrix(np.eye(3))


def test_from_matrix_orthonormalize_repairs_text_precision():
    m = SE3.from_yaw(0.7, [1, 2, 3]).as_matrix()[:3]
    m_text = np.round(m, 5) * (1 + 1e-6)
    a = SE3.from_matrix(m_text, orthonormalize=True)
    np.testing.assert_allclose(a.rotation @ a.rotation.T, np.eye(3), atol=1e-12)
    assert abs(a.yaw - 0.7) < 1e-4


def test_quaternion_of_a_rotation_within_the_constructor_tolerance():
    r = np.eye(3)
    r[0, 0] += 2e-5
    q = SE3(r, np.zeros(3)).quaternion()
    assert abs(q[0] - 1.0) < 1e-4
