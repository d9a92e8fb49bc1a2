import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perception4d.core.geometry import Geometry
from perception4d.errors import ConfigError


def test_flow_geometry_shape():
    g = Geometry((-51.2, -51.2, -3.2, 51.2, 51.2, 3.2), (0.2, 0.2, 0.2), 5)
    assert g.grid_shape == (512, 512, 32)
    assert g.spatial_shape == (512, 512, 32, 5)


def test_occ3d_geometry_shape():
    g = Geometry((-40, -40, -1, 40, 40, 5.4), (0.4, 0.4, 0.4))
    assert g.grid_shape == (200, 200, 16)


def test_indivisible_range_rejected_with_fix():
    with pytest.raises(ConfigError) as err:
        Geometry((-51.2, -51.2, -3.2, 51.3, 51.2, 3.2), (0.2, 0.2, 0.2), 5)
    msg = str(err.value)
    assert "along x" in msg and "not a multiple" in msg and "xmax = 51.4" in msg


@pytest.mark.parametrize("kw, match", [
    (dict(point_range=(0, 0, 0, 1, 1), voxel_size=(1, 1, 1)), "6 numbers"),
    (dict(point_range=(0, 0, 0, 1, 1, 1), voxel_size=(1, 1)), "3 numbers"),
    (dict(point_range=(0, 0, 0, 1, 1, 1), voxel_size=(1, 0, 1)), "positive"),
    (dict(point_range=(1, 0, 0, 0, 1, 1), voxel_size=(1, 1, 1)), "xmax"),
    (dict(point_range=(0, 0, 0, 1, 1, 1), voxel_size=(1, 1, 1), num_frames=0), "num_frames"),
])
def test_bad_declarations(kw, match):
    with pytest.raises(ConfigError, match=match):
        Geometry(**kw)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 600), st.sampled_from([0.05, 0.1, 0.2, 0.25, 0.4, 0.5]), st.floats(-100, 100))
def test_derived_shape_matches_declaration(cells, voxel, lo):
    lo = round(lo, 2)
    g = Geometry((lo, lo, lo, lo + cells * voxel, lo + cells * voxel, lo + cells * voxel), (voxel,) * 3)
    assert g.grid_shape == (cells, cells, cells)


def test_from_config_mapping():
    g = Geometry.from_config(dict(point_range=[-1, -1, -1, 1, 1, 1], voxel_size=[0.5, 0.5, 0.5], num_frames=3))
    assert g.spatial_shape == (4, 4, 4, 3)
