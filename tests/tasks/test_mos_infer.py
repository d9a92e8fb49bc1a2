"""p4d infer --task mos on the real SemanticKITTI scans with the shipped checkpoint."""

import numpy as np

from perception4d.cli import main
from perception4d.io.semantickitti_predictions import read_mos_predictions


def test_infer_mos_writes_one_label_file_per_scan(semantickitti_root, tmp_path, capsys):
    out = tmp_path / "pred"
    assert main(["infer", "--task", "mos", "--data", str(semantickitti_root), "--format", "semantickitti",
                 "--out", str(out), "--metrics", "--pictures", "1"]) == 0
    text = capsys.readouterr().out
    files = sorted((out / "sequences" / "00" / "predictions").glob("*.label"))
    assert [f.name for f in files] == ["000000.label", "000001.label", "000002.label"]
    counts = [124668, 124605, 124478]
    flagged = []
    for f, n in zip(files, counts):
        moving = read_mos_predictions(f, expected_count=n)
        flagged.append(moving.mean())
    # a real static-dominated scan must not come out mostly moving
    assert max(flagged) < 0.3, flagged
    assert "shortened window" in text
    for variant in ("online", "online+refine", "fused", "fused+refine"):
        assert variant in text
    assert list((out / "pictures").glob("*_mos.png"))


def test_online_output_differs_from_fused_only_where_windows_disagree(semantickitti_root, tmp_path):
    a, b = tmp_path / "fused", tmp_path / "online"
    assert main(["infer", "--task", "mos", "--data", str(semantickitti_root), "--out", str(a), "--pictures", "0"]) == 0
    assert main(["infer", "--task", "mos", "--data", str(semantickitti_root), "--out", str(b), "--pictures", "0",
                 "--online"]) == 0
    last = "sequences/00/predictions/000002.label"  # the newest scan is predicted by one window only
    np.testing.assert_array_equal(read_mos_predictions(a / last), read_mos_predictions(b / last))
    first = "sequences/00/predictions/000000.label"  # three windows fused vs one
    assert (read_mos_predictions(a / first) != read_mos_predictions(b / first)).any()


def test_a_checkpoint_without_the_task_head_is_one_clear_error(semantickitti_root, tmp_path, capsys):
    from perception4d.inference import DEFAULT_FLOW

    rc = main(["infer", "--task", "mos", "--checkpoint", str(DEFAULT_FLOW), "--data", str(semantickitti_root),
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "has no 'mos' head" in err and "Traceback" not in err
    assert main(["infer", "--task", "flow", "--checkpoint", str(tmp_path / "missing.pth"), "--data",
                 str(semantickitti_root), "--out", str(tmp_path / "o")]) == 2
    assert "missing.pth not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
