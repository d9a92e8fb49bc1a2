"""Launch the perception4d node with its parameter file (``params_file``) and optional simulated time."""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("perception4d_ros"), "config", "perception4d.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="ROS 2 parameter file of the node (mirrors the package configs)"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="true when playing a bag with --clock"),
        DeclareLaunchArgument("cloud_topic", default_value="/points",
                              description="the PointCloud2 input, remapped onto the node's cloud_topic"),
        Node(
            package="perception4d_ros",
            executable="perception4d_node",
            name="perception4d_node",
            output="screen",
            emulate_tty=True,
            parameters=[LaunchConfiguration("params_file"),
                        {"use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)}],
            remappings=[("/points", LaunchConfiguration("cloud_topic"))],
        ),
    ])
