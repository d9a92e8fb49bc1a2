"""ament_python package of the perception4d ROS 2 node (build with colcon; see README.md)."""

from glob import glob

from setuptools import setup

PACKAGE = "perception4d_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=[PACKAGE],
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml", "README.md"]),
        ("share/" + PACKAGE + "/launch", glob("launch/*.launch.py")),
        ("share/" + PACKAGE + "/config", glob("config/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="perception4d maintainers",
    maintainer_email="perception4d@example.com",
    description="LiDAR 4D perception node: scene flow, moving probability, occupancy from PointCloud2",
    license="Apache-2.0",
    entry_points={"console_scripts": ["perception4d_node = perception4d_ros.node:main"]},
)
