"""Where huozi-local keeps things, and the user's settings.

One environment variable, HUOZI_HOME, moves every path (config, data, models, cache) under one
folder: tests use it to stay out of the real home, and portable installs use it to live on a USB
disk. Without it the platform's conventional folders are used (platformdirs). HUOZI_MODELS_DIR
moves only the models (tens of GB) and, being the narrower setting, wins over HUOZI_HOME, as
HF_HUB_CACHE does over HF_HOME: it is what a full disk's message tells people to set. Nothing is
created at import time; folders are made when something is first written.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal, cast

from huozi_local.core import huozi
from huozi_local.core.errors import HuoziError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

APP_NAME = "huozi-local"
CONFIG_ENCODING = "utf-8-sig"
"""UTF-8, with or without a byte-order mark: Windows Notepad (before 2019) and some editors put
one at the start of every "UTF-8" file, where TOML parsers read it as a stray character
("Invalid statement at line 1, column 1") and the user cannot see what is wrong. The mark can mean
nothing else there, so it is read past rather than refused; saving writes plain UTF-8."""
HOME_ENV = "HUOZI_HOME"
MODELS_ENV = "HUOZI_MODELS_DIR"


@dataclass(frozen=True)
class Paths:
    """Every folder the app writes to."""

    config_dir: Path
    data_dir: Path
    models_dir: Path
    cache_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def database_file(self) -> Path:
        return self.data_dir / "huozi.sqlite3"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Paths:
        env = os.environ if environ is None else environ
        models = env.get(MODELS_ENV)
        models_dir = Path(models).expanduser() if models else None
        home = env.get(HOME_ENV)
        if home:
            root = Path(home).expanduser()
            return cls(
                root / "config", root / "data", models_dir or root / "models", root / "cache"
            )
        import platformdirs

        data = Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
        return cls(
            config_dir=Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)),
            data_dir=data,
            models_dir=models_dir or data / "models",
            cache_dir=Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False)),
        )


@dataclass(frozen=True)
class _Bounds:
    """The values a numeric setting may take; `allowed` are extra values outside the range."""

    low: float
    high: float
    low_exclusive: bool = False
    allowed: tuple[int, ...] = ()

    def admits(self, value: float) -> bool:
        if value in self.allowed:
            return True
        above = value > self.low if self.low_exclusive else value >= self.low
        return above and value <= self.high

    def describe(self) -> str:
        low = f"above {_shown(self.low)}" if self.low_exclusive else f"at least {_shown(self.low)}"
        text = f"{low} and at most {_shown(self.high)}"
        return " or ".join([*(str(v) for v in self.allowed), text])


def _shown(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


MIN_CONTEXT = 64
MAX_CONTEXT = 2**32 - 1  # llama.cpp keeps n_ctx in a uint32_t: anything larger wraps around
MAX_SEED = 2**32 - 2
"""The largest seed that is one: llama.cpp's seed is a uint32_t whose top value
(LLAMA_DEFAULT_SEED) means "draw a random one", so 4294967295 would silently not repeat."""

AUTO: Final = "auto"
"""How config.toml (and the settings screen) say "let the planner decide"; None in Python."""
ALL_LAYERS: Final = "all"
"""Every layer and the output on the GPU, however many the model has (n_gpu_layers)."""
GpuLayers = int | Literal["all"]
"""A number of layers to put on the GPU, or ALL_LAYERS."""

# Before "auto" existed these numbers meant "planned": config files written then still say so.
_LEGACY_AUTO: dict[str, int] = {"n_ctx": 0, "n_gpu_layers": -1, "cpu_moe": -1}
_AUTO_SETTINGS: dict[str, tuple[str, ...]] = {
    "n_ctx": (AUTO,),
    "n_gpu_layers": (AUTO, ALL_LAYERS),
    "cpu_moe": (AUTO,),
    "prompt_cache_ram_mib": (AUTO,),
    "prompt_cache_disk_mib": (AUTO,),
    "download_connections": (AUTO,),
}
"""Settings that may be left to the planner, and the words each accepts besides a number."""

# Every numeric setting has one range, checked on load and in the settings screen alike; a value
# outside it (or NaN) would otherwise reach the planner or the sampler (a max_context of 0 made
# the planner loop forever).
BOUNDS: dict[str, _Bounds] = {
    "temperature": _Bounds(0.0, 2.0),
    "top_p": _Bounds(0.0, 1.0),
    "repeat_penalty": _Bounds(0.0, 10.0, low_exclusive=True),
    "max_tokens": _Bounds(1, MAX_CONTEXT),
    "max_context": _Bounds(MIN_CONTEXT, MAX_CONTEXT),
    "n_ctx": _Bounds(MIN_CONTEXT, MAX_CONTEXT),
    "n_gpu_layers": _Bounds(0, 10_000),
    "cpu_moe": _Bounds(0, 10_000),
    "prompt_cache_ram_mib": _Bounds(0, 10_000_000),
    "prompt_cache_disk_mib": _Bounds(0, 100_000_000),
    "download_connections": _Bounds(1, 64),
    "seed": _Bounds(0, MAX_SEED, allowed=(-1,)),
}


@dataclass
class Settings:
    """User-adjustable settings, persisted as TOML.

    Keys this version does not know are kept in `extra` and left in the file untouched, so a
    config shared with a newer release survives a save. Every value is checked on load (type and
    range, one line naming the key) because a bad one would otherwise fail much later, far from
    its cause, or not at all (a zero `max_context` hung the planner).
    """

    model: str = ""
    system_prompt: str = huozi.DEFAULT_SYSTEM_PROMPT
    temperature: float = huozi.DEFAULT_TEMPERATURE
    top_p: float = huozi.DEFAULT_TOP_P
    repeat_penalty: float = huozi.DEFAULT_REPEAT_PENALTY
    max_tokens: int = huozi.DEFAULT_MAX_TOKENS
    max_context: int = 32768
    n_ctx: int | None = None
    """Context size; None ("auto"): the planner's."""
    n_gpu_layers: GpuLayers | None = None
    """Layers on the GPU (ALL_LAYERS: every one); None ("auto"): the planner's."""
    cpu_moe: int | None = None
    """MoE layers whose experts stay in RAM (0: none); None ("auto"): the planner's."""
    seed: int = -1
    prompt_cache: bool = True
    """Keep the KV states of conversations left, and restore them instead of evaluating."""
    prompt_cache_ram_mib: int | None = None
    """RAM for states of conversations left in this run; None ("auto"): from the plan's spare."""
    prompt_cache_disk_mib: int | None = None
    """Disk for states kept across runs; None ("auto"): a tenth of the free space, at most 20 GB."""
    download_source: str = ""
    """Where models download from: "hf", "mirror" or "modelscope"; "" until setup has probed."""
    download_connections: int | None = None
    """HTTP connections per file; None ("auto"): 8, as aria2c -x8 and hf-mirror's hfd use."""
    mirror_endpoint: str = ""
    """The Hugging Face mirror for `download_source = "mirror"` ("" is hf-mirror.com)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Settings:
        """Read settings; a missing file gives defaults, a malformed one a one-line error."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise HuoziError(f"cannot read config {path}: {exc.strerror}") from exc
        try:
            data = tomllib.loads(raw.decode(CONFIG_ENCODING))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise HuoziError(f"config {path} is not valid TOML: {exc}") from exc
        except RecursionError:  # tomllib parses nested arrays and tables by recursion
            raise HuoziError(
                f"config {path} is nested too deeply to read: settings are plain values"
            ) from None
        known = _setting_fields()
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                extra[key] = value
                continue
            try:
                values[key] = check_setting(key, value)
            except HuoziError as exc:
                raise HuoziError(f"config {path}: {exc}") from exc
        return cls(**values, extra=extra)

    def validate(self) -> Settings:
        """Check every value (the settings screen's edits, a caller's own Settings); returns
        self, or raises HuoziError naming the first bad key."""
        for name in _setting_fields():
            check_setting(name, getattr(self, name))
        return self

    def save(self, path: Path) -> None:
        """Write through tomlkit, atomically: the user's comments, order and unknown keys stay,
        and any string (a system prompt with `\\r` or an escape character) is quoted correctly."""
        import tomlkit

        self.validate()
        document = _existing_document(path)
        values = {name: _as_toml(getattr(self, name)) for name in _setting_fields()}
        for key, value in {**self.extra, **values}.items():
            if key not in document or document[key] != value:
                document[key] = value
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(tomlkit.dumps(document), encoding="utf-8")
        os.replace(tmp, path)


