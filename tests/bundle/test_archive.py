from __future__ import annotations

import os
import stat
import struct
import zipfile
from pathlib import Path

import pytest

from mobex.bundle.archive import ALIGNMENT, safe_extract, write_deterministic_zip
from mobex.errors import UsageError, VerificationError


def _populate(root: Path, make_staging, mtime: int) -> Path:
    make_staging(root, "ios")  # nested directories exercise the sort order
    for path in root.rglob("*"):
        os.utime(path, (mtime, mtime))
    return root


def _data_offset(zip_bytes: bytes, info: zipfile.ZipInfo) -> int:
    h = info.header_offset
    assert zip_bytes[h : h + 4] == b"PK\x03\x04"
    name_len, extra_len = struct.unpack("<HH", zip_bytes[h + 26 : h + 30])
    return h + 30 + name_len + extra_len


def test_zip_is_byte_identical_across_folders_umask_and_mtimes(tmp_path: Path, make_staging) -> None:
    old = os.umask(0o022)
    try:
        a = _populate(tmp_path / "a" / "src", make_staging, mtime=1_000_000_000)
        os.umask(0o077)
        b = _populate(tmp_path / "b" / "elsewhere", make_staging, mtime=1_600_000_000)
    finally:
        os.umask(old)
    write_deterministic_zip(a, tmp_path / "a.zip", source_date_epoch=1_700_000_000)
    write_deterministic_zip(b, tmp_path / "b.zip", source_date_epoch=1_700_000_000)
    raw = (tmp_path / "a.zip").read_bytes()
    assert raw == (tmp_path / "b.zip").read_bytes()

    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    assert names == sorted(names, key=lambda n: n.encode()) and not any(n.endswith("/") for n in names)
    assert set(names) == {p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file()}
    for info in infos:
        assert info.date_time == (2023, 11, 14, 22, 13, 20)
        assert info.create_system == 3 and info.external_attr >> 16 == stat.S_IFREG | 0o644
        if info.filename.startswith("model/"):
            assert info.compress_type == zipfile.ZIP_STORED
            assert _data_offset(raw, info) % ALIGNMENT == 0  # mmap-able straight from the zip
        else:
            assert info.compress_type == zipfile.ZIP_DEFLATED
    # a different timestamp changes the bytes, the same one does not
    write_deterministic_zip(a, tmp_path / "c.zip", source_date_epoch=1_700_000_100)
    assert (tmp_path / "c.zip").read_bytes() != raw


def test_zip_timestamp_from_env_and_clamped_to_1980(
    tmp_path: Path, make_staging, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_staging(tmp_path / "src")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    write_deterministic_zip(src, tmp_path / "env.zip", source_date_epoch=None)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    write_deterministic_zip(src, tmp_path / "zero.zip", source_date_epoch=None)
    with zipfile.ZipFile(tmp_path / "env.zip") as zf:
        assert {i.date_time for i in zf.infolist()} == {(2023, 11, 14, 22, 13, 20)}
    with zipfile.ZipFile(tmp_path / "zero.zip") as zf:
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(UsageError, match="SOURCE_DATE_EPOCH"):
        write_deterministic_zip(src, tmp_path / "bad.zip", source_date_epoch=None)
    assert not (tmp_path / "bad.zip").exists()


def test_zip_refuses_symlinks(tmp_path: Path, make_staging) -> None:
    src = make_staging(tmp_path / "src")
    (src / "assets" / "link.txt").symlink_to(src / "report.json")
    with pytest.raises(UsageError, match="symlink"):
        write_deterministic_zip(src, tmp_path / "out.zip", source_date_epoch=0)
    assert not (tmp_path / "out.zip").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_safe_extract_round_trip(tmp_path: Path, make_staging) -> None:
    src = make_staging(tmp_path / "src", "ios")
    write_deterministic_zip(src, tmp_path / "b.zip", source_date_epoch=0)
    (tmp_path / "empty").mkdir()
    names = safe_extract(tmp_path / "b.zip", tmp_path / "empty")
    expected = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    assert names == expected
    for name in names:
        assert (tmp_path / "empty" / name).read_bytes() == (src / name).read_bytes()
    with pytest.raises(UsageError, match="new or empty"):
        safe_extract(tmp_path / "b.zip", tmp_path / "empty")


def _zip_with(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]], **kwargs) -> Path:
    import warnings

    with zipfile.ZipFile(path, "w", **kwargs) as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, data in entries:
            zf.writestr(name, data)
    return path


def _symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


