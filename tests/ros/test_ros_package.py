"""The ament_python package in ros_nodes/: manifest, entry point, launch file, parameters, lazy rclpy."""

from __future__ import annotations

import ast
import py_compile
import sys
import xml.etree.ElementTree as ET
from dataclasses import fields
from pathlib import Path

import yaml

from perception4d.ros.params import NodeParams

REPO = Path(__file__).resolve().parents[2]
ROS = REPO / "ros_nodes"


def test_manifest_declares_an_ament_python_package_with_its_message_dependencies():
    root = ET.parse(ROS / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "perception4d_ros"
    assert root.find("export/build_type").text == "ament_python"
    deps = {d.text for d in root.findall("exec_depend")}
    for dep in ("rclpy", "sensor_msgs", "nav_msgs", "visualization_msgs", "diagnostic_msgs", "tf2_ros",
                "launch_ros", "rosidl_runtime_py"):
        assert dep in deps
    assert (ROS / "resource" / "perception4d_ros").is_file()


def test_setup_entry_point_names_the_node_main():
    tree = ast.parse((ROS / "setup.py").read_text())
    text = ast.unparse(tree)
    assert "perception4d_node = perception4d_ros.node:main" in text
    assert "launch/*.launch.py" in text and "config/*.yaml" in text
    cfg = (ROS / "setup.cfg").read_text()
    assert "install_scripts=$base/lib/perception4d_ros" in cfg
    node = ast.parse((ROS / "perception4d_ros" / "node.py").read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in node.body)


def test_node_and_launch_compile_and_rclpy_is_imported_lazily(tmp_path):
    for path in (ROS / "perception4d_ros" / "node.py", ROS / "launch" / "perception4d.launch.py"):
        py_compile.compile(str(path), cfile=str(tmp_path / (path.name + "c")), doraise=True)
    tree = ast.parse((ROS / "perception4d_ros" / "node.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name for n in top for a in n.names} | {getattr(n, "module", None) for n in top}
    assert not names & {"rclpy", "tf2_ros", "sensor_msgs.msg", "rclpy.node"}, names


def test_rclpy_free_modules_do_not_import_rclpy():
    import importlib

    for name in ("core", "replay", "pointcloud2", "poses", "outputs", "params", "messages", "bags"):
        importlib.import_module(f"perception4d.ros.{name}")
    ros = [m for m in sys.modules if m.split(".")[0] in ("rclpy", "rosidl_runtime_py", "tf2_ros", "sensor_msgs")]
    assert ros == []


def test_parameter_file_mirrors_node_params_and_loads():
    doc = yaml.safe_load((ROS / "config" / "perception4d.yaml").read_text())
    keys = set(doc["perception4d_node"]["ros__parameters"])
    assert keys == {f.name for f in fields(NodeParams)}
    params = NodeParams.from_yaml(ROS / "config" / "perception4d.yaml")
    assert params.configs == [] and params.tasks == ["flow", "mos"] and params.devices == ["cuda:0"]
    assert [Path(p).name for p in params.checkpoint_paths()] == ["flow_sparseunet_5f_sim.pth",
                                                                 "mos_sparseunet_11f_sim.pth"]
    assert all(Path(p).is_file() for p in params.checkpoint_paths())
    assert [(s.name, s.device) for s in params.model_specs()] == [("flow", "cuda:0"), ("mos", "cuda:0")]


def test_bad_parameters_name_the_file_and_field(tmp_path):
    import pytest

    from perception4d.errors import ConfigError

    bad = tmp_path / "p.yaml"
    for body, words in (("colud_topic: /x", "unknown parameter(s) ['colud_topic']"),
                        ("tf_timeout_s: fast", "tf_timeout_s must be a number"),
                        ("pose_source: gps", "pose_source must be one of"),
                        ("tasks: [flow, lidar]", "tasks ['lidar'] unknown"),
                        ("devices: [cpu, cpu, cpu]", "devices must hold one device or one per checkpoint")):
        bad.write_text("/**:\n  ros__parameters:\n    " + body + "\n")
        with pytest.raises(ConfigError) as e:
            NodeParams.from_yaml(bad)
        assert words in str(e.value) and str(bad) in str(e.value)
