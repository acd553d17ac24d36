"""Daemon settings: one YAML file per process, INSPECTD_* environment variables on top.

Nested fields use `__` in the environment, e.g. INSPECTD_SPOOL__MAX_FRAMES=500 or
INSPECTD_TRANSPORT__FRAMES_BIND=tcp://0.0.0.0:5555. Precedence: environment > YAML file >
defaults. Any validation problem becomes one ConfigError naming the file and the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inspectd.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_SETTINGS_FILE = CONFIG_DIR / "demo.yaml"
# camera ids end up in topics and spool file names: keep them to a safe alphabet
NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"  # no leading dot
Device = Literal["auto", "cpu", "cuda"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in the YAML is an error, not ignored


class DemoSettings(Section):
    """The synthetic production line: texture parts with cut-paste defects (truth kept)."""

    texture: Literal["brick", "gravel", "grass"] = "brick"
    defect_rate: float = Field(0.3, ge=0.0, le=1.0)
    area_range: tuple[float, float] = (0.005, 0.05)
    seed: int = 0
    # `inspectd run`: measure the refiner at start and run the demo line at a rate it can take
    # (inspectd/service/pacing.py); off, the line runs at capture.fps whatever the refiner does
    pace_to_refiner: bool = True


class CaptureSettings(Section):
    source: Literal["demo", "folder", "video"] = "demo"
    # video: device index ("0"), file path or rtsp:// / http:// URL; folder: a directory
    uri: str | None = None
    watch: bool = False  # folder source: keep polling for new files
    poll_s: float = Field(0.5, gt=0)
    size: int | None = Field(256, ge=16)  # frames are resized to size x size (None: keep)
    fps: float = Field(10.0, ge=0)  # upper bound on the frame rate (0: as fast as frames come)
    max_frames: int | None = Field(None, ge=0)  # stop the source after this many frames
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    demo: DemoSettings = DemoSettings()

    @model_validator(mode="after")
    def _uri_needed(self):
        if self.source in ("folder", "video") and not self.uri:
            raise ValueError(f"source {self.source!r} needs capture.uri")
        return self


class ScreeningSettings(Section):
    model: Path | None = None  # bundle directory with the ONNX screening graph
    threshold: float | None = None  # overrides the bundle's image threshold
    device: Device = "auto"
    # screen the native frame in overlapping windows instead of downscaled whole, for defects too
    # small to see in a downscaled frame: the model must then be a tile bundle (`inspectd fit
    # --tile T`), whose T x T windows are screened at the scale it was fitted at (README "Native
    # resolution"); it costs one screening pass per window
    tiles: bool = False
    tile_overlap: int | None = Field(None, ge=0)  # px neighbouring windows share; None: an eighth of a tile


class PreviewSettings(Section):
    """The optional JPEG a result carries for people (inspectd/service/preview.py; `inspectd view`)."""

    kind: Literal["off", "frame", "defects"] = "off"  # frame: the whole frame; defects: around them
    max_side: int = Field(640, ge=32, le=4096)  # longest side of the picture, pixels
    max_bytes: int = Field(65536, ge=1024, le=1048576)  # quality, then size, step down to fit


class RefinerSettings(Section):
    model: Path | None = None  # bundle directory with the torch state for F2PAD
    device: Device = "auto"
    # smaller connected regions are not reported as defects; None: the bundle's calibrated value
    min_area_px: int | None = Field(None, ge=1)
    # F2PAD settings (inspectd/refine/settings.py: lam, tau, close_px, ...) that override the
    # bundle's calibrated ones for this line; unset keys keep the bundle's
    f2pad: dict = Field(default_factory=dict)
    # a whole-frame bundle on frames larger than its size: "upsample" refines the frame shrunk to
    # the bundle's size and upsamples the mask; "native" solves F2PAD at the frame's own pixels
    # with the bundle's features taken at its scale (README "Native resolution")
    whole_frame: Literal["upsample", "native"] = "upsample"
    # a frame is given up (published as decision "error", moved to the dead-letter folder beside
    # the spool) after refining it failed this many times, or a refiner died on it this many times
    max_attempts: int = Field(3, ge=1)
    preview: PreviewSettings = PreviewSettings()

    @field_validator("f2pad")
    @classmethod
    def _known_f2pad_settings(cls, value: dict) -> dict:
        from inspectd.refine.settings import F2PADSettings

        if "device" in value or "threshold" in value:
            raise ValueError("set the device with refiner.device; the threshold comes from the bundle")
        try:
            F2PADSettings.from_dict(value)
        except (ConfigError, TypeError) as exc:
            raise ValueError(str(exc)) from None
        return value


class CurveSettings(Section):
    """CURVE keys (see `inspectd keys`); all three set turns encryption and authentication on."""

    secret_key: Path | None = None  # this process's own certificate, with its secret key
    server_public_key: Path | None = None  # public certificate of the servers this process connects to
    authorized_clients: Path | None = None  # folder of public certificates allowed to connect to us

    @property
    def enabled(self) -> bool:
        return self.secret_key is not None

    @model_validator(mode="after")
    def _all_or_nothing(self):
        given = [n for n in ("secret_key", "server_public_key", "authorized_clients") if getattr(self, n)]
        if given and len(given) < 3:
            missing = sorted({"secret_key", "server_public_key", "authorized_clients"} - set(given))
            raise ValueError(f"CURVE needs all three keys; missing {', '.join(missing)}")
        return self


class TransportSettings(Section):
    frames_bind: str = "tcp://127.0.0.1:5555"  # capture binds PUSH here
    frames_connect: list[str] = ["tcp://127.0.0.1:5555"]  # refiner connects PULL to every capture
    results_bind: str = "tcp://127.0.0.1:5556"  # refiner binds PUB here (one port per refiner)
    results_connect: list[str] = ["tcp://127.0.0.1:5556"]  # capture and watch SUBscribe to every refiner
    hwm: int = Field(100, ge=1)  # messages queued per peer before sends wait or drop
    # flagged frames queued per refiner connection on each side of the frame path: small, so a
    # busy (or cut-off) refiner holds few frames while others idle; the spool is the queue
    frames_hwm: int = Field(1, ge=1)
    # larger frame messages are rejected: a 5 MP camera frame is about 10 MiB as PNG, 20 MP about 40
    max_message_bytes: int = Field(64 * 2**20, ge=1024)
    # frames and masks declaring more pixels are refused from their header, before decoding
    # (capture and refiner): bounds memory; 25 MP covers a 20 MP camera
    max_frame_pixels: int = Field(25_000_000, ge=256)
    # what a flagged frame's message carries: "frame", the whole frame (schema 3), or "crops", only
    # the native pixels the tile refiner reads around the flagged regions (schema 4; needs
    # refiner.model to be a tile bundle, `inspectd fit --tile`): at 5 MP about 20x fewer bytes
    frame_payload: Literal["frame", "crops"] = "frame"
    # a (re)started refiner publishes nothing for this long after binding PUB, so subscribers
    # (capture's ack listener, watch, the PLC) reconnect first: PUB drops what they miss
    pub_grace_s: float = Field(1.0, ge=0)
    # refiners publish a heartbeat this often; capture takes a refiner for dead after 3 missed
    # ones and resends its frames at once (0: no heartbeats, resends after ack_timeout_s only)
    heartbeat_s: float = Field(1.0, ge=0)
    # a peer that keeps failing the handshake (wrong CURVE key) is retried ever more slowly, up to this
    handshake_backoff_max_s: float = Field(30.0, gt=0)
    curve: CurveSettings = CurveSettings()

    @field_validator("frames_bind", "results_bind")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return check_endpoint(value)

    @field_validator("frames_connect", "results_connect")
    @classmethod
    def _endpoints(cls, values: list[str]) -> list[str]:
        if not values:
            raise ValueError("needs at least one endpoint")
        return [check_endpoint(v) for v in values]


class SpoolSettings(Section):
    dir: Path = Path("spool")
    max_frames: int = Field(1000, ge=1)
    max_bytes: int = Field(512 * 2**20, ge=1024)
    ack_timeout_s: float = Field(30.0, gt=0)
    # drop_oldest keeps the line's newest frames; reject_new keeps what is already waiting
    full_policy: Literal["drop_oldest", "reject_new"] = "drop_oldest"
    dead_letter_dir: Path | None = None  # frames the refiners gave up on (None: `<dir>-dead-letter` beside it)


class DriftSettings(Section):
    """The capture's score-drift monitor (inspectd/deploy/drift.py): the last `window` screening
    scores against the bundle's held-out normal scores, a KS statistic every `every` frames."""

    enabled: bool = True
    window: int = Field(200, ge=10)
    min_frames: int = Field(50, ge=5)  # no reading before this many frames
    every: int = Field(10, ge=1)
    threshold: float = Field(0.5, gt=0, le=1)  # KS statistic above which the capture logs (and alerts fire)