HOSTILE = {
    "dotdot": ([("model/../../evil.txt", b"x")], "'..' component"),
    "dotdot-leading": ([("../evil.txt", b"x")], "'..' component"),
    "absolute": ([("/tmp/evil.txt", b"x")], "relative posix path"),
    "backslash": ([("..\\evil.txt", b"x")], "relative posix path"),
    "drive-letter": ([("C:/evil.txt", b"x")], "relative posix path"),
    "dot": ([("./a.txt", b"x")], "'.'"),
    "empty-component": ([("a//b.txt", b"x")], "empty"),
    "control-char": ([("a\nb.txt", b"x")], "control characters"),
    "symlink": ([(_symlink_info("assets/link"), b"/etc/passwd")], "symlink"),
    "duplicate": ([("a.txt", b"one"), ("a.txt", b"two")], "more than once"),
    "case-duplicate": ([("A.txt", b"one"), ("a.txt", b"two")], "differ only in case"),
    "file-and-dir": ([("a", b"file"), ("a/b.txt", b"x")], "both a file and a directory"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_safe_extract_refuses_hostile_names(tmp_path: Path, case: str) -> None:
    entries, message = HOSTILE[case]
    zip_path = _zip_with(tmp_path / "hostile.zip", entries)
    dest = tmp_path / "out" / "dest"
    with pytest.raises(VerificationError, match=message):
        safe_extract(zip_path, dest)
    assert not dest.exists()
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_safe_extract_refuses_zip_bomb_ratio(tmp_path: Path) -> None:
    zip_path = _zip_with(tmp_path / "bomb.zip", [("report.json", b"\0" * (8 << 20))], compression=zipfile.ZIP_DEFLATED)
    assert zip_path.stat().st_size < 64 << 10
    with pytest.raises(VerificationError, match="zip bomb"):
        safe_extract(zip_path, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_safe_extract_refuses_total_over_cap(tmp_path: Path) -> None:
    zip_path = _zip_with(tmp_path / "big.zip", [("a.bin", os.urandom(600)), ("b.bin", os.urandom(600))])
    with pytest.raises(VerificationError, match="more than 1000 bytes"):
        safe_extract(zip_path, tmp_path / "dest", max_total_bytes=1000)
    assert safe_extract(zip_path, tmp_path / "dest", max_total_bytes=2000) == ["a.bin", "b.bin"]


def _patch_sizes_and_flags(zip_path: Path, *, file_size: int | None = None, flags: int | None = None) -> None:
    """Edit the (single) member's declared uncompressed size / flag bits in both headers."""
    raw = bytearray(zip_path.read_bytes())
    local, central = raw.index(b"PK\x03\x04"), raw.index(b"PK\x01\x02")
    if file_size is not None:
        struct.pack_into("<I", raw, local + 22, file_size)
        struct.pack_into("<I", raw, central + 24, file_size)
    if flags is not None:
        struct.pack_into("<H", raw, local + 6, flags)
        struct.pack_into("<H", raw, central + 8, flags)
    zip_path.write_bytes(bytes(raw))


def test_safe_extract_refuses_data_larger_than_declared(tmp_path: Path) -> None:
    zip_path = _zip_with(tmp_path / "lie.zip", [("model/m.tflite", os.urandom(4096))])
    _patch_sizes_and_flags(zip_path, file_size=16)
    with pytest.raises(VerificationError, match="declares 16 bytes but stores 4096"):
        safe_extract(zip_path, tmp_path / "dest")


def test_safe_extract_refuses_deflated_data_larger_than_declared(tmp_path: Path) -> None:
    zip_path = _zip_with(tmp_path / "lie.zip", [("report.json", b'{"k": 1}\n' * 500)], compression=zipfile.ZIP_DEFLATED)
    _patch_sizes_and_flags(zip_path, file_size=100)
    with pytest.raises(VerificationError, match="corrupt|declared"):
        safe_extract(zip_path, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_safe_extract_refuses_encrypted_and_corrupt_members(tmp_path: Path) -> None:
    data = os.urandom(2048)
    zip_path = _zip_with(tmp_path / "enc.zip", [("a.bin", data)])
    _patch_sizes_and_flags(zip_path, flags=0x1)
    with pytest.raises(VerificationError, match="encrypted"):
        safe_extract(zip_path, tmp_path / "d1")
    zip_path = _zip_with(tmp_path / "crc.zip", [("a.bin", data)])
    raw = bytearray(zip_path.read_bytes())
    raw[raw.index(data[:32]) + 100] ^= 0xFF  # flip a stored data byte: CRC no longer matches
    zip_path.write_bytes(bytes(raw))
    with pytest.raises(VerificationError, match="corrupt"):
        safe_extract(zip_path, tmp_path / "d2")
    assert not (tmp_path / "d2").exists()


def test_safe_extract_rejects_non_zip(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"definitely not a zip")
    with pytest.raises(VerificationError, match="not a valid zip"):
        safe_extract(tmp_path / "x.zip", tmp_path / "dest")
