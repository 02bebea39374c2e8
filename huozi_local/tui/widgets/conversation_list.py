"""The sidebar of saved conversations, with a search box over titles and message text."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, ListItem, ListView

from huozi_local.core.store.conversations import Conversation
from huozi_local.tui.widgets.plain import Label


class ConversationItem(ListItem):
    def __init__(self, conversation: Conversation) -> None:
        super().__init__(Label(conversation.title or "新对话 New chat"))
        self.conversation = conversation


class ConversationList(Vertical):
    """Shows what it is given; the screen owns the store and decides what to show."""

    DEFAULT_CSS = """
    ConversationList { width: 30; border-right: vkey $foreground 20%; }
    ConversationList > Input { margin: 0 0 1 0; }
    ConversationList > ListView { height: 1fr; }
    ConversationList > .hint { color: $text-muted; padding: 0 1; }
    """

    class Selected(Message):
        def __init__(self, conversation_id: int) -> None:
            super().__init__()
            self.conversation_id = conversation_id

    class SearchChanged(Message):
        def __init__(self, query: str) -> None:
            super().__init__()
            self.query = query

    def compose(self) -> ComposeResult:
        yield Input(placeholder="搜索 Search", id="search")
        yield ListView(id="conversations")
        yield Label("^N new  F2 rename  F8 delete", classes="hint")

    async def show(self, conversations: list[Conversation], selected: int | None) -> None:
        view = self.query_one(ListView)
        await view.clear()
        await view.extend(ConversationItem(c) for c in conversations)
        for index, conversation in enumerate(conversations):
            if conversation.id == selected:
                view.index = index
                break
        else:
            view.index = None

    @property
    def shown_ids(self) -> list[int]:
        return [item.conversation.id for item in self.query(ConversationItem)]

    @on(ListView.Selected, "#conversations")
    def _chosen(self, event: ListView.Selected) -> None:
        event.stop()
        if isinstance(event.item, ConversationItem):
            self.post_message(self.Selected(event.item.conversation.id))

    @on(Input.Changed, "#search")
    def _search(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.SearchChanged(event.value))
