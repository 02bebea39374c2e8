"""Settings: the system prompt, sampling, context, GPU layers and MoE expert layers kept in RAM,
the model/quant in use, and where models download from.

The planner's memory estimate is recomputed on every change to the context length, GPU layers or
MoE layers in RAM, so the person sees what a choice costs before they apply it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Select, TextArea

from huozi_local.core.config import AUTO, Paths, Settings, check_setting
from huozi_local.core.control_text import visible
from huozi_local.core.errors import HuoziError
from huozi_local.core.loading.inputs import LoadOverrides, overrides_after_edit
from huozi_local.core.planning.hardware import Machine
from huozi_local.tui.session import ModelInfo
from huozi_local.tui.setup_plan import memory_estimate_text
from huozi_local.tui.widgets.plain import Label, Static, lines, one_line

NUMBER_FIELDS: tuple[tuple[str, str, type[int] | type[float]], ...] = (
    ("temperature", "温度 Temperature", float),
    ("top_p", "Top-p", float),
    ("repeat_penalty", "重复惩罚 Repeat penalty", float),
    ("max_tokens", "最大生成长度 Max tokens", int),
    ("n_ctx", "上下文长度 Context length (auto = planned)", int),
    ("n_gpu_layers", "GPU 层数 GPU layers (auto = planned, all = every layer)", int),
    ("cpu_moe", "专家留在内存的层数 MoE layers with experts in RAM (auto = planned)", int),
    (
        "prompt_cache_ram_mib",
        "对话缓存内存 Prompt cache in RAM, MiB (auto; from the next load)",
        int,
    ),
    (
        "prompt_cache_disk_mib",
        "对话缓存磁盘 Prompt cache on disk, MiB (auto; from the next load)",
        int,
    ),
)
AUTO_FIELDS = frozenset(
    {"n_ctx", "n_gpu_layers", "cpu_moe", "prompt_cache_ram_mib", "prompt_cache_disk_mib"}
)
"""Fields that may say "auto" (and n_gpu_layers "all"), as config.toml does."""


def _shown(name: str, value: object) -> str:
    return AUTO if value is None and name in AUTO_FIELDS else str(value)


def _parsed(name: str, kind: type[int] | type[float], raw: str) -> object:
    """The typed text as the setting holds it; words go to check_setting, which knows them."""
    if name in AUTO_FIELDS and (not raw or raw.isalpha()):
        return raw.lower() or AUTO
    return kind(raw)


SOURCE_CHOICES: list[tuple[str, str]] = [
    ("Hugging Face (huggingface.co)", "hf"),
    ("Hugging Face mirror 镜像", "mirror"),
    ("ModelScope 魔搭", "modelscope"),
]


class SettingsScreen(ModalScreen[Settings | None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "save", "Save"),
    ]

    def __init__(
        self,
        settings: Settings,
        paths: Paths,
        model: ModelInfo | None,
        machine: Machine,
        overrides: LoadOverrides | None = None,
    ) -> None:
        super().__init__()
        self.machine = machine
        self.overrides = overrides or LoadOverrides()
        self.settings = settings
        self.paths = paths
        self.model = model

    def compose(self) -> ComposeResult:
        from huozi_local.core.fetch.model_folder import installed_models

        specs = [f"{m.family}:{m.quant}" for m in installed_models(self.paths)]
        if self.settings.model and self.settings.model not in specs:
            specs.insert(0, self.settings.model)  # a path or hf: spec, which may hold `[b]`
        models = [(one_line(spec), spec) for spec in specs]
        with VerticalScroll():
            yield Label("设置 Settings", classes="section-title")
            yield Label("系统提示 System prompt")
            yield TextArea(lines(self.settings.system_prompt), id="system_prompt", soft_wrap=True)
            for name, title, _kind in NUMBER_FIELDS:
                yield Label(title)
                yield Input(visible(_shown(name, getattr(self.settings, name))), id=name)
            yield Checkbox(
                "保存离开的对话的 KV 缓存 Keep the KV cache of conversations left (prompt cache)",
                self.settings.prompt_cache,
                id="prompt_cache",
            )
            yield Label("模型 Model / quant")
            yield Select(
                models,
                value=self.settings.model if models else Select.NULL,
                allow_blank=not models,
                id="model",
            )
            yield Label("下载来源 Download from (setup and `huozi-local download`)")
            yield Select(
                SOURCE_CHOICES,
                value=self.settings.download_source or Select.NULL,
                prompt="自动 Automatic (probe in setup)",
                id="download_source",
            )
            yield Label("镜像 Mirror (for the mirror source; empty: https://hf-mirror.com)")
            yield Input(visible(self.settings.mirror_endpoint), id="mirror_endpoint")
            yield Static("", id="estimate", classes="muted")
            with Horizontal():
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#system_prompt", TextArea).styles.height = 5
        self._update_estimate()

    def _read(self) -> Settings | None:
        numbers: dict[str, object] = {}
        for name, title, kind in NUMBER_FIELDS:
            raw = self.query_one(f"#{name}", Input).value.strip()
            try:
                numbers[name] = _parsed(name, kind, raw)
            except ValueError:
                message = f"{title}: '{raw}' is not a number"
                self.query_one("#estimate", Static).update(message)
                return None
        model = self.query_one("#model", Select).value
        source = self.query_one("#download_source", Select).value
        mirror = self.query_one("#mirror_endpoint", Input).value.strip().rstrip("/")
        if mirror and not mirror.startswith(("http://", "https://")):
            message = f"Mirror: '{mirror}' must start with https:// (or http://)"
            self.query_one("#estimate", Static).update(message)
            return None
        changed = replace(
            self.settings,
            model=model if isinstance(model, str) else self.settings.model,
            system_prompt=self.query_one("#system_prompt", TextArea).text,
            prompt_cache=self.query_one("#prompt_cache", Checkbox).value,
            download_source=source if isinstance(source, str) else "",
            mirror_endpoint=mirror,
        )
        try:
            for name, value in numbers.items():
                setattr(changed, name, check_setting(name, value))
            return changed.validate()  # the same ranges config.toml is held to
        except HuoziError as exc:
            self.query_one("#estimate", Static).update(str(exc))
            return None

    @on(Input.Changed)
    @on(Select.Changed)
    def _update_estimate(self) -> None:
        changed = self._read()
        if changed is not None:
            overrides = overrides_after_edit(self.overrides, self.settings, changed)
            estimate = memory_estimate_text(changed, self.paths, self.machine, overrides)
            self.query_one("#estimate", Static).update(estimate)

    @on(Button.Pressed, "#save")
    def action_save(self) -> None:
        changed = self._read()
        if changed is not None:
            self.dismiss(changed)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