def _setting_fields() -> dict[str, type]:
    """Each persisted setting and the type of value the file must hold (a number for the
    settings that may also say "auto")."""
    types: dict[str, type] = {}
    for item in fields(Settings):
        if item.name == "extra":
            continue
        if item.name in _AUTO_SETTINGS:
            types[item.name] = int
        elif item.default is not MISSING:
            types[item.name] = type(item.default)
        elif item.default_factory is not MISSING:
            types[item.name] = type(item.default_factory())
    return types


def _as_toml(value: Any) -> Any:
    return AUTO if value is None else value


def check_setting(name: str, value: Any) -> Any:
    """`value` as setting `name` holds it (an int where a float belongs becomes a float; "auto",
    and the numbers that meant it before, become None), or a HuoziError saying, in one line,
    what the key must be."""
    if name in _AUTO_SETTINGS:
        return _check_auto_setting(name, value)
    expected = _setting_fields()[name]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
        kinds: dict[type, str] = {dict: "a table", list: "a list"}
        shown = kinds.get(type(value)) or repr(value)
        raise HuoziError(
            f"'{name}' must be {_TYPE_NAMES.get(expected, expected.__name__)}, got {shown}"
        )
    bounds = BOUNDS.get(name)
    number = cast(float, value)  # an int or a float here; ints may be huge, so never float()
    if bounds is not None and not (
        (isinstance(number, int) or math.isfinite(number)) and bounds.admits(number)
    ):
        raise HuoziError(f"'{name}' must be {bounds.describe()}, got {value}")
    return value


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _check_auto_setting(name: str, value: Any) -> int | str | None:
    words = _AUTO_SETTINGS[name]
    legacy = _LEGACY_AUTO.get(name)
    if value is None or value == AUTO or (type(value) is int and value == legacy):
        return None
    if isinstance(value, str) and value in words:
        return value
    bounds = BOUNDS[name]
    if isinstance(value, int) and not isinstance(value, bool) and bounds.admits(value):
        return value
    accepted = " or ".join([*(f'"{w}"' for w in words), f"an integer {bounds.describe()}"])
    kinds: dict[type, str] = {dict: "a table", list: "a list"}
    shown = kinds.get(type(value)) or repr(value)
    raise HuoziError(f"'{name}' must be {accepted}, got {shown}")


def _existing_document(path: Path) -> Any:
    """The config file as tomlkit reads it (comments and all), or an empty document."""
    import tomlkit

    try:
        return tomlkit.parse(path.read_text(encoding=CONFIG_ENCODING))
    except (OSError, UnicodeDecodeError, RecursionError, tomlkit.exceptions.TOMLKitError):
        return tomlkit.document()
