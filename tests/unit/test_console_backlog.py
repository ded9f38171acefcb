"""The console's backlog and its text, as the reference's console monitor renders them."""

from __future__ import annotations

import logging
import threading

from services.history.console_backlog import ConsoleBacklog, ConsoleText
from services.runtime.console import ConsoleLogHandler, ConsoleSink
from services.runtime.console_lines import outcome_line


def rendered(*msgs: str, max_lines: int = 1000) -> ConsoleText:
    t = ConsoleText(max_lines)
    for m in msgs:
        t.feed(m)
    return t


def test_a_print_in_two_writes_and_several_lines_render_as_printed() -> None:
    t = rendered(
        "=====", "\n", "Beginning of the line. ", "End of the line.", "\n", "A\n B\n\nC\n\n"
    )
    assert t.text(100) == "=====\nBeginning of the line. End of the line.\nA\n B\n\nC\n"


def test_carriage_return_and_cursor_up_redraw_lines() -> None:
    # The reference client's own test (test_console_monitor_05), split across messages.
    t = rendered("One two three four five\nOne two three four five", "\r", "Six \x1b[Asix\n\n")
    assert "One six three four five\nSix two three four five\n" in t.text(100) + "\n"


def test_a_progress_bar_shows_its_last_state_once() -> None:
    t = rendered("TESTING\n", *(f"\rTEST1 {i}0%" for i in range(1, 11)), "\nDONE\n")
    assert t.text(100) == "TESTING\nTEST1 100%\nDONE"


def test_text_gives_the_last_n_lines_and_nothing_for_zero_or_less() -> None:
    t = rendered("a\nb\nc\n")
    assert t.text(2) == "b\nc"
    assert t.text(1) == "c"
    assert t.text(100) == "a\nb\nc"
    assert t.text(0) == "" and t.text(-1) == ""
    assert rendered("a\nb").text(1) == "b"  # an unfinished last line counts


def test_text_keeps_at_most_max_lines() -> None:
    t = rendered(*(f"line {i}\n" for i in range(50)), max_lines=10)
    assert t.text(100).split("\n") == [f"line {i}" for i in range(40, 50)]


def backlog_with(n: int, **kw: int) -> ConsoleBacklog:
    b = ConsoleBacklog("QS_T_CONSOLE:2024-01-01", **kw)
    for seq in range(1, n + 1):
        b.add(seq, f"uid-{seq}", float(seq), f"m{seq}\n")
    return b


def test_update_gives_what_follows_the_uid_it_returned() -> None:
    b = backlog_with(3)
    last = b.last_msg_uid
    assert [m["msg"] for m in b.since("ALL")] == ["m1\n", "m2\n", "m3\n"]
    assert b.since(last) == []
    b.add(4, "uid-4", 4.0, "m4\n")
    assert b.since(last) == [{"time": 4.0, "msg": "m4\n"}]
    assert b.since(last, with_uids=True) == [{"time": 4.0, "msg": "m4\n", "uid": "uid-4"}]


def test_uids_mean_the_same_to_another_holder_of_the_stream() -> None:
    # A restarted history service (or a second one) reads the same stream.
    first, second = backlog_with(5), backlog_with(5)
    uid = first.position_uid(3)
    assert [m["msg"] for m in second.since(uid)] == ["m4\n", "m5\n"]
    assert first.text_uid == second.text_uid and first.last_msg_uid == second.last_msg_uid


def test_unknown_uids_get_nothing_as_in_the_reference() -> None:
    b = backlog_with(3)
    other = ConsoleBacklog("QS_T_CONSOLE:another-stream")
    other.add(1, None, 1.0, "x")
    for uid in ("", "not a uid", "00000000-0000-0000-0000-000000000001", other.last_msg_uid):
        assert b.since(uid) == []


def test_an_empty_backlog_still_gives_a_position_to_poll_from() -> None:
    b = ConsoleBacklog("QS_T_CONSOLE:x")
    b.reset("QS_T_CONSOLE:x", 7)  # the stream's last message was 7 (then purged)
    last = b.last_msg_uid
    b.add(8, None, 8.0, "first\n")
    assert b.since(last) == [{"time": 8.0, "msg": "first\n"}]


def test_the_backlog_is_bounded_by_messages_and_characters() -> None:
    b = backlog_with(50, max_msgs=10)
    assert [e.seq for e in b.entries] == list(range(41, 51))
    # A client that fell behind gets what is kept.
    assert len(b.since(b.position_uid(3))) == 10
    big = ConsoleBacklog("x", max_chars=100)
    for seq in range(1, 21):
        big.add(seq, None, 0.0, "0123456789")
    assert big.chars <= 100 and len(big.entries) == 10
    text_uid = big.text_uid
    big.add(21, None, 0.0, "more")
    assert big.text_uid != text_uid


def test_the_sink_joins_writes_of_one_line_and_keeps_lines_apart() -> None:
    wakes: list[int] = []
    sink = ConsoleSink(lambda: wakes.append(1))
    for text in ("=====", "\n", "next", "\n", "\rbar 1", "\rbar 2"):
        sink.add(text)
    assert [t for _, t in sink.take()] == ["=====\n", "next\n", "\rbar 1\rbar 2"]
    assert len(wakes) == 1  # one wake-up per batch


def test_the_sink_drops_the_oldest_when_full_and_says_so() -> None:
    sink = ConsoleSink(lambda: None, max_buffered=3)
    for i in range(5):
        sink.add(f"{i}\n")
    texts = [t for _, t in sink.take()]
    assert "2 messages were dropped" in texts[0] and texts[1:] == ["2\n", "3\n", "4\n"]


def test_log_records_use_the_reference_format_from_any_thread() -> None:
    sink = ConsoleSink(lambda: None)
    log = logging.getLogger("services.test.console")
    handler = ConsoleLogHandler(sink, names=("services.",))
    log.addHandler(handler)
    try:
        t = threading.Thread(target=lambda: log.warning("RE Environment is ready"))
        t.start()
        t.join()
        logging.getLogger("nats.aio.client").addHandler(handler)
        logging.getLogger("nats.aio.client").error("not a service's record")
    finally:
        log.removeHandler(handler)
        logging.getLogger("nats.aio.client").removeHandler(handler)
    (text,) = [t for _, t in sink.take()]
    assert text.startswith("[W ") and text.endswith(
        " services.test.console] RE Environment is ready\n"
    )


def test_item_outcome_lines_are_worded_as_the_reference() -> None:
    line = outcome_line("Item added", True, "plan", "count", "u-1", 3)
    assert line == "Item added: success=True item_type='plan' name='count' item_uid='u-1' qsize=3."
    assert outcome_line("Batch of items added", True, None, None, None, 2) == (
        "Batch of items added: success=True item_type='None' qsize=2."
    )
