"""The one-line status bar: model, quant, GPU layers, context used / n_ctx, tokens/s."""

from __future__ import annotations

from huozi_local.tui.session import ModelInfo, ReplyStats
from huozi_local.tui.widgets.plain import Static, one_line


def status_text(model: ModelInfo, stats: ReplyStats, state: str = "") -> str:
    parts = [model.label]
    if model.location == "remote":
        parts.append("remote")
    else:
        if model.quant:
            parts.append(model.quant)
        experts = f" (experts of {model.n_cpu_moe} in RAM)" if model.n_cpu_moe else ""
        parts.append(f"GPU layers {model.n_gpu_layers}{experts}")
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
        # One line, never markup: the label is a file's name or a server's model id (`[/INST]`
        # in one made the app crash at start, an ESC in one reached the terminal).
        self.update(one_line(status_text(model, stats, state)))
