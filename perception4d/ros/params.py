"""Parameters of the perception node, shared by the live node and ``p4d ros-replay``.

One flat set of ROS parameters (ROS 2 parameters cannot be nested lists of
dicts) that mirrors the package's configs: the model sets as parallel lists
(``checkpoints``, ``configs``, ``devices``), or one runtime config
(``configs/runtime/*.py``) that says everything about the model sets; the
tasks to publish; the frames of the pose lookup; the topics. The node's YAML
(``ros_nodes/config/perception4d.yaml``) is read by ``ros2 launch`` and by
``p4d ros-replay --params`` alike: ``NodeParams.from_yaml`` takes the
``ros__parameters`` of the node (or of ``/**``).

A checkpoint given by file name only (``flow_sparseunet_5f_sim.pth``) that
is not a path to a file is looked up among the checkpoints shipped with the
package, so the YAML needs no install path.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from perception4d.errors import ConfigError
from perception4d.ros.poses import POSE_SOURCES, PoseFrames

SHIPPED_CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
TASKS = ("flow", "mos", "occupancy")
WORKERS = ("inline", "thread", "process")


@dataclass
class NodeParams:
    # the model sets (ignored when runtime_config is set)
    checkpoints: list[str] = field(default_factory=lambda: ["flow_sparseunet_5f_sim.pth",
                                                            "mos_sparseunet_11f_sim.pth"])
    configs: list[str] = field(default_factory=list)  # one per checkpoint ("" = the .py beside it), or none
    devices: list[str] = field(default_factory=lambda: ["cpu"])  # one for all, or one per checkpoint
    runtime_config: str = ""  # configs/runtime/*.py: model sets, devices, workers (the lists above unused)
    workers: str = "inline"  # several model sets: inline | thread | process (perception4d.runtime.parallel)
    tasks: list[str] = field(default_factory=list)  # published outputs; empty: every task of the models
    max_gap_s: float = 0.25  # the frame policy's gap (perception4d.runtime.policy)
    # input
    cloud_topic: str = "/points"
    intensity_max: float = 0.0  # raw intensity that maps to 1.0; 0: by field type (integers: range; floats: 1)
    # pose
    pose_source: str = "tf"  # tf | odometry
    fixed_frame: str = "odom"
    base_frame: str = "base_link"
    odom_topic: str = "/odom"
    tf_timeout_s: float = 0.1  # how long a cloud waits for its transforms before it is dropped (counted)
    # outputs
    output_cloud_topic: str = "/perception4d/points"
    occupancy_topic: str = "/perception4d/occupancy"
    occupancy_markers_topic: str = "/perception4d/occupancy_markers"
    occupancy_markers: bool = False  # also a MarkerArray (one CUBE_LIST per class) besides the voxel cloud
    diagnostics_topic: str = "/diagnostics"
    diagnostics_period_s: float = 1.0
    pending_limit: int = 3  # clouds held while their flow is pending (flow comes with the next sweep)

    def __post_init__(self):
        self.validate()

    def validate(self, where: str = "node parameters") -> None:
        for name in ("checkpoints", "configs", "devices", "tasks"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: {name} must be a list of strings, got {value!r}")
            setattr(self, name, list(value))
        if not self.runtime_config:
            if not self.checkpoints:
                raise ConfigError(f"{where}: give checkpoints (or a runtime_config)")
            if self.configs and len(self.configs) != len(self.checkpoints):
                raise ConfigError(f"{where}: {len(self.configs)} configs for {len(self.checkpoints)} checkpoints")
            if len(self.devices) not in (1, len(self.checkpoints)):
                raise ConfigError(f"{where}: devices must hold one device or one per checkpoint, got "
                                  f"{self.devices} for {len(self.checkpoints)} checkpoints")
        bad = sorted(set(self.tasks) - set(TASKS))
        if bad:
            raise ConfigError(f"{where}: tasks {bad} unknown; choose from {list(TASKS)}")
        if self.workers not in WORKERS:
            raise ConfigError(f"{where}: workers must be one of {WORKERS}, got {self.workers!r}")
        if self.pose_source not in POSE_SOURCES:
            raise ConfigError(f"{where}: pose_source must be one of {POSE_SOURCES}, got {self.pose_source!r}")
        for name in ("tf_timeout_s", "intensity_max", "diagnostics_period_s"):
            if float(getattr(self, name)) < 0:
                raise ConfigError(f"{where}: {name} must be >= 0, got {getattr(self, name)}")
        if int(self.pending_limit) < 1:
            raise ConfigError(f"{where}: pending_limit must be >= 1, got {self.pending_limit}")
        if not self.base_frame:
            raise ConfigError(f"{where}: base_frame must be set")

    @property
    def frames(self) -> PoseFrames:
        return PoseFrames(self.pose_source, self.fixed_frame.lstrip("/"), self.base_frame.lstrip("/"))

    # -- loading ------------------------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: dict, where: str = "node parameters") -> "NodeParams":
        """From ROS parameter values; unknown names and wrong types raise ``ConfigError`` naming them."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown parameter(s) {unknown}; known: {sorted(known)}")
        defaults = {f.name: f.default_factory() if f.default_factory is not MISSING else f.default
                    for f in fields(cls)}  # each parameter's type is its default's
        kw = {name: _coerce(value, defaults[name], f"{where}: {name}") for name, value in values.items()}
        try:
            return cls(**kw)
        except ConfigError as e:
            raise ConfigError(str(e).replace("node parameters", where)) from None

    @classmethod
    def from_yaml(cls, path: str | Path, node_name: str = "perception4d_node") -> "NodeParams":
        """The ``ros__parameters`` of ``node_name`` (or of ``/**``) in a ROS 2 parameter file."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"parameter file {path} not found")
        doc = yaml.safe_load(path.read_text()) or {}
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: a ROS 2 parameter file maps node names to {{ros__parameters: ...}}")
        for key in (node_name, "/" + node_name, "/**"):
            block = doc.get(key)
            if isinstance(block, dict) and "ros__parameters" in block:
                return cls.from_mapping(block["ros__parameters"] or {}, f"{path} ({key})")
        raise ConfigError(f"{path}: no '{node_name}' or '/**' entry with ros__parameters (found {sorted(doc)})")

    # -- model sets ---------------------------------------------------------------------------------------
    def checkpoint_paths(self) -> list[str]:
        out = []
        for c in self.checkpoints:
            p = Path(c).expanduser()
            if not p.is_file() and p.name == c and (SHIPPED_CHECKPOINTS / c).is_file():
                p = SHIPPED_CHECKPOINTS / c
            out.append(str(p))
        return out

    def model_specs(self) -> list:
        """The ``ModelSpec`` of each checkpoint (names from the checkpoint stems, made unique)."""
        from perception4d.runtime.models import ModelSpec

        paths = self.checkpoint_paths()
        devices = self.devices * len(paths) if len(self.devices) == 1 else self.devices
        configs = self.configs or [""] * len(paths)
        names: list[str] = []
        for p in paths:
            stem = Path(p).stem.split("_")[0]
            names.append(stem if stem not in names else f"{stem}{len(names)}")
        return [ModelSpec(n, config=c or None, checkpoint=p, device=d)
                for n, p, c, d in zip(names, paths, configs, devices)]


def _coerce(value, default, where: str):
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, list):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings, got {value!r}")
        return [] if all(v == "" for v in value) else list(value)  # [""]: how a ROS launch spells an empty list
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value
