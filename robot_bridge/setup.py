"""robot_bridge as an ament_python package, for `colcon build` in a ROS 2 workspace (robot PC).

Owns: the ROS side of packaging only — the ament index marker, package.xml, the launch files under
share/robot_bridge/launch and the console scripts `ros2 run`/`ros2 launch` start (lib/robot_bridge/, set in
setup.cfg). The folder holding this file *is* the Python package `robot_bridge` (the repository root's
pyproject.toml installs it, with serl_stack, for `pip install -e .`), so the package directory maps to "." here
rather than the usual nested `robot_bridge/robot_bridge/`: one copy of the code, two ways to install it.
serl_stack itself (JAX, MuJoCo, ZeroMQ) is not a ROS package: install it with pip into the Python that ROS uses.

Build (from the repository root, outputs outside the checkout):
    colcon --log-base /tmp/ws/log build --base-paths robot_bridge --build-base /tmp/ws/build \
        --install-base /tmp/ws/install
or with `src/robot_bridge` in a workspace as a symlink to this folder. Not `--symlink-install`: setuptools'
develop mode cannot map a package to its own project folder.
"""

from setuptools import setup

PACKAGE = "robot_bridge"
# The launch files live at the repository root (launch/), next to this folder; distutils takes data files relative
# to the working directory, which colcon sets to this folder (the symlink's target, when src/ holds a symlink).
LAUNCH_FILES = ["../launch/franka_actor.launch.py", "../launch/fake_franka.launch.py"]

# Guarded so that importing `robot_bridge.setup` (it ships as a module of the package in the root's pip wheel) does
# nothing; colcon and setuptools run this file as a script.
if __name__ == "__main__":
    setup(
        name=PACKAGE,
        version="0.1.0",
        description="serl_stack's ROS 2 bridge to a Franka arm: actor node, rclpy/DDS backends, fake Franka, launch",
        license="MIT",
        packages=[PACKAGE],
        package_dir={PACKAGE: "."},
        data_files=[
            ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
            (f"share/{PACKAGE}", ["package.xml"]),
            (f"share/{PACKAGE}/launch", LAUNCH_FILES),
        ],
        install_requires=["setuptools"],
        zip_safe=False,
        entry_points={
            "console_scripts": [
                f"serl_actor_node = {PACKAGE}.nodes:serl_actor_node",
                f"fake_franka = {PACKAGE}.nodes:fake_franka",
                f"serl_teach = {PACKAGE}.nodes:serl_teach",
            ],
        },
    )
