"""robot_bridge as a ROS 2 package: package.xml, the console scripts, the launch files, the inference boundary of the
actor node, a real `colcon build`, and the rclpy backend (without ROS here: it must import and say what to do).

The launch files need ROS's `launch`/`launch_ros`, which no package index here offers: they are read as source
(their declared arguments, the nodes they start and the names they read), and the mapping from their arguments to
the nodes' command lines, which lives in robot_bridge/nodes.py, is run through the real `serl` parser and config
loader. The rclpy tests at the end run only where ROS 2 is sourced.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from wait_support import wait_until

from robot_bridge import make_backend, nodes
from robot_bridge.backend import BackendError, BackendUnsupported
from serl_stack.cli import build_parser
from serl_stack.config import BridgeConfig, load

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "robot_bridge"
LAUNCH = {"franka_actor": ROOT / "launch" / "franka_actor.launch.py",
          "fake_franka": ROOT / "launch" / "fake_franka.launch.py"}
LEARNER_ONLY = ("optax", "serl_stack.learner", "serl_stack.updater", "serl_stack.agents.sac")
ENV = {**os.environ, "MUJOCO_GL": "egl"}
# Python's own modules, numpy and this repository's packages: what is not a ROS package among a file's imports.
NOT_ROS = {*sys.stdlib_module_names, "numpy", "robot_bridge", "serl_stack"}
NO_ROS = "ROS 2 is not sourced here (rclpy is on no package index); these run on a robot PC with Humble or Jazzy"
DOMAIN = 19  # this module's DDS domain, apart from the other bridge test modules'


def _imported_packages(path: Path) -> set[str]:
    """Top-level packages a file imports anywhere (module level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _console_scripts() -> dict[str, str]:
    """name -> 'module:function' from setup.py's entry_points (read, not run: running setup() has side effects)."""
    scripts: dict[str, str] = {}
    tree = ast.parse((PACKAGE / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    for item in value.elts:
                        text = item.value if isinstance(item, ast.Constant) else _fstring(item)
                        name, target = (s.strip() for s in text.split("="))
                        scripts[name] = target
    return scripts


def _fstring(node: ast.JoinedStr) -> str:
    # setup.py writes f"serl_actor_node = {PACKAGE}.nodes:serl_actor_node" with PACKAGE = "robot_bridge".
    return "".join(v.value if isinstance(v, ast.Constant) else "robot_bridge" for v in node.values)


# ---------------------------------------------------------------------------------------------- package.xml, setup


def test_package_xml_is_an_ament_python_package_that_names_what_the_nodes_import() -> None:
    root = ET.parse(PACKAGE / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "robot_bridge"
    assert root.find("export/build_type").text == "ament_python"
    assert root.find("maintainer").get("email") and root.findtext("license")
    exec_depends = {e.text for e in root.findall("exec_depend")}
    # Every ROS package the backend and the launch files import is declared, so rosdep installs it.
    used = _imported_packages(PACKAGE / "rclpy_backend.py") | set().union(*map(_imported_packages, LAUNCH.values()))
    ros_used = used - NOT_ROS
    assert {"rclpy", "geometry_msgs", "sensor_msgs", "std_msgs", "franka_msgs", "launch", "launch_ros"} <= ros_used
    assert sorted(ros_used - exec_depends) == []
    # One version for the package everywhere it is stated.
    setup_version = re.search(r'version="([^"]+)"', (PACKAGE / "setup.py").read_text()).group(1)
    pyproject_version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert root.findtext("version") == setup_version == pyproject_version


def test_console_scripts_resolve_to_functions_and_the_launch_files_start_only_those() -> None:
    scripts = _console_scripts()
    assert set(scripts) == {"serl_actor_node", "fake_franka", "serl_teach"}
    for name, target in scripts.items():
        module, function = target.split(":")
        fn = getattr(__import__(module, fromlist=[function]), function)
        assert callable(fn) and list(inspect.signature(fn).parameters) == ["argv"], name
    started = {kw["executable"] for path in LAUNCH.values() for kw in _node_calls(path)}
    assert started == {"serl_actor_node", "fake_franka"} and started <= set(scripts)
    assert {kw["package"] for path in LAUNCH.values() for kw in _node_calls(path)} == {"robot_bridge"}
    assert (PACKAGE / "resource" / "robot_bridge").is_file()
    assert "install_scripts=$base/lib/robot_bridge" in (PACKAGE / "setup.cfg").read_text()


# ---------------------------------------------------------------------------------------------- launch files


def _calls(path: Path, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == name]


def _node_calls(path: Path) -> list[dict[str, object]]:
    return [{k.arg: k.value.value for k in c.keywords if isinstance(k.value, ast.Constant)}
            for c in _calls(path, "Node")]


def _declared(path: Path) -> dict[str, ast.Call]:
    return {c.args[0].value: c for c in _calls(path, "DeclareLaunchArgument")}


def _documented(path: Path) -> set[str]:
    """The argument names listed in the file docstring's "Arguments" section (two-space indented lines)."""
    doc = ast.get_docstring(ast.parse(path.read_text()))
    section = doc.split("Arguments", 1)[1].split("\n\n", 1)[0]
    names: set[str] = set()
    for line in section.splitlines()[1:]:
        if line.startswith("  ") and not line.startswith("    ") and line.strip():
            names |= {n.strip() for n in line.split("  ")[1].split(",") if n.strip()}
    return names


@pytest.mark.parametrize("which", sorted(LAUNCH))
def test_launch_file_declares_documents_and_reads_the_same_arguments(which: str) -> None:
    path = LAUNCH[which]
    declared = _declared(path)
    read = {c.args[0].value for c in _calls(path, "value")}
    assert set(declared) == _documented(path) == read
    assert all(any(k.arg == "description" for k in c.keywords) for c in declared.values())
    expected = {"franka_actor": {"robot_ip", "namespace", "learner_host", "config", "wrist_serial", "front_serial",
                                 "backend", "dry_run", "domain_id", "run_dir"},
                "fake_franka": {"namespace", "domain_id", "rate"}}[which]
    assert expected <= set(declared)
    # The arguments reach the node through the functions tested below, with keywords those functions take.
    builder = {"franka_actor": nodes.actor_arguments, "fake_franka": nodes.fake_franka_arguments}[which]
    (call,) = _calls(path, builder.__name__)
    assert {k.arg for k in call.keywords} <= set(inspect.signature(builder).parameters)


def test_actor_backend_argument_defaults_to_rclpy_and_offers_only_the_two_backends() -> None:
    backend = _declared(LAUNCH["franka_actor"])["backend"]
    keywords = {k.arg: k.value for k in backend.keywords}
    assert keywords["default_value"].value == "rclpy"
    assert sorted(e.value for e in keywords["choices"].elts) == sorted(("rclpy", "dds"))


# ---------------------------------------------------------------------------------------------- nodes.py


@pytest.mark.parametrize(("argv", "kept"), [
    (["--run-dir", "r"], ["--run-dir", "r"]),
    (["--run-dir", "r", "--ros-args", "-r", "__node:=serl_actor"], ["--run-dir", "r"]),
    (["--ros-args", "-r", "__ns:=/fr3", "--", "--set", "a.b=1"], ["--set", "a.b=1"]),
    (["-c", "x.yaml", "--ros-args", "-p", "p:=1", "--", "--debug", "--ros-args", "--log-level", "debug"],
     ["-c", "x.yaml", "--debug"]),
    ([], []),
])
def test_strip_ros_args_drops_each_ros_section(argv: list[str], kept: list[str]) -> None:
    assert nodes.strip_ros_args(argv) == kept


def test_actor_arguments_set_the_documented_fields_through_the_real_cli_and_config() -> None:
    args = nodes.actor_arguments(run_dir="runs/x", namespace="/fr3", domain_id="7", learner_host="10",
                                 transitions_port="5555", params_port="5556", backend="rclpy", dry_run="True",
                                 cameras={"wrist": "123456789012", "front": ""})
    parsed = build_parser().parse_args(["actor", *args])
    cfg = load(parsed.config, parsed.overrides)
    assert parsed.run_dir == Path("runs/x")
    assert (cfg.bridge.namespace, cfg.bridge.domain_id, cfg.bridge.backend, cfg.bridge.dry_run) == ("/fr3", 7, "rclpy",
                                                                                                    True)
    # A host and a serial that look like numbers stay strings; an empty serial adds no camera.
    assert cfg.transport.host == "10" and cfg.bridge.camera_serials == {"wrist": "123456789012"}
    assert (cfg.transport.transitions_port, cfg.transport.params_port) == (5555, 5556)


def test_empty_launch_arguments_leave_the_config_alone(tmp_path: Path) -> None:
    config = tmp_path / "robot.yaml"
    config.write_text("bridge:\n  namespace: /panda\n  dry_run: true\n  camera_serials: {front: '42'}\n")
    args = nodes.actor_arguments(config=str(config), cameras={"wrist": "", "front": ""})
    assert args == ["--config", str(config)]
    parsed = build_parser().parse_args(["actor", "--run-dir", "r", *args])
    cfg = load(parsed.config, parsed.overrides)
    assert (cfg.bridge.namespace, cfg.bridge.dry_run, cfg.bridge.camera_serials) == ("/panda", True, {"front": "42"})


@pytest.mark.parametrize(("kwargs", "named"), [({"dry_run": "maybe"}, "dry_run"), ({"domain_id": "fr3"}, "domain_id"),
                                               ({"params_port": "-1"}, "params_port")])
def test_a_malformed_launch_argument_is_an_error_naming_it(kwargs: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=f"launch argument {named}: got"):
        nodes.actor_arguments(**kwargs)


def test_fake_franka_arguments_are_flags_its_own_parser_reads() -> None:
    from robot_bridge.fake_franka import _parser

    args = nodes.fake_franka_arguments(namespace="/fr3", domain_id="23", rate="100")
    parsed = _parser().parse_args(args)
    assert (parsed.namespace, parsed.domain_id, parsed.rate) == ("/fr3", 23, 100.0)
    assert nodes.fake_franka_arguments() == []


def test_actor_node_without_ros_loads_no_learner_code_and_says_how_to_run(tmp_path: Path) -> None:
    """The node as launch starts it (ROS arguments appended), in a fresh interpreter: the actor runs up to the robot
    link, which fails here with the message naming both ways out, having loaded none of the learner's machinery."""
    try:
        import rclpy  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("rclpy is importable here: the backend would start instead of failing")
    modules = tmp_path / "modules.json"
    script = ("import json, sys\nfrom robot_bridge.nodes import serl_actor_node\n"
              "code = serl_actor_node(sys.argv[2:])\n"
              "json.dump(sorted(sys.modules), open(sys.argv[1], 'w'))\nsys.exit(code)\n")
    argv = ["--run-dir", str(tmp_path / "run"), *nodes.actor_arguments(backend="rclpy", transitions_port="5555",
                                                                       params_port="5556"),
            "--ros-args", "-r", "__node:=serl_actor"]
    done = subprocess.run([sys.executable, "-c", script, str(modules), *argv], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=ENV)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "bridge.backend: rclpy needs ROS 2" in done.stderr and "`bridge.backend: dds`" in done.stderr
    assert "source /opt/ros/" in done.stderr
    loaded = set(json.loads(modules.read_text()))
    assert {"serl_stack.actor", "robot_bridge.rclpy_backend"} <= loaded  # it did run the actor up to the backend
    assert sorted(m for m in loaded if m.split(".")[0] == "optax" or m in LEARNER_ONLY) == []


def test_importing_the_nodes_and_the_rclpy_backend_loads_no_learner_code_and_no_ros() -> None:
    script = ("import json, sys\nimport robot_bridge.nodes, robot_bridge.rclpy_backend\n"
              "print(json.dumps(sorted(sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = set(json.loads(done.stdout))
    assert "robot_bridge.rclpy_backend" in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in ("optax", "rclpy", "jax") or m in LEARNER_ONLY) == []


# ---------------------------------------------------------------------------------------------- rclpy backend, no ROS


def test_rclpy_backend_without_ros_is_a_clear_error_naming_the_dds_backend() -> None:
    try:
        import rclpy  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("rclpy is importable here")
    with pytest.raises(BackendError) as raised:
        make_backend(BridgeConfig(backend="rclpy"))
    message = str(raised.value)
    assert "bridge.backend: dds" in message and "source /opt/ros/" in message and "rclpy" in message
    assert not isinstance(raised.value, BackendUnsupported)


# ---------------------------------------------------------------------------------------------- colcon build


def _colcon() -> str | None:
    beside = Path(sys.executable).parent / "colcon"
    return str(beside) if beside.is_file() else shutil.which("colcon")


def test_colcon_builds_the_ament_package_and_its_scripts_run(tmp_path: Path) -> None:
    """A real `colcon build` (colcon-ros builds ament_python packages without a ROS install) in a workspace whose
    src/ links to robot_bridge/, as a robot PC's workspace would; then the installed scripts run."""
    colcon = _colcon()
    if colcon is None:
        pytest.skip("colcon is not installed (pip install colcon-common-extensions)")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "robot_bridge").symlink_to(PACKAGE, target_is_directory=True)
    start = time.monotonic()
    built = subprocess.run([colcon, "--log-base", "log", "build"], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path, env=ENV)
    took = time.monotonic() - start
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert "1 package finished" in built.stdout, built.stdout[-2000:]
    prefix = tmp_path / "install" / "robot_bridge"
    share = prefix / "share" / "robot_bridge"
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "robot_bridge").is_file()
    assert (share / "package.xml").read_text() == (PACKAGE / "package.xml").read_text()
    assert sorted(p.name for p in (share / "launch").iterdir()) == sorted(p.name for p in LAUNCH.values())
    for script in ("serl_actor_node", "fake_franka", "serl_teach"):
        assert os.access(prefix / "lib" / "robot_bridge" / script, os.X_OK), script
    (site,) = prefix.glob("lib/python*/site-packages")
    assert not (site / "robot_bridge" / "setup.py").exists()  # the packaging script is not a module of the package
    # The installed copy is the one that runs (as after `source install/setup.bash`), ROS arguments and all.
    env = {**ENV, "PYTHONPATH": os.pathsep.join(p for p in (str(site), ENV.get("PYTHONPATH")) if p)}
    where = subprocess.run([sys.executable, "-c", "import robot_bridge.nodes as n; print(n.__file__)"],
                           capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert Path(where.stdout.strip()).resolve().is_relative_to(site.resolve()), where.stdout + where.stderr
    for script, expected in (("serl_actor_node", "usage: serl actor"), ("fake_franka", "--rate")):
        shown = subprocess.run([str(prefix / "lib" / "robot_bridge" / script), "--help", "--ros-args", "-r",
                                f"__node:={script}"], capture_output=True, text=True, timeout=120, env=env,
                               cwd=tmp_path)
        assert shown.returncode == 0 and expected in shown.stdout, script + shown.stdout[-1000:] + shown.stderr[-1000:]
    print(f"colcon build of robot_bridge: {took:.1f} s")


# ---------------------------------------------------------------------------------------------- rclpy backend, ROS 2


@pytest.fixture
def ros_peer():
    """A second rclpy node in the test's own context and domain, spun on a thread: the robot's side."""
    rclpy = pytest.importorskip("rclpy", reason=NO_ROS)
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    context = Context()
    rclpy.init(context=context, domain_id=DOMAIN)
    node = rclpy.create_node("bridge_test_peer", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    import threading

    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    yield node
    executor.shutdown(timeout_sec=2.0)
    spinner.join(timeout=2.0)
    node.destroy_node()
    context.try_shutdown()


def _qos(reliable: bool, depth: int = 1):
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)


def _wait(predicate) -> bool:
    # The predicates publish before they look: poll (and so publish) at 50 Hz, for up to 10 s.
    return wait_until(predicate, timeout=10.0, interval=0.02)


def _publish_state(peer, ns: str, reliable: bool):
    """Best-effort (or reliable) writers of the four state topics, as franka_ros2 + CRISP; returns a function
    that publishes one sample of each."""
    from geometry_msgs.msg import PoseStamped, WrenchStamped
    from sensor_msgs.msg import JointState

    qos = _qos(reliable)
    pubs = {"pose": peer.create_publisher(PoseStamped, f"{ns}/current_pose", qos),
            "joints": peer.create_publisher(JointState, f"{ns}/joint_states", qos),
            "wrench": peer.create_publisher(WrenchStamped,
                                            f"{ns}/franka_robot_state_broadcaster/external_wrench_in_base_frame", qos),
            "gripper": peer.create_publisher(JointState, f"{ns}/gripper/joint_states", qos)}

    def publish() -> None:
        stamp = peer.get_clock().now().to_msg()
        pose = PoseStamped()
        pose.header.stamp = stamp
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = 0.45, -0.1, 0.3
        q = pose.pose.orientation
        q.x, q.y, q.z, q.w = 0.1, 0.2, 0.3, float(np.sqrt(1 - 0.14))
        pubs["pose"].publish(pose)
        joints = JointState(name=[f"fr3_joint{i}" for i in range(1, 8)], position=[0.1 * i for i in range(7)])
        joints.header.stamp = stamp
        pubs["joints"].publish(joints)
        wrench = WrenchStamped()
        wrench.header.stamp = stamp
        wrench.wrench.force.x, wrench.wrench.force.z, wrench.wrench.torque.y = 1.0, -2.0, 0.5
        pubs["wrench"].publish(wrench)
        fingers = JointState(name=["fr3_finger_joint1", "fr3_finger_joint2"], position=[0.02, 0.02])
        fingers.header.stamp = stamp
        pubs["gripper"].publish(fingers)

    return publish


def test_rclpy_backend_reads_state_and_publishes_target_and_gripper(ros_peer) -> None:
    from geometry_msgs.msg import PoseStamped
    from std_msgs.msg import Float64MultiArray

    from robot_bridge.rclpy_backend import RclpyBackend

    ns = f"/bp{os.getpid()}"
    targets: list = []
    gripper: list = []
    ros_peer.create_subscription(PoseStamped, f"{ns}/target_pose", targets.append, _qos(True, 10))
    ros_peer.create_subscription(Float64MultiArray, f"{ns}/gripper/gripper_position_controller/commands",
                                 gripper.append, _qos(True, 10))
    publish = _publish_state(ros_peer, ns, reliable=False)
    backend = RclpyBackend(BridgeConfig(backend="rclpy", namespace=ns, domain_id=DOMAIN))
    try:
        assert _wait(lambda: (publish(), backend.latest_gripper())[1] is not None)
        backend.wait_for_state(5.0)
        pose = backend.latest_pose()
        np.testing.assert_allclose(pose.position, (0.45, -0.1, 0.3))
        np.testing.assert_allclose(pose.quat, (np.sqrt(1 - 0.14), 0.1, 0.2, 0.3))  # w first
        assert backend.latest_joints().names[0] == "fr3_joint1" and backend.latest_joints().position.shape == (7,)
        np.testing.assert_allclose(backend.latest_wrench().force, (1.0, 0.0, -2.0))
        assert backend.latest_gripper().width == pytest.approx(0.04)
        assert sorted(backend.state_topics()) == sorted(f"{ns}{t}" for t in (
            "/current_pose", "/joint_states", "/franka_robot_state_broadcaster/external_wrench_in_base_frame",
            "/gripper/joint_states"))
        assert _wait(lambda: (backend.publish_target_pose(np.array([0.4, 0.0, 0.3]), np.array([0.0, 1.0, 0.0, 0.0])),
                              targets)[1] != [])
        o = targets[-1].pose.orientation
        assert (o.x, o.y, o.z, o.w) == (1.0, 0.0, 0.0, 0.0) and targets[-1].header.frame_id == "base"
        assert _wait(lambda: (backend.command_gripper(0.25), gripper)[1] != [])
        assert list(gripper[-1].data) == [0.25]
        with pytest.raises(BackendUnsupported, match="recover by hand"):  # no error-recovery server here
            backend.recover_errors(timeout_s=0.5)
    finally:
        backend.close()


def test_rclpy_backend_dry_run_publishes_on_the_shadow_topic_only(ros_peer) -> None:
    from geometry_msgs.msg import PoseStamped

    from robot_bridge.rclpy_backend import RclpyBackend

    ns = f"/bd{os.getpid()}"
    shadow: list = []
    ros_peer.create_subscription(PoseStamped, f"{ns}/target_pose_dry_run", shadow.append, _qos(True, 10))
    backend = RclpyBackend(BridgeConfig(backend="rclpy", namespace=ns, domain_id=DOMAIN, dry_run=True))
    try:
        assert _wait(lambda: (backend.publish_target_pose(np.zeros(3), np.array([1.0, 0, 0, 0])), shadow)[1] != [])
        assert ros_peer.count_publishers(f"{ns}/target_pose") == 0
    finally:
        backend.close()


def test_rclpy_backend_reliable_reader_gets_nothing_from_best_effort_state_and_says_which(ros_peer) -> None:
    from robot_bridge.rclpy_backend import RclpyBackend

    ns = f"/br{os.getpid()}"
    publish = _publish_state(ros_peer, ns, reliable=False)
    backend = RclpyBackend(BridgeConfig(backend="rclpy", namespace=ns, domain_id=DOMAIN, state_reliability="reliable"))
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            publish()
            time.sleep(0.02)
        with pytest.raises(BackendError, match=f"{ns}/current_pose"):
            backend.wait_for_state(0.5)
    finally:
        backend.close()


def test_rclpy_backend_refuses_a_second_publisher_of_the_target(ros_peer) -> None:
    from geometry_msgs.msg import PoseStamped

    from robot_bridge.rclpy_backend import RclpyBackend

    ns = f"/bt{os.getpid()}"
    publish = _publish_state(ros_peer, ns, reliable=False)
    ros_peer.create_publisher(PoseStamped, f"{ns}/target_pose", _qos(True))
    backend = RclpyBackend(BridgeConfig(backend="rclpy", namespace=ns, domain_id=DOMAIN))
    try:
        assert _wait(lambda: (publish(), backend.latest_gripper())[1] is not None)
        assert _wait(lambda: ros_peer.count_publishers(f"{ns}/target_pose") == 2)
        with pytest.raises(BackendError, match="CRISP ignores a target topic with more than one publisher"):
            backend.wait_for_state(5.0)
    finally:
        backend.close()
