"""The daemon's configuration: a TOML file (validated: unknown sections or keys and wrong types are
one-line errors) with command-line overrides on top. YAML is not read: TOML needs no extra package
(``tomllib``) and is what the device profiles use.

Example (every key optional except a bundle and a source, from the file or the command line)::

    [source]
    spec = "v4l2:0"          # or picamera2:0, gstreamer:<pipeline>, video:clip.avi, images:DIR, url:rtsp://...
    width = 640
    height = 480
    fps = 30
    stall_timeout = 5.0      # seconds without a frame -> reconnect
    queue = 8                # frames; the oldest is dropped when full

    [runtime]
    bundle = "/opt/alnett/bundle"
    backend = ""             # empty: the device profile's order
    threads = 0              # 0: all cores but one, left to capture and detection

    [optics]
    um_per_px = 0.093        # µm per camera pixel; or camera_pixel_um + magnification; or nothing:
                             # estimated from the first frames (alnett-edge optics calibrate prints it)

    [detector]               # sizes in µm / µm², converted with the pixel size
    cell_scale = 1.3

    [quality]
    min_confidence = 0.6

    [tracking]               # each cell one track, decided once (vision/tracking.py)
    observations = 3         # the sharpest good observations classified and fused into the decision
    watch_frames = 6         # good observations watched before the sharpest are classified
    max_jump_um = 8.0        # how far a cell centre may move frame to frame (after stage motion)

    [sinks]
    db = "/var/lib/alnett-edge/cells.db"
    snapshots = "/var/lib/alnett-edge/snapshots"
    max_pending_cells = 10000  # held in memory while the database cannot be written, then a clean stop

    [http]
    host = "127.0.0.1"       # another address needs a token
    port = 8080
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from alnett_edge.errors import ConfigError
from alnett_edge.vision.cells import QualityConfig
from alnett_edge.vision.centres import CentreFinder
from alnett_edge.vision.detector import DetectorConfig
from alnett_edge.vision.optics import OpticsConfig
from alnett_edge.vision.tracking import TrackingConfig

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
#: the most frames the capture queue may hold (memory: a 2592x1944 frame is 15 MB)
MAX_QUEUE = 256


@dataclass
class SourceConfig:
    spec: str = ""
    width: int = 0  # camera frame width in pixels (0: the camera's own)
    height: int = 0  # camera frame height in pixels (0: the camera's own)
    fps: float = 0.0  # camera frame rate, or the pace files and folders are replayed at (0: a file waits for the pipeline)
    exposure: float = 0.0  # exposure in microseconds where the camera supports it (0: automatic)
    loop: bool = False  # files and folders: start again at the end
    stall_timeout: float = 5.0
    backoff_min: float = 0.5  # seconds before the first reconnection attempt (doubling after each failure)
    backoff_max: float = 30.0  # seconds between reconnection attempts at most
    queue: int = 8


@dataclass
class RuntimeConfig:
    bundle: str = ""  # the bundle folder or .tar.gz (export's output)
    backend: str = ""
    threads: int = 0  # inference threads; 0: every core but one (capture and detection need one)
    # crops per model call; 0: the runtime's own (a fixed-profile engine's batch), else 1. On 2 AVX2
    # cores alnett-s at batch 3 costs 3x batch 1 (ONNX Runtime, 1 thread: 14.2 against 4.5 ms), and
    # ONNX Runtime's arena keeps its largest batch's blocks (the daemon's RSS: 137 MB at batch 1, 170
    # at up to 8, BCCD held 1 s): batching pays on a GPU, not here
    max_batch: int = 0  # crops classified in one call at most (0: all of a frame's)


@dataclass
class SinkConfig:
    db: str = "alnett-edge.db"  # SQLite database: the store of record (one row a decided cell, a row a session)
    jsonl: str = ""  # also append every cell as a JSON line here (a copy)
    snapshots: str = ""  # annotated frames (JPEG) written here: every snapshot_every frames and on each blast
    crops: str = ""  # a JPEG of each decided cell as the model saw it (alnett-edge report shows them)
    snapshot_every: int = 100  # frames between two snapshots
    snapshot_min_interval_s: float = 1.0  # at most one blast snapshot per interval
    max_pending_cells: int = 10000  # rows held in memory while the database cannot be written; then stop
    max_pending_s: float = 300.0  # and at most this long (10,000 cells at 30 fps with 3 cells a frame: ~110 s)


@dataclass
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8080  # 0 = no HTTP server
    token: str = ""  # the token another address needs (also ALNETT_EDGE_HTTP_TOKEN); a browser signs in with it once
    preview: bool = False  # /preview.mjpg of annotated frames
    read_only: bool = False  # a screen in the corridor: the page and the API answer, nothing can be changed
    label_dataset: str = ""  # a harvest labelled on the device page (/label), and where "wrong" cells go
    labeller: str = "device"  # the name the device page's labels are saved under (DATASET/labels/NAME.csv)


@dataclass
class RunConfig:
    max_frames: int = 0  # 0 = until stopped
    duration: float = 0.0  # seconds; 0 = until stopped
    target_cells: int = 0  # a differential of N decided cells: say so when reached (log, /status, on_target)
    on_target: str = ""  # a command run once when the target is reached (a beep, an LED); no shell
    stop_at_target: bool = False  # stop the session when the target is reached
    session_name: str = ""  # the slide's name in the database (the device page starts named sessions too)


@dataclass
class DaemonConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    optics: OpticsConfig = field(default_factory=OpticsConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sinks: SinkConfig = field(default_factory=SinkConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> None:
        for name in ("source", "runtime", "optics", "detector", "quality", "tracking", "sinks", "http", "run"):
            section = getattr(self, name)
            for f in dataclasses.fields(section):
                value = getattr(section, f.name)
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                # every number of the config is a count, a size, a time or a rate: finite and >= 0
                if not math.isfinite(value) or value < 0:
                    raise ConfigError(f"[{name}] {f.name} must be a finite number >= 0, got {value!r}")
        self.detector.validate()
        if self.detector.centres:  # opened now: a bad model is a one-line error at start, not after calibration
            CentreFinder(self.detector.centres, self.detector.centre_threshold)
        self.tracking.validate()
        self.optics.resolve()  # magnification without a pixel pitch, or two pixel sizes that disagree
        if self.optics.rbc_um <= 0 or self.optics.calibration_frames < 1:
            raise ConfigError("[optics] rbc_um must be > 0 and calibration_frames >= 1")
        if not self.runtime.bundle:
            raise ConfigError("no bundle: pass --bundle or set [runtime] bundle in the config")
        if not self.source.spec:
            raise ConfigError("no source: pass --source or set [source] spec in the config")
        if not 1 <= self.source.queue <= MAX_QUEUE or self.runtime.max_batch < 0:
            raise ConfigError(f"[source] queue must be 1..{MAX_QUEUE} frames (each a whole frame in memory: 0.9 MB at "
                              f"640x480, 15 MB at 2592x1944) and [runtime] max_batch >= 0")
        if self.source.stall_timeout <= 0 or self.source.backoff_min <= 0 or self.source.backoff_max < self.source.backoff_min:
            raise ConfigError("[source] stall_timeout and backoff_min must be > 0 and backoff_max >= backoff_min")
        if not 0 <= self.http.port <= 65535:
            raise ConfigError(f"[http] port must be 0..65535, got {self.http.port}")
        if self.http.port and self.http.host not in LOCAL_HOSTS and not self.http.token:
            raise ConfigError(f"binding HTTP to {self.http.host} (not localhost) needs a token: --http-token or [http] token")
        if self.http.label_dataset and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}", self.http.labeller):
            raise ConfigError(f"[http] labeller {self.http.labeller!r}: 1 to 40 letters, digits, '.', '_' or '-'")
        if self.run.on_target and not self.run.target_cells:
            raise ConfigError("[run] on_target needs target_cells (--target-cells N)")
        if self.quality.out_of_distribution not in ("abstain", "record", "off"):
            raise ConfigError("[quality] out_of_distribution must be abstain, record or off")
        if not 0 <= self.quality.min_confidence <= 1:
            raise ConfigError("[quality] min_confidence must be in [0, 1]")


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    want = type(default)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise ConfigError(f"[{section}] {key} must be {want.__name__}, got {type(value).__name__} {value!r}")
    return value


def _section(obj: Any, name: str, values: dict[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table")
    known = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"[{name}] has unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return dataclasses.replace(obj, **{k: _coerce(name, k, v, known[k]) for k, v in values.items()})


def build_config(data: dict[str, Any], overrides: dict[str, dict[str, Any]] | None = None) -> DaemonConfig:
    cfg = DaemonConfig()
    sections = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(data) - sections)
    if unknown:
        raise ConfigError(f"unknown config section(s) {', '.join(unknown)}; sections: {', '.join(sorted(sections))}")
    for name, values in data.items():  # `source = 5` is a value where a [source] table belongs
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}] must be a table of settings, got {type(values).__name__} {values!r:.40}")
    merged = {k: dict(v) for k, v in data.items()}
    for name, values in (overrides or {}).items():
        merged.setdefault(name, {}).update({k: v for k, v in values.items() if v is not None})
    for name, values in merged.items():
        setattr(cfg, name, _section(getattr(cfg, name), name, values))
    cfg.validate()
    return cfg


def load_config(path: str | Path | None, overrides: dict[str, dict[str, Any]] | None = None) -> DaemonConfig:
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"{path} is not a text file (not UTF-8); the config is TOML text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    return build_config(data, overrides)
