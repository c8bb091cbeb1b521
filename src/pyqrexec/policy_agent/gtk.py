"""The desktop front end: a GTK 3 dialog through PyGObject (docs/reference/policy.md#ask dialog
rules).

The only module that imports `gi`. GTK runs in the main thread; the agent's asyncio loop runs in
a second thread and hands each ask to GTK with `GLib.idle_add`, getting the reply back with
`call_soon_threadsafe`. Every ask gets its own window, so several can be open at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import gi

gi.require_version("Gtk", "3.0")
gi.require_version("Gdk", "3.0")
from gi.repository import Gdk, GLib, Gtk  # noqa: E402

from .frontends import DenyAll  # noqa: E402
from .request import (  # noqa: E402
    AskRequest,
    NotifyRequest,
    notification_texts,
    plain_text,
    target_label,
)

__all__ = ["AskDialog", "GtkFrontend", "TITLE", "display_available"]

TITLE = "qrexec policy: operation execution"
GUARD_SECONDS = 1.0
_ID, _LABEL, _ICON = 0, 1, 2


#: (offer, reply suffix, label) of the "Remember" chooser
_REMEMBER = (
    ("for", " for=300", "For 5 minutes"),
    ("for", " for=3600", "For 1 hour"),
    ("halt", " until=halt", "Until the source or the target halts"),
    ("always", " always", "Always (a rule in 25-user-grants.policy)"),
)


def display_available() -> bool:
    """Whether GTK can open the default display."""
    ok, _ = Gtk.init_check(None)
    return bool(ok)


class AskDialog:
    """One ask: source, service, argument, a chooser offering only the candidates, Allow / Deny.

    `on_reply` is called exactly once with `allow:TARGET` or `deny`. Allow stays disabled until
    a candidate is chosen and for `guard` seconds after the window appears or regains focus;
    Deny and Escape do nothing during that time; closing the window always denies.
    """

    def __init__(
        self, request: AskRequest, on_reply: Callable[[str], None], guard: float = GUARD_SECONDS
    ) -> None:
        self.request = request
        self.on_reply = on_reply
        self.guard_ms = int(guard * 1000)
        self.guarded = True
        self.done = False
        self._timer = 0
        icons = dict(request.icons)
        theme = Gtk.IconTheme.get_default()

        self.window = Gtk.Window(title=TITLE)
        self.window.set_position(Gtk.WindowPosition.CENTER)
        self.window.set_keep_above(True)
        self.window.set_resizable(False)
        self.window.set_border_width(14)
        grid = Gtk.Grid(row_spacing=8, column_spacing=12)
        self.window.add(grid)

        argument = request.shown_argument
        call = GLib.markup_escape_text(request.service + argument)
        source = GLib.markup_escape_text(request.source)
        heading = Gtk.Label(xalign=0)
        heading.set_markup(f"Allow <b>{source}</b> to call <b>{call}</b>?")
        icon = Gtk.Image.new_from_icon_name("dialog-question", Gtk.IconSize.DIALOG)
        grid.attach(icon, 0, 0, 1, 1)
        grid.attach(heading, 1, 0, 1, 1)
        rows = [("Source:", request.source), ("Service:", request.service)]
        if argument:
            rows.append(("Argument:", argument))
        for row, (name, value) in enumerate(rows, 1):
            grid.attach(Gtk.Label(label=name, xalign=1), 0, row, 1, 1)
            grid.attach(Gtk.Label(label=value, xalign=0), 1, row, 1, 1)

        self.model = Gtk.ListStore(str, str, str)
        for target in request.targets:
            icon = icons.get(target, "")
            self.model.append([target, target_label(target), icon if theme.has_icon(icon) else ""])
        self.combo = Gtk.ComboBox.new_with_model_and_entry(self.model)
        self.combo.set_id_column(_ID)
        self.combo.set_entry_text_column(_LABEL)
        pixbuf = Gtk.CellRendererPixbuf()
        self.combo.pack_start(pixbuf, False)
        self.combo.reorder(pixbuf, 0)
        self.combo.add_attribute(pixbuf, "icon-name", _ICON)
        self.entry: Any = self.combo.get_child()
        self.entry.set_placeholder_text("choose a target")
        self.entry.set_activates_default(True)
        completion = Gtk.EntryCompletion(model=self.model, text_column=_LABEL)
        completion.set_minimum_key_length(0)
        self.entry.set_completion(completion)
        target_row = len(rows) + 1
        # Alt+T back to the target from the Remember chooser or a button
        target_name = Gtk.Label.new_with_mnemonic("_Target:")
        target_name.set_xalign(1)
        target_name.set_mnemonic_widget(self.entry)
        grid.attach(target_name, 0, target_row, 1, 1)
        grid.attach(self.combo, 1, target_row, 1, 1)

        # remembering the answer, when the policy daemon offers it (docs/policy-agent.md)
        self.remember: Any = None
        offered = [(suffix, text) for kind, suffix, text in _REMEMBER if kind in request.remember]
        if offered:
            self.remember = Gtk.ComboBoxText()
            self.remember.append("", "This time only")
            for suffix, text in offered:
                self.remember.append(suffix, text)
            self.remember.set_active_id("")
            target_row += 1
            # Alt+R reaches the chooser from the keyboard, like Alt+A and Alt+D the buttons
            label = Gtk.Label.new_with_mnemonic("_Remember:")
            label.set_xalign(1)
            label.set_mnemonic_widget(self.remember)
            grid.attach(label, 0, target_row, 1, 1)
            grid.attach(self.remember, 1, target_row, 1, 1)

        buttons = Gtk.ButtonBox(layout_style=Gtk.ButtonBoxStyle.END, spacing=8)
        self.deny_button = Gtk.Button.new_with_mnemonic("_Deny")
        self.allow_button = Gtk.Button.new_with_mnemonic("_Allow")
        self.allow_button.set_can_default(True)
        buttons.add(self.deny_button)
        buttons.add(self.allow_button)
        grid.attach(buttons, 0, target_row + 1, 2, 1)

        self.combo.connect("changed", lambda *_: self._update())
        self.allow_button.connect("clicked", lambda *_: self.allow())
        self.deny_button.connect("clicked", lambda *_: self.cancel(remembered=True))
        self.window.connect("key-press-event", self._key)
        self.window.connect("focus-in-event", lambda *_: self._start_guard())
        self.window.connect("delete-event", self._closed)
        if request.default_target:
            self.combo.set_active_id(request.default_target)
        self.allow_button.grab_default()
        self._update()

    # the choice
    def choice(self) -> str | None:
        """The chosen candidate, from the list or typed (name or label), else None."""
        active = self.combo.get_active_id()
        if active in self.request.targets:
            return str(active)
        text = self.entry.get_text().strip()
        for target in self.request.targets:
            if text in (target, target_label(target)):
                return target
        return None

    def candidates(self) -> list[tuple[str, str]]:
        """What the chooser offers: (target, label) in order."""
        return [(str(row[_ID]), str(row[_LABEL])) for row in self.model]

    def _update(self) -> None:
        self.allow_button.set_sensitive(not self.guarded and self.choice() is not None)

    # the guard second
    def _start_guard(self) -> bool:
        self.guarded = True
        if self._timer:
            GLib.source_remove(self._timer)
        self._timer = GLib.timeout_add(self.guard_ms, self._end_guard)
        self._update()
        return False

    def _end_guard(self) -> bool:
        self._timer = 0
        self.guarded = False
        self._update()
        return False

    # endings
    def show(self) -> None:
        self.window.show_all()
        self.window.present()
        self._start_guard()

    def remembered(self) -> str:
        """The chosen reply suffix ("" for this time only)."""
        return str(self.remember.get_active_id() or "") if self.remember is not None else ""

    def allow(self) -> None:
        target = self.choice()
        if not self.guarded and target is not None:
            self._finish(f"allow:{target}{self.remembered()}")

    def cancel(self, remembered: bool = False) -> None:
        """Deny; with the Deny button, for the chosen time too ("always" is for allow only)."""
        if not self.guarded:
            suffix = self.remembered() if remembered else ""
            self._finish("deny" + ("" if suffix == " always" else suffix))

    def _key(self, _widget: Any, event: Any) -> bool:
        if event.keyval == Gdk.KEY_Escape:
            self.cancel()
            return True
        return False

    def _closed(self, *_: Any) -> bool:
        self._finish("deny")
        return False

    def _finish(self, reply: str) -> None:
        if self.done:
            return
        self.done = True
        if self._timer:
            GLib.source_remove(self._timer)
            self._timer = 0
        self.window.destroy()
        self.on_reply(reply)

    def close(self) -> None:
        """Withdraw the dialog (the caller went away): a deny nobody reads."""
        self._finish("deny")


def _settle(future: asyncio.Future[str], reply: str) -> None:
    if not future.done():
        future.set_result(reply)


class GtkFrontend(DenyAll):
    """Asks through `AskDialog`; notifications through libnotify when it works, else the log."""

    def __init__(self, log: logging.Logger, guard: float = GUARD_SECONDS) -> None:
        super().__init__(log)
        self.guard = guard
        self.dialogs: list[AskDialog] = []  # open ones, in GTK's thread
        self._notify: Any = None
        try:
            gi.require_version("Notify", "0.7")
            from gi.repository import Notify  # lazy: libnotify's typelib is optional

            if Notify.init("qrexec-policy-agent"):
                self._notify = Notify
        except (ImportError, ValueError):
            pass

    async def answer(self, request: AskRequest) -> str:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        holder: list[AskDialog] = []

        def reply(text: str) -> None:
            if holder and holder[0] in self.dialogs:
                self.dialogs.remove(holder[0])
            loop.call_soon_threadsafe(_settle, future, text)

        def show() -> bool:
            dialog = AskDialog(request, reply, self.guard)
            holder.append(dialog)
            self.dialogs.append(dialog)
            dialog.show()
            return False

        GLib.idle_add(show)
        try:
            return await future
        finally:
            if not future.done():  # the caller went away: take the dialog down

                def withdraw() -> bool:
                    if holder:
                        holder[0].close()
                    return False

                GLib.idle_add(withdraw)

    async def notify(self, note: NotifyRequest) -> None:
        GLib.idle_add(self._show_notification, note)

    def _show_notification(self, note: NotifyRequest) -> bool:
        summary, body, icon = notification_texts(note)
        shown = False
        if self._notify is not None:
            try:
                shown = bool(self._notify.Notification.new(summary, body, icon or None).show())
            except GLib.Error as err:
                self.log.warning("cannot show a notification: %s", err.message)
        if not shown:
            self.log.info("%s: %s", summary, plain_text(body))
        return False

    def run(self, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run GTK here and `main()` in an asyncio loop of its own thread, until either ends.

        SIGINT and SIGTERM end GTK; an error of `main` is raised here."""
        errors: list[BaseException] = []

        def thread() -> None:
            try:
                asyncio.run(main())
            except BaseException as err:  # reported in the main thread
                errors.append(err)
            finally:
                GLib.idle_add(Gtk.main_quit)

        def quit_gtk() -> bool:
            Gtk.main_quit()
            return False

        for signum in (signal.SIGINT, signal.SIGTERM):
            GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, quit_gtk)
        threading.Thread(target=thread, name="policy-agent-loop", daemon=True).start()
        Gtk.main()
        if errors:
            raise errors[0]
