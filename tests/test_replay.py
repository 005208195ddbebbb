from hypothesis import given
from hypothesis import strategies as st

from relay.core.replay import ReplayWindow


def test_in_order_duplicates_and_reordering():
    w = ReplayWindow(8)
    for c in (0, 1, 2, 5):
        assert w.check(c) is None
        w.accept(c)
    assert w.check(5) == "replay"
    assert w.check(3) is None  # late but inside the window: let in once
    w.accept(3)
    assert w.check(3) == "replay"
    w.accept(20)
    assert w.check(12) == "stale"
    assert w.check(13) is None


def test_restored_window_rejects_everything_up_to_the_mark():
    w = ReplayWindow(64, highest=1000)
    assert w.check(1000) == "replay"
    assert w.check(990) == "replay"
    assert w.check(1) == "stale"
    assert w.check(1001) is None


@given(st.lists(st.integers(0, 300), max_size=200))
def test_each_counter_accepted_at_most_once(counters):
    w = ReplayWindow(32)
    accepted = []
    for c in counters:
        if w.check(c) is None:
            w.accept(c)
            accepted.append(c)
    assert len(accepted) == len(set(accepted))
