"""Where to download from: one radio button per source, each labelled with what its probe found.

The probes run in the setup screen's worker; this widget only shows their results and which
source is chosen. The first usable source is chosen once the probes are in, unless the user
already picked one (or a saved choice is usable): a probe result never overrides a person.
"""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import RadioButton, RadioSet

from huozi_local.core.fetch.sources import DownloadSource, ProbeResult, SourceKind
from huozi_local.tui.widgets.plain import one_line

CHECKING = "checking… 检测中"


class SourcePicker(Vertical):
    DEFAULT_CSS = """
    SourcePicker { height: auto; }
    SourcePicker RadioSet { width: 100%; }
    """

    def __init__(self, sources: Sequence[DownloadSource], saved: SourceKind | None) -> None:
        super().__init__(id="sources")
        self.sources = list(sources)
        self.saved = saved
        self.results: dict[SourceKind, ProbeResult] = {}
        self.user_chose = False
        self.chosen_kind: SourceKind | None = saved
        self._set_by_code: SourceKind | None = saved

    def compose(self) -> ComposeResult:
        with RadioSet(id="source-set"):
            for source in self.sources:
                yield RadioButton(
                    one_line(self._label(source, None)),
                    value=source.kind is self.saved,
                    id=_id(source.kind),
                )

    @staticmethod
    def _label(source: DownloadSource, result: ProbeResult | None) -> str:
        # Shown through one_line: a summary quotes the server's answer and the mirror's address.
        state = CHECKING if result is None else result.summary
        return f"{source.label}: {state}"

    def _button(self, kind: SourceKind) -> RadioButton:
        return self.query_one(f"#{_id(kind)}", RadioButton)

    def show_result(self, result: ProbeResult) -> None:
        self.results[result.source.kind] = result
        self._button(result.source.kind).label = one_line(self._label(result.source, result))

    def preselect(self) -> DownloadSource | None:
        """After the probes: keep a person's choice, else the saved one if usable, else the
        first usable source. Returns what is chosen."""
        if not self.user_chose:
            usable = [s for s in self.sources if self._usable(s.kind)]
            saved = next((s for s in usable if s.kind is self.saved), None)
            pick = saved or (usable[0] if usable else None)
            if pick is not None:
                self.choose(pick.kind)
        return self.selected

    def _usable(self, kind: SourceKind) -> bool:
        result = self.results.get(kind)
        return result is not None and result.usable

    def choose(self, kind: SourceKind) -> None:
        """Select a source from code (a probe's preselection is not the user's choice)."""
        self._set_by_code = kind
        self.chosen_kind = kind
        self._button(kind).value = True

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        # Changes arrive as messages, after `choose` returned: compare rather than flag.
        pressed = next((s.kind for s in self.sources if event.pressed.id == _id(s.kind)), None)
        if pressed is not None and pressed is not self._set_by_code:
            self.user_chose = True
            self.chosen_kind = pressed

    @property
    def selected(self) -> DownloadSource | None:
        return next((s for s in self.sources if s.kind is self.chosen_kind), None)

    def result_for(self, kind: SourceKind) -> ProbeResult | None:
        return self.results.get(kind)


def _id(kind: SourceKind) -> str:
    return f"source-{kind.value}"
