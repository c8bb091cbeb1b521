"""Drives `AskDialog` inside GTK (run in a child process on an Xvfb display) and prints what it
saw as JSON. Kept out of the pytest process so GTK never outlives its X server there."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import gi

gi.require_version("GdkPixbuf", "2.0")
from gi.repository import GdkPixbuf  # noqa: E402

from pyqrexec.policy_agent.gtk import AskDialog, Gdk, GLib, Gtk, display_available  # noqa: E402
from pyqrexec.policy_agent.request import AskRequest, parse_request  # noqa: E402

GUARD = 1.0


def request(**changes: Any) -> AskRequest:
    doc: dict[str, Any] = {
        "source": "work",
        "service": "test.Svc",
        "argument": "+arg",
        "targets": ["@dispvm:default-dvm", "personal", "vault"],
        "default_target": "vault",
        "icons": {},
    }
    doc.update(changes)
    parsed = parse_request(b"policy.Ask dom0\0" + json.dumps(doc).encode())
    assert isinstance(parsed, AskRequest)
    return parsed


def spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        while Gtk.events_pending():
            Gtk.main_iteration()
        time.sleep(0.01)


def spin_until(replies: list[str], seconds: float = 5) -> None:
    end = time.monotonic() + seconds
    while not replies and time.monotonic() < end:
        spin(0.01)


def open_dialog(replies: list[str], **changes: Any) -> AskDialog:
    dialog = AskDialog(request(**changes), replies.append, GUARD)
    dialog.show()
    spin(0.2)
    return dialog


def state(dialog: AskDialog) -> dict[str, Any]:
    return {
        "visible": bool(dialog.window.get_mapped()),
        "allow_sensitive": bool(dialog.allow_button.get_sensitive()),
        "choice": dialog.choice(),
    }


def scenario() -> dict[str, Any]:
    out: dict[str, Any] = {}
    replies: list[str] = []
    dialog = open_dialog(replies)
    out["title"] = dialog.window.get_title()
    out["candidates"] = dialog.candidates()
    out["at_start"] = state(dialog)
    dialog.cancel()  # Deny / Escape inside the guard second: nothing happens
    dialog.allow()
    out["replies_in_guard"] = list(replies)
    spin(GUARD + 0.2)
    out["after_guard"] = state(dialog)
    dialog.window.emit("focus-in-event", Gdk.Event.new(Gdk.EventType.FOCUS_CHANGE))
    out["after_focus_regained"] = state(dialog)
    spin(GUARD + 0.2)
    dialog.combo.set_active_id("personal")
    dialog.allow_button.clicked()
    out["allow_reply"] = list(replies)

    replies.clear()
    dialog = open_dialog(replies, default_target="", argument="+")
    out["no_default"] = state(dialog)
    spin(GUARD + 0.2)
    dialog.entry.set_text("sys-usb")
    out["typed_not_a_candidate"] = state(dialog)
    dialog.entry.set_text("Disposable VM (default-dvm)")
    out["typed_label"] = state(dialog)
    dialog.entry.activate()  # Enter in the chooser = Allow (GTK hands it on a moment later)
    spin_until(replies)
    out["typed_reply"] = list(replies)

    replies.clear()
    dialog = open_dialog(replies)
    spin(GUARD + 0.2)
    key = Gdk.Event.new(Gdk.EventType.KEY_PRESS)
    key.keyval = Gdk.KEY_Escape
    dialog.window.emit("key-press-event", key)
    out["escape_reply"] = list(replies)

    replies.clear()
    dialog = open_dialog(replies)
    dialog.window.emit("delete-event", Gdk.Event.new(Gdk.EventType.DELETE))
    out["close_reply_in_guard"] = list(replies)
    return out


def _grab(margin: int = 0) -> Any:
    """The part of the screen that holds every mapped window of this process."""
    boxes = []
    for window in Gtk.Window.list_toplevels():
        gdk_window = window.get_window()
        if window.get_mapped() and gdk_window is not None:
            x, y = gdk_window.get_origin()[1:]
            boxes.append((x, y, x + gdk_window.get_width(), y + gdk_window.get_height()))
    left, top = min(b[0] for b in boxes) - margin, min(b[1] for b in boxes) - margin
    right, bottom = max(b[2] for b in boxes) + margin, max(b[3] for b in boxes) + margin
    root = Gdk.get_default_root_window()
    return Gdk.pixbuf_get_from_window(root, left, top, right - left, bottom - top)


def screenshot(path: str) -> None:
    """The dialog once Allow is enabled, and beside it with the chooser open, as one PNG."""
    replies: list[str] = []
    dialog = open_dialog(replies)
    spin(GUARD + 0.3)
    closed = _grab()
    dialog.combo.popup()
    spin(0.5)
    opened = _grab()
    dialog.combo.popdown()
    dialog.close()
    gap = 16
    width = closed.get_width() + gap + opened.get_width()
    height = max(closed.get_height(), opened.get_height())
    both = GdkPixbuf.Pixbuf.new(GdkPixbuf.Colorspace.RGB, False, 8, width, height)
    both.fill(0xFFFFFFFF)
    closed.copy_area(0, 0, closed.get_width(), closed.get_height(), both, 0, 0)
    opened.copy_area(
        0, 0, opened.get_width(), opened.get_height(), both, closed.get_width() + gap, 0
    )
    both.savev(path, "png", [], [])


def main() -> int:
    if not display_available():
        print("no display", file=sys.stderr)
        return 2
    if len(sys.argv) > 1:
        screenshot(sys.argv[1])
        return 0
    print(json.dumps(scenario()))
    GLib.idle_add(Gtk.main_quit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
