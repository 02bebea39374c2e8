"""The one-line status bar: model, quant, GPU layers, context used / n_ctx, tokens/s."""

from __future__ import annotations

from textual.widgets import Static

from huozi_local.tui.session import ModelInfo, ReplyStats


def status_text(model: ModelInfo, stats: ReplyStats, state: str = "") -> str:
    gpu = "all" if model.n_gpu_layers < 0 else str(model.n_gpu_layers)
    parts = [model.label]
    if model.location == "remote":
        parts.append("remote")
    elif model.quant:
        parts.append(model.quant)
    parts.append(f"GPU layers {gpu}")
    parts.append(f"ctx {stats.context_used}/{model.n_ctx}")
    parts.append(f"{stats.tokens_per_s:.1f} tok/s" if stats.tokens_per_s else "– tok/s")
    if state:
        parts.append(state)
    return " │ ".join(parts)


class StatusBar(Static):
    DEFAULT_CSS = """
    StatusBar { height: 1; background: $panel; color: $text-muted; padding: 0 1; }
    """

    def show(self, model: ModelInfo, stats: ReplyStats, state: str = "") -> None:
        self.update(status_text(model, stats, state))
