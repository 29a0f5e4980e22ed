"""Per-route minutes from HAProxy's log lines: counts, 5xx, the latency histogram, the last hour."""

from __future__ import annotations

import socket
import time

import pytest

from gateway.stats import BUCKETS_MS, INF, LogReader, Stats, bucket

T0 = 1_700_000_040.0  # 2023-11-14T22:14:00Z, a minute's start


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("ms,bound", [(0, "1"), (1, "1"), (2, "2"), (3, "5"), (60000, "60000"), (60001, INF)])
def test_latency_falls_in_the_first_bucket_at_or_above_it(ms, bound):
    labels = [str(b) for b in BUCKETS_MS] + [INF]
    assert labels[bucket(ms)] == bound


def test_a_minute_counts_requests_5xx_and_latency_per_route():
    stats = Stats(Clock())
    for line in ["hi 200 3\n", "hi 503 0\n", "hi 401 0\n", "hi 500 70000\n", "other 200 12\n"]:
        assert stats.record_line(line)
    hi, other = sorted(stats.minutes(), key=lambda m: m["label"])
    assert hi["minute"] == "2023-11-14T22:14:00Z"
    assert (hi["requests"], hi["errors"]) == (4, 2)
    assert hi["latency_ms"] == {**{str(b): 0 for b in BUCKETS_MS}, "1": 2, "5": 1, INF: 1}
    assert (other["label"], other["requests"], other["errors"], other["latency_ms"]["20"]) == ("other", 1, 0, 1)


def test_a_request_that_never_completed_is_counted_but_not_timed():
    stats = Stats(Clock())
    stats.record_line("hi -1 -1\n")
    [minute] = stats.minutes()
    assert minute["requests"] == 1
    assert sum(minute["latency_ms"].values()) == 0


@pytest.mark.parametrize("line", ["- 404 0\n", "hi 200\n", "HI 200 1\n", "hi 200 1 extra\n", "", "hi two 1\n",
                                  "a b c\n", "hi 200 99999999999999\n"])
def test_lines_that_are_no_route_request_are_ignored(line):
    stats = Stats(Clock())
    assert not stats.record_line(line)
    assert stats.minutes() == []


def test_only_the_last_sixty_minutes_are_kept():
    clock = Clock()
    stats = Stats(clock)
    stats.record_line("hi 200 1\n")
    clock.now += 60
    stats.record_line("hi 200 1\n")
    assert [m["minute"] for m in stats.minutes()] == ["2023-11-14T22:14:00Z", "2023-11-14T22:15:00Z"]
    clock.now = T0 + 60 * 60
    assert [m["minute"] for m in stats.minutes()] == ["2023-11-14T22:15:00Z"]
    clock.now = T0 + 61 * 60
    assert stats.minutes() == []


def test_the_reader_counts_datagrams_sent_to_its_socket(tmp_path):
    stats = Stats()
    reader = LogReader(tmp_path / "log.sock", stats)
    reader.start()
    try:
        assert (tmp_path / "log.sock").stat().st_mode & 0o777 == 0o600
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            for line in [b"hi 200 4\n", b"junk\n", b"hi 502 1\n"]:
                sender.sendto(line, str(tmp_path / "log.sock"))
        deadline = time.monotonic() + 10
        while not stats.minutes() or stats.minutes()[0]["requests"] < 2:
            assert time.monotonic() < deadline, "the reader did not count two requests"
            time.sleep(0.01)
        [minute] = stats.minutes()
        assert (minute["requests"], minute["errors"]) == (2, 1)
    finally:
        reader.close()
    assert not (tmp_path / "log.sock").exists()
