from iothub.hub.dedup import SeqWindow


def test_in_order_stream_has_no_gaps() -> None:
    w = SeqWindow(8)
    assert [w.accept(s) for s in range(1, 5)] == [(True, 0)] * 4


def test_repeats_are_dropped() -> None:
    w = SeqWindow(8)
    w.accept(1)
    w.accept(2)
    assert w.accept(2) == (False, 0)
    assert w.accept(1) == (False, 0)


def test_jumps_count_gaps_and_late_arrivals_fill_them() -> None:
    w = SeqWindow(8)
    w.accept(1)
    assert w.accept(5) == (True, 3)
    assert w.accept(3) == (True, -1)
    assert w.accept(3) == (False, 0)


def test_a_restarted_counter_is_accepted() -> None:
    w = SeqWindow(8)
    for s in range(1, 100):
        w.accept(s)
    assert w.accept(0) == (True, 0)
    assert w.accept(1) == (True, 0)
    assert w.accept(50) == (True, 48)
    assert w.accept(10) == (True, 0)  # older than the window: a restart, not a repeat


def test_a_jump_beyond_the_window_forgets_the_past() -> None:
    w = SeqWindow(4, highest=10)
    assert w.accept(100) == (True, 89)
    assert w.accept(99) == (True, -1)
