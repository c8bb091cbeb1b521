"""cli.args.getopt against the standard library's getopt, on the option sets of our programs
and on arbitrary argument lists: same options, same operands, same error messages."""

from __future__ import annotations

import getopt as stdlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyqrexec.cli.args import GetoptError, getopt

CLIENT = ("hd:l:ec:tTEw:Wkp:", ["help", "socket-dir=", "prefix-data=", "use-stdin-socket",
                                "no-exit-code"])
CLIENT_VM = ("htTa:p:s:", ["help", "buffer-size=", "filter-escape-chars-stdout",
                           "filter-escape-chars-stderr", "no-filter-escape-chars-stdout",
                           "no-filter-escape-chars-stderr", "agent-socket=", "prefix-data=",
                           "use-stdin-socket"])
SETS = [CLIENT, CLIENT_VM, ("+ab:", ["all", "alpha=", "beta"]), ("x", [])]

_WORDS = ["-", "--", "-h", "-d", "-dvm", "-tTE", "-Tw", "-w5", "-:", "-z", "-ab", "-b",
          "--help", "--he", "--h", "--socket-dir", "--socket-dir=/x", "--socket", "--so=1",
          "--no", "--no-exit-code", "--no-exit-code=1", "--prefix-data=", "--use",
          "--filter-escape-chars-std", "--buffer-size=8", "--a", "--al", "--alpha",
          "--alpha=1", "--beta", "--x", "--=1", "vm", "user:cmd", "", "-x", "--all"]


def both(args: list[str], short: str, longs: list[str], gnu: bool
         ) -> tuple[object, object]:
    try:
        ours: object = getopt(args, short, longs, gnu=gnu)
    except GetoptError as err:
        ours = ("error", str(err))
    try:
        theirs: object = (stdlib.gnu_getopt if gnu else stdlib.getopt)(args, short, longs)
    except stdlib.GetoptError as err:
        theirs = ("error", str(err))
    return ours, theirs


@pytest.mark.parametrize("gnu", [False, True])
@pytest.mark.parametrize("optset", SETS, ids=lambda s: s[0])
def test_same_on_every_pair_of_words(optset: tuple[str, list[str]], gnu: bool) -> None:
    """Every argument list of up to two of the words, exhaustively: where an option meets its
    argument, or an operand ends the options, is decided within two words."""
    lists = [[], *([w] for w in _WORDS), *([a, b] for a in _WORDS for b in _WORDS)]
    wrong = []
    for args in lists:
        ours, theirs = both(args, optset[0], optset[1], gnu)
        if ours != theirs:
            wrong.append((args, ours, theirs))
    assert not wrong, wrong[:5]


# longer lists are sampled: 1000 examples each, on top of the exhaustive pairs above
@given(st.lists(st.sampled_from(_WORDS), max_size=8), st.sampled_from(SETS), st.booleans())
@settings(max_examples=1000, deadline=None)
def test_same_as_the_standard_library(args: list[str], optset: tuple[str, list[str]],
                                      gnu: bool) -> None:
    ours, theirs = both(args, optset[0], optset[1], gnu)
    assert ours == theirs


@given(st.lists(st.text(alphabet="-=abdhx:+ ", max_size=6), max_size=6), st.booleans())
@settings(max_examples=1000, deadline=None)
def test_same_on_arbitrary_words(args: list[str], gnu: bool) -> None:
    ours, theirs = both(args, "ab:h", ["all", "alpha=", "beta", "b="], gnu)
    assert ours == theirs


def test_posixly_correct_stops_at_the_first_operand(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSIXLY_CORRECT", "1")
    args = ["-t", "vm", "-T"]
    ours, theirs = both(args, "tT", [], True)
    assert ours == theirs == ([("-t", "")], ["vm", "-T"])
