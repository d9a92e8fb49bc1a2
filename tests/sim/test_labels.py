from __future__ import annotations

import numpy as np

from perception4d.core.labels import (OCC_CLASSES, OCC_IGNORE, SEMANTICKITTI_NAMES, is_moving,
                                      is_valid_semantic, mos_label, occupancy_class)
from perception4d.sim.scene import KINDS


def test_semantickitti_table_and_helpers():
    assert SEMANTICKITTI_NAMES[252] == "moving-car" and SEMANTICKITTI_NAMES[48] == "sidewalk"
    ids = np.array([0, 1, 10, 30, 40, 250, 251, 252, 259, 260])
    np.testing.assert_array_equal(is_moving(ids), [0, 0, 0, 0, 0, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(mos_label(ids), [0, 0, 1, 1, 1, 1, 2, 2, 2, 1])
    np.testing.assert_array_equal(is_valid_semantic([10, 252, 250, 7]), [True, True, False, False])


def test_occupancy_classes():
    assert OCC_CLASSES[0] == "free" and len(OCC_CLASSES) == 14
    occ = occupancy_class(np.array([10, 252, 30, 254, 40, 48, 72, 50, 70, 71, 80, 81, 0, 1]))
    names = [OCC_CLASSES[c] if c != OCC_IGNORE else "ignore" for c in occ]
    assert names == ["car", "car", "person", "person", "road", "sidewalk", "terrain", "building",
                     "vegetation", "vegetation", "pole", "pole", "ignore", "ignore"]
    # every named id maps somewhere; only unlabeled/outlier are ignored
    named = np.array(sorted(SEMANTICKITTI_NAMES))
    assert set(named[occupancy_class(named) == OCC_IGNORE]) == {0, 1}
    assert set(occupancy_class(named)) - {OCC_IGNORE} == set(range(1, len(OCC_CLASSES)))


def test_simulator_kinds_use_valid_ids():
    for info in KINDS.values():
        assert is_valid_semantic([info.semantic, info.moving_semantic]).all()
        assert not is_moving(info.semantic)
