"""RemoteVM gaps that upstream leaves open and pyqrexec closes (docs/remote.md)."""

from __future__ import annotations

from .policy_helpers import Run, answer


def test_redirect_hands_the_transport_the_resolved_target(run: Run) -> None:
    """#10914: `target=remote1` in a rule; the caller asked for @default."""
    _, out = run("test.Svc * work @default allow target=remote1", "work", "@default",
                 "test.Svc+x")
    assert "service=qubesair.SSHProxy+remote1+test.Svc+x" in out.lines
    assert "target=relay" in out.lines and "requested_target=@default" in out.lines


def test_ask_choice_hands_the_transport_the_chosen_target(run: Run) -> None:
    evaluation, out = run("test.Svc * work remote1 ask\ntest.Svc * work @default ask "
                          "target=remote1", "work", "@default", "test.Svc")
    assert out.ask is not None and out.ask.targets == ("remote1",)
    done = evaluation.resolve_ask("allow:remote1")
    assert "service=qubesair.SSHProxy+remote1+test.Svc+" in done.lines, answer(done)


def test_ask_for_a_remote_source_goes_to_its_relays_guivm(run: Run) -> None:
    """#10913: remote1 has no GuiVM; its relay's (dom0) is asked."""
    _, out = run("test.Svc * remote1 work ask", "relay", "work", "test.Svc",
                 requested_source="remote1")
    assert out.ask is not None and out.ask.guivm == "dom0" and out.ask.source == "remote1"


def test_allow_notification_of_a_remote_source_goes_to_its_relays_guivm(run: Run) -> None:
    _, out = run("test.Svc * remote1 work allow notify=yes", "relay", "work", "test.Svc",
                 requested_source="remote1")
    [note] = out.notifications
    assert (note.guivm, note.source) == ("dom0", "remote1")


def test_remote_source_to_dom0_keeps_its_name(run: Run) -> None:
    """Upstream drops policy_source for dom0 targets: the dom0 service would see the relay."""
    _, out = run("test.Svc * remote1 @adminvm allow", "relay", "@adminvm", "test.Svc",
                 requested_source="remote1")
    assert out.allowed and out.lines[-1] == "policy_source=remote1", answer(out)
