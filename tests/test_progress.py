"""The library's one progress bar and its logging: nothing printed unless asked, a live line only
on a terminal, INFO records otherwise, the command line's handler on the current stdout."""

from __future__ import annotations

import logging
import sys

import pytest
from qfcal import _progress
from qfcal._progress import Progress, show_info, track


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("qfcal")]


def test_without_a_terminal_a_bar_is_one_record_at_the_end(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.INFO, logger="qfcal"):
        with Progress(10, "counting", unit="things") as bar:
            for _ in range(10):
                bar.update()
    got = messages(caplog)
    assert len(got) == 1 and got[0].startswith("counting: 10 things in "), got
    assert capsys.readouterr() == ("", "")  # nothing printed: logging decides


def test_without_a_terminal_long_work_is_logged_every_interval(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_progress, "LOG_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="qfcal"):
        with Progress(4, "work") as bar:
            bar.update(2)
            bar.update(2)
    got = messages(caplog)
    assert got[0].startswith("work: [") and "2/4 (50%)" in got[0], got
    assert "4/4 (100%)" in got[1] and got[2].startswith("work: 4 in "), got


def test_on_a_terminal_the_bar_is_drawn_live_and_erased(
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_progress, "_is_terminal", lambda: True)
    with caplog.at_level(logging.INFO, logger="qfcal"):
        for _ in track(range(3), "items", unit="items"):
            pass
    err = capsys.readouterr().err
    assert "\ritems: [" in err and "3/3 items (100%)" in err
    assert err.endswith("\r\x1b[K")  # the line is cleared; the summary goes to logging
    assert messages(caplog)[-1].startswith("items: 3 items in ")


def test_disabled_does_nothing(
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_progress, "_is_terminal", lambda: True)
    with caplog.at_level(logging.DEBUG, logger="qfcal"):
        assert list(track([1, 2], "quiet", enabled=False)) == [1, 2]
    assert messages(caplog) == [] and capsys.readouterr() == ("", "")


def test_an_error_ends_the_bar_without_a_done_record(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="qfcal"):
        with pytest.raises(KeyError), Progress(None, "failing") as bar:
            bar.update()
            raise KeyError("boom")
    assert messages(caplog) == []


def test_show_info_writes_to_the_current_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    log = logging.getLogger("qfcal.pipeline.steps")
    show_info()
    show_info()  # idempotent: one handler
    # a handler on the root logger, as TensorFlow's converter adds: the record is not repeated
    root = logging.StreamHandler(sys.stdout)
    logging.getLogger().addHandler(root)
    try:
        log.info("step %d of %d", 1, 4)
    finally:
        logging.getLogger().removeHandler(root)
    assert capsys.readouterr().out == "step 1 of 4\n"
    assert sum(isinstance(h, _progress._CurrentStdout) for h in _progress.log.handlers) == 1


def test_each_test_starts_with_the_library_logger() -> None:
    # the conftest fixture undid show_info() of the test above
    assert not _progress.log.handlers and _progress.log.propagate
