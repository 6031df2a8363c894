"""Progress of long work: a tqdm bar on a terminal, one line per stage anywhere else, nothing for a failed loop;
and the zoo and ingest stages use it (reconstruct and evaluate: tests/test_export.py; under `dvc repro`:
tests/test_remote.py)."""

import io
import re

import pytest

from weightvae.ingest import IngestParams, ingest
from weightvae.progress import Progress, mode_for, track
from weightvae.zoo import ZooParams, build_zoo

LINE = r"{desc}: {done} {unit} in \d+\.\ds \(\d+\.\d {unit}/s\)"


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_mode_is_a_bar_on_a_terminal_and_a_line_elsewhere_unless_overridden(monkeypatch):
    monkeypatch.delenv("WEIGHTVAE_PROGRESS", raising=False)
    assert mode_for(Tty()) == "bar" and mode_for(io.StringIO()) == "line"
    monkeypatch.setenv("WEIGHTVAE_PROGRESS", "off")
    assert mode_for(Tty()) == "off"
    monkeypatch.setenv("WEIGHTVAE_PROGRESS", "loud")
    with pytest.raises(ValueError, match=r"WEIGHTVAE_PROGRESS='loud': choose one of \['bar', 'line', 'off'\]"):
        mode_for(io.StringIO())


def test_line_mode_writes_one_line_when_done_and_nothing_on_failure(monkeypatch):
    monkeypatch.delenv("WEIGHTVAE_PROGRESS", raising=False)
    lines, err = [], io.StringIO()
    with Progress("zoo", 4, "runs", stream=err, log=lines.append) as bar:
        for _ in range(4):
            bar.update()
            assert lines == []  # nothing while it runs: CI logs stay short
    assert len(lines) == 1 and re.fullmatch(LINE.format(desc="zoo", done="4/4", unit="runs"), lines[0])
    assert err.getvalue() == ""
    with pytest.raises(RuntimeError), Progress("ingest", 3, "files", stream=err, log=lines.append) as bar:
        bar.update()
        raise RuntimeError("boom")
    assert len(lines) == 1  # a failed loop adds nothing: its error is the line that matters
    bar = Progress("evaluate", unit="networks", stream=err, log=lines.append)  # a total found group by group
    bar.add_total(3)
    bar.update(3)
    bar.add_total(2)
    bar.update(2)
    bar.close()
    bar.close()
    assert len(lines) == 2 and re.fullmatch(LINE.format(desc="evaluate", done="5/5", unit="networks"), lines[1])
    assert list(track(range(3), "probe", unit="models", stream=err, log=lines.append)) == [0, 1, 2]
    assert re.fullmatch(LINE.format(desc="probe", done="3/3", unit="models"), lines[2])


def test_bar_mode_shows_items_rate_and_time_left_on_the_terminal(monkeypatch):
    monkeypatch.delenv("WEIGHTVAE_PROGRESS", raising=False)
    tty, lines = Tty(), []
    with Progress("ingest", 6, "files", stream=tty, log=lines.append) as bar:
        bar.update(2)
        bar.update(4)
    out = tty.getvalue()
    assert lines == [] and "ingest: 100%" in out and "6/6" in out
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d, +[\d.]+(k|M)? files/s\]", out), out  # elapsed<left, rate


@pytest.mark.slow
def test_zoo_and_ingest_report_one_progress_line_each(tmp_path, monkeypatch):
    monkeypatch.delenv("WEIGHTVAE_PROGRESS", raising=False)
    lines: list[str] = []
    build_zoo(ZooParams(architectures={"cnn": 3}, epochs=1, save_epochs=(1,), group_size=2), tmp_path / "zoo",
              log=lines.append)
    assert len(lines) == 1 and re.fullmatch(LINE.format(desc="zoo", done="3/3", unit="runs"), lines[0])
    ingest(IngestParams(zoo_dir=str(tmp_path / "zoo"), workers=1), tmp_path / "shards", log=lines.append)
    assert len(lines) == 2 and re.fullmatch(LINE.format(desc="ingest", done="3/3", unit="files"), lines[1])
