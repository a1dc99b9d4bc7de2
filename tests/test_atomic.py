"""Every artifact is written atomically: a writer that fails or a process killed mid-write
leaves the previous file (or none) under the name, never a partial one."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from qfcal import _io


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "ranges.json"
    _io.write_json_atomic(path, {"old": 1})
    with pytest.raises(OSError, match="disk full"), _io.atomic_path(path) as tmp:
        tmp.write_text('{"new": ')  # half a document
        raise OSError("disk full")
    assert path.read_text() == '{\n  "old": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["ranges.json"]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_process_killed_mid_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "model_int8.tflite"
    path.write_bytes(b"old complete file")
    code = textwrap.dedent(
        f"""
        import sys, time
        from qfcal import _io
        with _io.atomic_path({str(path)!r}) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"x" * 1_000_000)
                f.flush()
                print("writing", flush=True)
                time.sleep(60)
                f.write(b"rest")
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.1)
    assert path.read_bytes() == b"old complete file"
    # the temporary file is left behind, under a name no reader takes for the artifact
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != path.name]
    assert all(".tmp" in n for n in leftovers), leftovers
