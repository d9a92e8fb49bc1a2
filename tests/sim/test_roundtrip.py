"""Simulated data written to disk and read back through the package's own readers and av2's loaders."""

from __future__ import annotations

import numpy as np
import pytest

from perception4d.errors import ConfigError
from perception4d.sim import write_av2, write_dataset


@pytest.fixture(scope="module")
def written(exact_seq, tmp_path_factory):
    return exact_seq, write_dataset(exact_seq, tmp_path_factory.mktemp("sim"))


def test_semantickitti_roundtrip(written):
    from perception4d.io.semantickitti import SemanticKittiReader

    seq, paths = written
    reader = SemanticKittiReader(paths.semantickitti)
    assert len(reader) == len(seq)
    for f, back in zip(seq.frames, reader):
        np.testing.assert_array_equal(back.xyz, f.xyz)
        np.testing.assert_array_equal(back.column("intensity"), f.column("intensity"))
        assert back.world_T_sensor.allclose(f.world_T_sensor, atol=1e-9)
        assert back.timestamp_ns == f.timestamp_ns
        np.testing.assert_array_equal(back.labels.semantic, f.labels.semantic)
        np.testing.assert_array_equal(back.labels.instance, f.labels.instance)
        np.testing.assert_array_equal(back.labels.moving, f.labels.moving)


def test_av2_roundtrip(written):
    from av2.utils.io import read_city_SE3_ego, read_ego_SE3_sensor, read_lidar_sweep

    from perception4d.io.av2 import Av2LogReader

    seq, paths = written
    reader = Av2LogReader(paths.av2)
    assert len(reader) == len(seq)
    city = read_city_SE3_ego(paths.av2)
    sensors = read_ego_SE3_sensor(paths.av2)
    np.testing.assert_allclose(sensors["up_lidar"].translation, [0.0, 0.0, seq.preset.mount_height])
    for i, (f, back) in enumerate(zip(seq.frames, reader)):
        xyz = f.xyz_in_ego()
        np.testing.assert_array_equal(back.xyz, xyz)
        np.testing.assert_array_equal(read_lidar_sweep(reader.sweep_path(i)), xyz.astype(np.float64))
        assert back.pose.allclose(f.pose, atol=1e-9)
        np.testing.assert_allclose(city[f.timestamp_ns].transform_matrix, f.pose.as_matrix(), atol=1e-9)
        # stored as uint8 0..255; the reader scales back to [0, 1]
        stored = np.round(f.column("intensity") * 255) / 255
        np.testing.assert_allclose(back.column("intensity"), stored, atol=1e-6)
        lab = back.labels
        np.testing.assert_array_equal(lab.flow, f.labels.flow)
        np.testing.assert_array_equal(lab.flow_category, f.labels.flow_category)
        np.testing.assert_array_equal(lab.moving, f.labels.moving)
        np.testing.assert_array_equal(lab.ground, f.labels.ground)
        assert lab.flow_valid.all()


def test_av2_layout_matches_the_real_log(written, av2_log_dir):
    import pyarrow.feather as feather

    _, paths = written
    real_sweep = next((av2_log_dir / "sensors" / "lidar").glob("*.feather"))
    ours_sweep = next((paths.av2 / "sensors" / "lidar").glob("*.feather"))
    pairs = [(real_sweep, ours_sweep),
             (av2_log_dir / "city_SE3_egovehicle.feather", paths.av2 / "city_SE3_egovehicle.feather"),
             (av2_log_dir / "calibration" / "egovehicle_SE3_sensor.feather",
              paths.av2 / "calibration" / "egovehicle_SE3_sensor.feather"),
             (av2_log_dir / "flow_labels.feather", next((paths.av2 / "flow_labels").glob("*.feather")))]
    for real, ours in pairs:
        rs, os_ = feather.read_table(real).schema, feather.read_table(ours).schema
        assert rs.names == os_.names, ours
        for name in rs.names:
            if name in ("x", "y", "z"):  # the real sweeps store float16; ours keep float32
                assert str(os_.field(name).type) == "float"
            else:
                assert rs.field(name).type == os_.field(name).type, (ours, name)


def test_writers_refuse_a_used_folder(exact_seq, tmp_path):
    write_av2(exact_seq, tmp_path, log_id="log")
    with pytest.raises(ConfigError, match="already holds files"):
        write_av2(exact_seq, tmp_path, log_id="log")
    write_av2(exact_seq, tmp_path, log_id="log", overwrite=True)
