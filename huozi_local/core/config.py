"""Where huozi-local keeps things, and the user's settings.

One environment variable, HUOZI_HOME, moves every path (config, data, models, cache) under one
folder: tests use it to stay out of the real home, and portable installs use it to live on a USB
disk. Without it the platform's conventional folders are used (platformdirs). Nothing is created
at import time; folders are made when something is first written.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from huozi_local.core.errors import HuoziError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

APP_NAME = "huozi-local"
HOME_ENV = "HUOZI_HOME"


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
        home = env.get(HOME_ENV)
        if home:
            root = Path(home).expanduser()
            return cls(root / "config", root / "data", root / "models", root / "cache")
        import platformdirs

        data = Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
        return cls(
            config_dir=Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)),
            data_dir=data,
            models_dir=Path(env.get("HUOZI_MODELS_DIR", str(data / "models"))).expanduser(),
            cache_dir=Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False)),
        )


@dataclass
class Settings:
    """User-adjustable settings, persisted as TOML. Unknown keys are kept out, not fatal."""

    model: str = ""
    system_prompt: str = "你是一个智能助手"
    temperature: float = 0.2
    top_p: float = 0.9
    repeat_penalty: float = 1.1
    max_tokens: int = 2048
    max_context: int = 32768
    n_ctx: int = 0
    n_gpu_layers: int = -1
    cpu_moe: int = -1  # MoE: layers whose experts stay in RAM; -1 = planned, 0 = none
    seed: int = -1
    download_source: str = ""
    """Where models download from: "hf", "mirror" or "modelscope"; "" until setup has probed."""
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
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise HuoziError(f"config {path} is not valid TOML: {exc}") from exc
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                extra[key] = value
                continue
            expected = type(getattr(cls(), key))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
                raise HuoziError(
                    f"config {path}: '{key}' must be {expected.__name__}, got {value!r}"
                )
            values[key] = value
        return cls(**values, extra=extra)

    def save(self, path: Path) -> None:
        """Write atomically so a crash never leaves a half-written config."""
        data = asdict(self)
        extra = data.pop("extra")
        lines = [f"{key} = {_toml_value(value)}" for key, value in {**data, **extra}.items()]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    raise HuoziError(f"cannot store {value!r} in the config")
