"""benchmarks/stall_probe.py: a stall counts as the machine's only when a watchdog freeze covers half of it."""

from benchmarks.stall_probe import Stall


def test_a_stall_inside_a_freeze_is_the_machines() -> None:
    stall = Stall(end=100.0, gap_s=0.4)  # 99.6 .. 100.0
    assert stall.overlaps([(100.05, 0.5)])  # frozen 99.55 .. 100.05


def test_a_stall_beside_a_freeze_is_the_stacks() -> None:
    stall = Stall(end=100.0, gap_s=0.4)
    assert not stall.overlaps([(99.5, 0.3)])  # frozen 99.2 .. 99.5, before the gap began
    assert not stall.overlaps([(99.75, 0.2)])  # 0.15 s of the 0.4 s gap
    assert not stall.overlaps([(100.3, 0.4)])  # frozen 99.9 .. 100.3: 0.1 s of the gap
    assert not stall.overlaps([(101.0, 0.5)])  # frozen 100.5 .. 101.0, after the gap ended


def test_freezes_add_up() -> None:
    stall = Stall(end=100.0, gap_s=0.4)
    assert stall.overlaps([(99.75, 0.15), (99.95, 0.1)])  # 0.15 + 0.1 of 0.4
    assert not stall.overlaps([(99.75, 0.15), (101.0, 0.5)])  # a freeze after the gap adds nothing
    assert stall.overlaps([(100.0, 0.4), (101.0, 0.5)])  # ... and takes nothing away
