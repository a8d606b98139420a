"""The Dockerfile's install path, run for real: scripts/wheel-check.sh builds the wheels, installs them
into a clean venv (offline, wheels only), and runs the installed `sfsign check` (and, with the ops
endpoint, `sfsign run` with the Dockerfile's HEALTHCHECK) against the emulator, as the compose demo does.

Docker does not run on our machines; this is how the image's steps stay tested. It takes about a minute.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "wheel-check.sh"


def test_wheel_installed_in_a_clean_venv_passes_sfsign_check_against_the_emulator(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFSIGN_")}
    env["PYTHON"] = sys.executable
    # Its own session, so a timeout can end the emulator and daemon it started along with it.
    proc = subprocess.Popen(["bash", str(SCRIPT), str(tmp_path / "work")], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    output = stdout + stderr
    assert proc.returncode == 0, output[-6000:]
    assert "ready: every check passed" in stdout, output[-6000:]
    assert "wheel-check: OK" in stdout
    # The check ran from the clean venv, with the SFDX package the wheel carries.
    assert f"sfsign from {tmp_path / 'work' / 'venv'}" in stdout
    assert "/site-packages/sfsign/salesforce_metadata" in stdout
