"""Probe counts a collection cannot run are refused by name before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from hspi.cli import app
from hspi.collector.collect import check_sizes, collect
from hspi.errors import ConfigError


@pytest.mark.parametrize(
    ("pool", "fresh", "replay", "message"),
    [
        (0, 10, 5, "--pool 0: a collection needs at least 1 pool probe"),
        (20, 0, 5, "--fresh 0: a collection needs at least 1 fresh probe"),
        (20, 10, 0, "--replay 0: a collection needs at least 1 replay probe"),
        (20, 10, -3, "--replay -3: a collection needs at least 1 replay probe"),
        (20, 10, 21, "replay subset 21 is larger than the pool 20"),
    ],
)
def test_check_sizes_names_the_bad_count(pool: int, fresh: int, replay: int, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_sizes(pool, fresh, replay)
    assert str(caught.value) == message


def test_check_sizes_takes_the_smallest_collection() -> None:
    check_sizes(1, 1, 1)


def test_collect_refuses_zero_replay_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match="--replay 0"):
        collect("cpu-smoke", "lm-small", out, pool=20, fresh=5, replay=0)
    assert not out.exists()


@pytest.mark.parametrize("option", ["--pool", "--fresh", "--replay"])
def test_cli_refuses_zero_counts_as_usage_errors(tmp_path: Path, option: str) -> None:
    out = tmp_path / "never"
    run = CliRunner().invoke(
        app, ["collect", "--grid", "cpu-smoke", "--models", "lm-small", "--out", str(out), option, "0"]
    )
    assert run.exit_code == 2
    assert option in run.output
    assert not out.exists()