class MqttSettings(Section):
    """`inspectd bridge mqtt`: where results are republished (topic layout in docs/messages.md)."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str = Field("inspectd-bridge", pattern=NAME_PATTERN)
    username: str | None = None
    password_file: Path | None = None  # a file holding the password, so it stays out of the settings
    tls_ca: Path | None = None  # CA certificate: TLS to the broker
    topic_prefix: str = Field("inspectd", pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")  # no wildcards
    qos: Literal[0, 1, 2] = 1
    retain: bool = True  # the broker keeps each camera's last result for subscribers that connect later
    mask: Literal["topic", "base64", "none"] = "topic"  # PNG on <prefix>/<camera>/mask, or inside the JSON
    queue_max: int = Field(1000, ge=1)  # results held while the broker is away; beyond: oldest dropped, counted
    max_inflight: int = Field(20, ge=1)  # published, not yet acknowledged by the broker
    keepalive_s: int = Field(30, ge=5)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)


class ViewSettings(Section):
    """`inspectd view`: the live web page of results."""

    host: str = "127.0.0.1"  # bind a LAN address only behind a trusted network or a reverse proxy
    port: int = Field(8090, ge=0, le=65535)
    last_n: int = Field(12, ge=1, le=200)  # results kept and shown per camera
    in_run: bool = True  # `inspectd run` (make run) serves the view too and prints its URL


class MetricsSettings(Section):
    host: str = "127.0.0.1"
    port: int | None = Field(9108, ge=0, le=65535)  # None: no HTTP endpoint; 0: any free port


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INSPECTD_", env_nested_delimiter="__", extra="forbid")

    camera_id: str = Field("cam0", pattern=NAME_PATTERN)
    px_per_mm: float | None = Field(None, ge=1e-3, le=1e5)  # as the frame header's range (messages.py)
    capture: CaptureSettings = CaptureSettings()
    screening: ScreeningSettings = ScreeningSettings()
    refiner: RefinerSettings = RefinerSettings()
    transport: TransportSettings = TransportSettings()
    spool: SpoolSettings = SpoolSettings()
    drift: DriftSettings = DriftSettings()
    mqtt: MqttSettings = MqttSettings()
    view: ViewSettings = ViewSettings()
    metrics: MetricsSettings = MetricsSettings()

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        # the YAML file arrives as init values; the environment must win over it
        return env_settings, init_settings


def check_endpoint(value: str) -> str:
    if not re.match(r"^(tcp|ipc|inproc)://\S+$", value):
        raise ValueError(f"{value!r} is not a ZeroMQ endpoint such as tcp://127.0.0.1:5555")
    return value


def load_settings(path: str | Path | None = None) -> Settings:
    """Settings from `path` (default configs/demo.yaml) with INSPECTD_* overrides applied."""
    path = Path(path) if path else DEFAULT_SETTINGS_FILE
    data = read_yaml(path)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe(exc)}") from None


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read settings file ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def describe(exc: ValidationError) -> str:
    """All problems on one line: field path, what is wrong, the value, the env variable."""
    problems = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        env = "INSPECTD_" + "__".join(str(p) for p in err["loc"]).upper()
        value = f" (got {err['input']!r})" if err["type"] != "missing" and not isinstance(err["input"], dict) else ""
        problems.append(f"setting {field}: {err['msg']}{value} [env {env}]")
    return "; ".join(problems)
