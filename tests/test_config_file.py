"""Config files (``zoo train --config``): bounded reads, one-line errors, and the TOML
``--print-config`` writes (its comment lines for unset fields)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import tomllib

from zoo.errors import ZooError
from zoo.spec import training
from zoo.spec.training import TrainConfig, config_toml, load_config_file

MIB = 2**20


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """os.read in short reads of at most 64 KiB (as a pipe or network filesystem gives
    them), recording how many bytes each returned."""
    real_read: Callable[[int, int], bytes] = os.read
    sizes: list[int] = []

    def short_read(fd: int, n: int) -> bytes:
        data = real_read(fd, min(n, 65536))
        sizes.append(len(data))
        return data

    monkeypatch.setattr(training.os, "read", short_read)
    return sizes


def test_the_limit_is_one_mib() -> None:
    assert training.MAX_CONFIG_BYTES == MIB  # what the error message and the docs say


def test_a_large_file_is_refused_after_reading_one_byte_past_the_limit(
        tmp_path: Path, reads: list[int]) -> None:
    huge = tmp_path / "huge.toml"
    with huge.open("wb") as out:  # sparse: 256 MiB that take no disk
        out.truncate(256 * MIB)
    with pytest.raises(ZooError, match=r"huge\.toml' is larger than 1 MiB"):
        load_config_file(huge)
    assert sum(reads) == MIB + 1
    reads.clear()
    over = tmp_path / "over.toml"
    over.write_bytes(b"#" * (MIB + 1))
    with pytest.raises(ZooError, match=r"over\.toml' is larger than 1 MiB"):
        load_config_file(over)
    assert sum(reads) == MIB + 1


def test_a_file_of_exactly_the_limit_is_read_whole(tmp_path: Path, reads: list[int]) -> None:
    limit = tmp_path / "limit.toml"
    line = b"epochs = 3\n"
    limit.write_bytes(line + b"#" * (MIB - len(line) - 1) + b"\n")
    assert load_config_file(limit) == {"epochs": 3}
    assert sum(reads) == MIB and reads[-1] == 0


def test_read_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ZooError) as missing:
        load_config_file(tmp_path / "missing.toml")
    assert str(missing.value) == (f"cannot read config file {str(tmp_path / 'missing.toml')!r}: "
                                  "No such file or directory")
    config = tmp_path / "c.toml"
    config.write_text("epochs = 2\n")

    def failing_read(fd: int, n: int) -> bytes:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(training.os, "read", failing_read)
    with pytest.raises(ZooError) as broken:
        load_config_file(config)
    assert str(broken.value) == f"cannot read config file {str(config)!r}: Input/output error"


def test_text_that_is_not_utf8_names_the_byte(tmp_path: Path) -> None:
    config = tmp_path / "latin1.toml"
    config.write_bytes(b"epochs = 2\n# caf\xe9 \xff\n")
    with pytest.raises(ZooError) as bad:
        load_config_file(config)
    assert str(bad.value) == (f"config file {str(config)!r} is not UTF-8 text (byte 16: "
                              r"b'\xe9'); save it as UTF-8")


@pytest.mark.parametrize(("name", "text", "kind"), [
    ("c.json", '{"epochs": 2,}', "JSON"),
    ("C.JSON", '{"epochs": 2,}', "JSON"),
    ("c.toml", "epochs = = 2", "TOML"),
    ("c.cfg", "epochs = = 2", "TOML"),
])
def test_a_syntax_error_names_the_format_the_suffix_chose(tmp_path: Path, name: str, text: str,
                                                          kind: str) -> None:
    config = tmp_path / name
    config.write_text(text)
    with pytest.raises(ZooError, match=rf"^config file '.*{name}' is not valid {kind}: "):
        load_config_file(config)


def test_print_config_comments_exactly_the_unset_fields() -> None:
    config = TrainConfig(data_dir=Path("data"), grad_clip=None)
    text = config_toml(config, header="made by a test\n\nsecond line")
    comments = [line for line in text.splitlines() if line.startswith("#")]
    unset = [name for name, value in config.model_dump().items() if value is None
             and name != "grad_clip"]  # in the fields' order
    assert comments[:3] == ["# made by a test", "#", "# second line"]
    assert [c.split(":")[0][2:] for c in comments[3:]] == unset
    assert "data_dir" not in unset and "val_dir" in unset
    assert "# val_dir: unset (Separate validation directory)" in comments
    read_back = tomllib.loads(text)
    assert read_back["data_dir"] == "data" and read_back["grad_clip"] == 0.0
    assert TrainConfig(**read_back).model_dump(exclude={"grad_clip"}) == \
        config.model_dump(exclude={"grad_clip"})


def test_every_setting_has_a_description() -> None:
    """`zoo train --help`, `--print-config`'s comments and the reference show them."""
    undescribed = sorted(name for name, field in TrainConfig.model_fields.items()
                         if not field.description)
    assert undescribed == []
