"""xcodec_fast.cpu_malloc: glibc serves large tensors from its heap and keeps freed pages mapped.
Checked through glibc's own accounting (mallinfo2), in fresh processes: the setting is process-wide."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only"
)

# mmapped bytes (hblkhd) and heap bytes (arena) around one 64 MiB tensor; prints "mmapped heap".
PROBE = textwrap.dedent(
    """
    import ctypes, torch

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2

    def probe():
        # (bytes mmapped for one 64 MiB tensor, heap bytes still held after freeing it)
        before = libc.mallinfo2()
        x = torch.ones(16 << 20)  # 64 MiB, above glibc's largest mmap threshold
        during = libc.mallinfo2()
        del x
        after = libc.mallinfo2()
        return during.hblkhd - before.hblkhd, after.arena - before.arena
    """
)


def run(code: str, env_extra: dict | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "XCODEC_FAST_CPU_MALLOC"}
    env.update(env_extra or {}, PYTHONPATH=str(REPO))
    with tempfile.TemporaryDirectory() as scratch:  # whatever the code writes stays out of the checkout
        result = subprocess.run([sys.executable, "-c", PROBE + textwrap.dedent(code)], env=env, capture_output=True,
                                text=True, timeout=120, cwd=scratch)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_reuse_serves_large_tensors_from_the_heap():
    out = run(
        """
        from xcodec_fast import cpu_malloc
        assert cpu_malloc.mode() == "default"
        mmapped, _ = probe()
        assert mmapped >= 64 << 20, mmapped  # glibc's default: a fresh mapping, unmapped on free
        assert cpu_malloc.reuse_freed_memory() and cpu_malloc.reuse_freed_memory()  # idempotent
        assert cpu_malloc.mode() == "reuse"
        first = probe()
        second = probe()
        print(first[0], second[0], first[1])
        """
    )
    first_mmapped, second_mmapped, kept = map(int, out.split())
    assert first_mmapped == 0 and second_mmapped == 0  # served from the heap
    # And kept there once freed: the next tensor finds its pages mapped. The heap grows by 64 MiB
    # less the free space it already had at its top (seen: 188 KiB); trimmed, it would shrink back.
    assert kept >= (64 << 20) - (1 << 20)


def test_command_line_applies_it_unless_told_not_to(tmp_path):
    code = """
        import sys
        from xcodec_fast import cli, cpu_malloc
        sys.argv = ["xcodec-fast", "decode", "missing.npy", "-o", "out.wav", "--model", "random-tiny"]
        try:
            cli.main(sys.argv[1:])
        except SystemExit:
            pass  # the codes file does not exist: the point is what main set up before that
        print(cpu_malloc.mode())
        """
    assert run(code).splitlines()[-1] == "reuse"
    assert run(code, {"XCODEC_FAST_CPU_MALLOC": "default"}).splitlines()[-1] == "default"
    # The tokenizer's own entry point (python -m xcodec_fast.tokenize) too.
    tokenizer = """
        from xcodec_fast import cpu_malloc, tokenize
        tokenize.main(["/nonexistent-input-dir", "-o", "unused", "--model", "random-tiny"])
        print(cpu_malloc.mode())
        """
    assert run(tokenizer).splitlines()[-1] == "reuse"


def test_unknown_setting_is_an_error_that_names_it(monkeypatch):
    from xcodec_fast import cpu_malloc

    monkeypatch.setenv("XCODEC_FAST_CPU_MALLOC", "fast")
    with pytest.raises(ValueError, match="XCODEC_FAST_CPU_MALLOC='fast'"):
        cpu_malloc.apply_from_environment()
