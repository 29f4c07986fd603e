"""The bound on the interactive (teletype) tests: a loop fails the test, it never hangs it.

debconf's teletype frontend keeps a question's old value at end of input, so
a postinst that re-asks an invalid answer loops forever once a test's typed
lines run out.  These run on the host, in a second or two.
"""

from __future__ import annotations

import time

import pytest

from support.chroot import RanAway, interactive

# Answers one line per screen, then repeats the screen forever, as a re-asking
# postinst does at end of input.
LOOPING = ("while read -r line; do echo 'Invalid answer'; done; "
           "while :; do echo 'Invalid answer'; sleep 0.01; done")


def test_a_loop_past_the_typed_lines_is_killed_with_a_clear_message():
    started = time.monotonic()
    with pytest.raises(RanAway) as failed:
        interactive(["sh", "-c", LOOPING], "a\nb\n", marker="Invalid answer", slack=2)
    assert time.monotonic() - started < 10
    message = str(failed.value)
    assert "the scripted input ran out" in message
    assert "'Invalid answer' shown 5 times, more than the 2 typed lines can answer (+2)" in message


def test_a_silent_hang_is_killed_after_its_time():
    with pytest.raises(RanAway, match=r"still running after 1 s"):
        interactive(["sh", "-c", "sleep 60"], "", marker="Invalid answer", seconds=1)


def test_a_run_within_its_bounds_returns_its_output():
    out = interactive(["sh", "-c", "read -r a; echo \"got $a\"; echo 'Invalid answer'"], "x\n",
                      marker="Invalid answer")
    assert "got x" in out
