"""The chat screen: saved conversations on the left, the streamed conversation on the right.

Generation runs in a thread worker that only posts messages. Text arrives in a lock-protected
buffer and at most one "there is text" message is queued at a time, so the model never waits for
the screen. The screen draws what piled up at most every DRAW_INTERVAL_S: Markdown re-parses the
open paragraph on every append, and the UI thread shares the GIL with the generating thread, so
fewer, larger appends are what keep generation at full speed (benchmarks/bench_tui.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer

from huozi_local.core.chat.types import ContextTrimmed, Notice, ReplyResult, TextDelta
from huozi_local.core.errors import HuoziError
from huozi_local.tui.failures import RecoveringScreen, Recovery
from huozi_local.tui.messages import SettingsRequested
from huozi_local.tui.remedies import app_wording
from huozi_local.tui.screens.dialogs import Confirm, TextPrompt
from huozi_local.tui.screens.reply_stream import (
    DRAW_INTERVAL_S,
    UI_SHARE_OF_WALL,
    PendingText,
    ReplyEnded,
    ReplyNotice,
    ReplyText,
)
from huozi_local.tui.session import ChatSession
from huozi_local.tui.widgets.chat_input import ChatInput
from huozi_local.tui.widgets.conversation_list import ConversationList
from huozi_local.tui.widgets.message_view import MessageView
from huozi_local.tui.widgets.plain import lines
from huozi_local.tui.widgets.status_bar import StatusBar


class ChatScreen(RecoveringScreen):
    """Keys avoid those TextArea edits with (Ctrl+E/D/X/Y/A/K/U/W), so typing stays usual."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "stop", "Stop reply"),
        Binding("ctrl+r", "regenerate", "Regenerate"),
        Binding("f3", "edit_last", "Edit last"),
        Binding("f4", "copy_last", "Copy reply"),
        Binding("ctrl+n", "new_conversation", "New"),
        Binding("f2", "rename", "Rename"),
        Binding("f8", "delete", "Delete"),
        Binding("ctrl+o", "export('markdown')", "Export .md"),
        Binding("ctrl+s", "settings", "Settings"),
        Binding("ctrl+b", "toggle_sidebar", "Sidebar", show=False),
    ]

    def __init__(self, session: ChatSession, exports_dir: Path) -> None:
        super().__init__()
        self.session = session
        self.exports_dir = exports_dir
        self.pending = PendingText()
        self.cancel_event: threading.Event | None = None
        self.replying = False
        self.editing = False
        self.replies_finished = 0
        """Counts ended replies (tests and the benchmark wait on it rather than on a clock)."""
        self._search = ""
        self._live: MessageView | None = None
        self._reply_shown = asyncio.Event()
        self._next_draw_at = 0.0
        self._ui_cpu_at_last_draw = 0.0
        self._draw_scheduled = False
        self.stream_writes = 0
        """How many appends the streamed reply took (the benchmark reports it)."""
        self._told_save_error = False

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield ConversationList(id="sidebar")
            with Vertical(id="main"):
                yield VerticalScroll(id="messages")
                yield ChatInput(id="prompt", placeholder="输入消息，Enter 发送，Ctrl+J 换行")
        yield StatusBar(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        conversations = self.session.store.list_conversations()
        await self.open_conversation(conversations[0].id if conversations else None)
        self.query_one(ChatInput).focus()

    # -- showing -----------------------------------------------------------------------------

    @property
    def message_log(self) -> VerticalScroll:
        return self.query_one("#messages", VerticalScroll)

    def message_views(self) -> list[MessageView]:
        return list(self.message_log.query(MessageView))

    async def open_conversation(self, conversation_id: int | None) -> None:
        stored = self.session.open(conversation_id)
        log = self.message_log
        await log.remove_children()
        await log.mount_all(
            [MessageView(m.role, m.content, note=_note_for(m.meta)) for m in stored]
        )
        log.scroll_end(animate=False)
        await self.refresh_sidebar()
        self.refresh_status()

    async def refresh_sidebar(self) -> None:
        store = self.session.store
        found = store.search_conversations(self._search)
        await self.query_one(ConversationList).show(found, self.session.conversation_id)

    def refresh_status(self, state: str = "") -> None:
        self.query_one(StatusBar).show(self.session.model, self.session.last_stats, state)

    # -- sending and streaming ---------------------------------------------------------------

    @on(ChatInput.Submitted)
    async def _submitted(self, event: ChatInput.Submitted) -> None:
        if self.replying:
            self.notify("Wait for the reply, or press Escape to stop it", severity="warning")
            return
        text = event.text.strip("\n")
        event.chat_input.clear()
        if self.editing:
            self.editing = False
            self.session.edit_last_user_message(text)
            await self.open_conversation(self.session.conversation_id)
        else:
            new_conversation = self.session.conversation_id is None
            try:
                self.session.add_user_message(text)
            except HuoziError as exc:  # locked or read-only database: keep what was typed
                event.chat_input.insert(text)
                self.notify(str(exc), severity="error", timeout=10)
                return
            self.begin_reply()  # the model reads the prompt while the screen shows the message
            await self.message_log.mount(MessageView("user", text))
            if new_conversation:
                await self.refresh_sidebar()
            await self.show_reply()
            return
        await self.start_reply()

    async def start_reply(self) -> None:
        self.begin_reply()
        await self.show_reply()

    def begin_reply(self) -> None:
        """Start the model on the conversation as saved.

        Called before the screen mounts what the reply needs: evaluating the prompt (on a GPU,
        or with a core to spare) overlaps that layout instead of waiting for it. The worker's
        messages wait for `show_reply` to have mounted the view they draw into: queued behind the
        handler that called this one when it runs in this screen's queue, and held by
        `_reply_shown` when it does not (Ctrl+R runs as the app's action, and a reply that fails
        at once used to end, and clear the view, while the view was still being mounted).
        """
        self.replying = True
        self._reply_shown = asyncio.Event()
        self._next_draw_at = 0.0
        # The first interval counts what sending cost the UI thread (mounting the reply, the
        # layout it triggers): that work overlaps the first tokens just as a draw does.
        self._ui_cpu_at_last_draw = time.thread_time()
        self.cancel_event = threading.Event()
        self.refresh_status("生成中 generating…")
        recovery = Recovery(
            "the reply",
            retry=lambda: self.call_later(self.action_regenerate),
            # the reply stops; what was sent stays saved
            crashed=lambda: self.post_message(ReplyEnded(None)),
        )
        self.recover(self.generate(self.cancel_event), recovery)

    async def show_reply(self) -> None:
        try:
            live = self._live = MessageView("assistant")
            log = self.message_log
            await log.mount(live)
            live.start_stream()
            log.anchor()
        finally:
            self._reply_shown.set()

    @work(thread=True, exclusive=True, exit_on_error=False, group="reply")
    def generate(self, cancel: threading.Event) -> None:
        result: ReplyResult | None = None
        try:
            for event in self.session.stream_reply(cancel):
                if isinstance(event, TextDelta):
                    if self.pending.add(event.text):
                        self.post_message(ReplyText())
                elif isinstance(event, (ContextTrimmed, Notice)):
                    self.post_message(ReplyNotice(event.message))
                elif isinstance(event, ReplyResult):
                    result = event
        except HuoziError as exc:
            self.post_message(ReplyEnded(None, app_wording(exc)))
            return
        # Anything else is a bug: RecoveringScreen logs it and offers Retry (its Recovery).
        self.post_message(ReplyEnded(result))

    async def on_reply_text(self, _message: ReplyText) -> None:
        wait = self._next_draw_at - time.monotonic()
        if wait > 0:
            if not self._draw_scheduled:
                self._draw_scheduled = True
                self.set_timer(wait, self._draw_pending)
            return
        await self._draw_pending()

    async def _draw_pending(self) -> None:
        self._draw_scheduled = False
        # thread_time() here is the UI thread's own CPU time: everything it did since the last
        # draw (mostly laying out that draw) sets how long to wait before the next one.
        ui_cpu = time.thread_time()
        spent = ui_cpu - self._ui_cpu_at_last_draw
        self._ui_cpu_at_last_draw = ui_cpu
        self._next_draw_at = time.monotonic() + max(DRAW_INTERVAL_S, spent / UI_SHARE_OF_WALL)
        text = self.pending.take()
        if text and self._live is not None and self._live.streaming:
            self.stream_writes += 1
            await self._live.write(text)

    def on_reply_notice(self, message: ReplyNotice) -> None:
        self.notify(message.text, severity="warning", timeout=6)

    async def on_reply_ended(self, message: ReplyEnded) -> None:
        await self._reply_shown.wait()
        live = self._live
        self._live = None
        self.pending.take()  # the result carries the whole text; drop what was not drawn yet
        self.replying = False
        self.cancel_event = None
        result = message.result
        if live is not None:
            if result is not None and result.text:
                note = "（已停止 stopped）" if result.stop_reason == "cancelled" else ""
                await live.finish(result.text, note)
            else:
                await live.remove()
        if message.error:
            self.notify(message.error, severity="error", timeout=8)
        if self.session.save_error and not self._told_save_error:
            self._told_save_error = True  # once: a locked database fails every reply alike
            note = f"replies are shown but not saved: {self.session.save_error}"
            self.notify(note, severity="error", timeout=15)
        elif result is not None and result.stop_reason == "length":
            self.notify("The reply reached the max tokens setting", timeout=4)
        self.refresh_status()
        await self.refresh_sidebar()
        self.replies_finished += 1

    # -- actions -----------------------------------------------------------------------------

    def action_stop(self) -> None:
        if self.cancel_event is not None:
            self.cancel_event.set()

    async def action_regenerate(self) -> None:
        if self.replying:
            return
        views = self.message_views()
        if not self.session.drop_last_reply():
            self.notify("Nothing to regenerate yet", severity="warning")
            return
        self.begin_reply()
        try:
            if views and views[-1].role == "assistant":
                await views[-1].remove()
        finally:
            await self.show_reply()

    def action_edit_last(self) -> None:
        if self.replying:
            return
        text = self.session.last_user_text()
        if text is None:
            self.notify("There is no message of yours to edit yet", severity="warning")
            return
        prompt = self.query_one(ChatInput)
        prompt.load_text(lines(text))
        prompt.focus()
        self.editing = True
        self.notify("Editing your last message: Enter resends it", timeout=3)

    def action_copy_last(self) -> None:
        for view in reversed(self.message_views()):
            if view.role == "assistant":
                view.action_copy()
                return
        self.notify("No reply to copy yet", severity="warning")

    async def action_new_conversation(self) -> None:
        if not self.replying:
            await self.open_conversation(None)
            self.query_one(ChatInput).focus()

    @on(ConversationList.Selected)
    async def _selected(self, event: ConversationList.Selected) -> None:
        if not self.replying and event.conversation_id != self.session.conversation_id:
            await self.open_conversation(event.conversation_id)

    @on(ConversationList.SearchChanged)
    async def _searched(self, event: ConversationList.SearchChanged) -> None:
        self._search = event.query
        await self.refresh_sidebar()

    def action_rename(self) -> None:
        self.recover(self._rename(), Recovery("renaming the conversation", self.action_rename))

    def action_delete(self) -> None:
        self.recover(self._delete(), Recovery("deleting the conversation", self.action_delete))

    @work(exclusive=True, group="dialog", exit_on_error=False)
    async def _rename(self) -> None:
        conversation_id = self.session.conversation_id
        if conversation_id is None:
            return
        current = self.session.store.conversation(conversation_id).title
        title = await self.app.push_screen_wait(TextPrompt("对话标题 Conversation title", current))
        if title:
            self.session.store.rename_conversation(conversation_id, title)
            await self.refresh_sidebar()

    @work(exclusive=True, group="dialog", exit_on_error=False)
    async def _delete(self) -> None:
        conversation_id = self.session.conversation_id
        if conversation_id is None or self.replying:
            return
        title = self.session.store.conversation(conversation_id).title or "this conversation"
        if await self.app.push_screen_wait(Confirm(f"Delete “{title}”?")):
            self.session.store.delete_conversation(conversation_id)
            remaining = self.session.store.list_conversations()
            await self.open_conversation(remaining[0].id if remaining else None)

    def action_export(self, kind: str = "markdown") -> None:
        conversation_id = self.session.conversation_id
        if conversation_id is None:
            self.notify("Nothing to export yet", severity="warning")
            return
        store = self.session.store
        if kind == "json":
            text, suffix = store.export_json(conversation_id), "json"
        else:
            text, suffix = store.export_markdown(conversation_id), "md"
        target = self.exports_dir / f"conversation-{conversation_id}.{suffix}"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        except OSError as exc:
            self.notify(f"cannot write {target}: {exc.strerror}", severity="error")
            return
        # A path is the person's text, not markup: "[b]" in a folder name stays literal.
        self.notify(f"Exported to {target}", timeout=6)

    def action_settings(self) -> None:
        if not self.replying:
            self.post_message(SettingsRequested())

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one(ConversationList)
        sidebar.display = not sidebar.display


def _note_for(meta: dict[str, object]) -> str:
    return "（已停止 stopped）" if meta.get("stop_reason") == "cancelled" else ""
