"""Relative paths resolve one documented way: path settings (SFSIGN_DATA_DIR, SFSIGN_RULES_FILE,
SFSIGN_CA_BUNDLE, SFSIGN_PRIVATE_KEY_FILE) against the directory sfsign starts in; paths inside the rules
file (keys, trust roots, templates) against the rules file's folder. Each is tested relative and absolute,
with the real command line against the emulator."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import cli_env, echo_output

from sfsign.commands.demo_rules import PASSPHRASE_ENV, RULES_TEMPLATE
from sfsign.config import Rules, Settings
from sfsign.localpki.pki import DemoPki

TEMPLATES = Path(__file__).resolve().parents[2] / "sfsign" / "documents" / "templates"


def _cli(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "sfsign.cli", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout, check=False)
    echo_output(result)
    return result


def test_demo_with_a_relative_work_dir_signs_all_six(tmp_path: Path) -> None:
    """Today: 0 of 5, every job "cannot read …/wd/wd/pki/signer.p12" (the absolute form is in test_cli)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFSIGN_")}
    result = _cli(["demo", "--work-dir", "wd", "--output", "out"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 of 6 documents signed" in result.stdout
    assert len(list((tmp_path / "out").glob("*.pdf"))) == 7  # with the customer's certificate of completion
    assert (tmp_path / "wd" / "pki" / "signer.p12").is_file() and not (tmp_path / "wd" / "wd").exists()


@pytest.mark.parametrize("kind", ["relative", "absolute"])
async def test_every_path_setting_and_rules_path_resolves_the_documented_way(
    settings: Settings, rules: Rules, pki: DemoPki, tmp_path: Path, kind: str
) -> None:
    base = tmp_path / "install"
    conf = base / "conf"
    (conf / "keys").mkdir(parents=True)
    (conf / "templates").mkdir()
    for name in ("quote.typ", "common.typ"):
        shutil.copy(TEMPLATES / name, conf / "templates" / name)
    shutil.copy(pki.signer_p12_path, conf / "keys" / "signer.p12")
    shutil.copy(pki.root_cert_pem_path, conf / "keys" / "root.pem")
    shutil.copy(settings.ca_bundle or "", base / "ca.pem")
    shutil.copy(settings.private_key_file or "", base / "jwt.pem")
    in_rules = {"relative": ("keys/signer.p12", "keys/root.pem", "templates/quote.typ"),
                "absolute": (conf / "keys/signer.p12", conf / "keys/root.pem", conf / "templates/quote.typ")}[kind]
    (conf / "rules.yaml").write_text(
        RULES_TEMPLATE.replace("template: quote", f"template: {in_rules[2]}").format(
            p12=in_rules[0], root=in_rules[1], passphrase_env=PASSPHRASE_ENV))
    prefix = "" if kind == "relative" else f"{base}/"
    env = cli_env(settings, SFSIGN_DATA_DIR=f"{prefix}data", SFSIGN_RULES_FILE=f"{prefix}conf/rules.yaml",
                  SFSIGN_CA_BUNDLE=f"{prefix}ca.pem", SFSIGN_PRIVATE_KEY_FILE=f"{prefix}jwt.pem")

    result = await asyncio.to_thread(_cli, ["check"], base, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ready: every check passed" in result.stdout
    assert any(line.startswith("ok    data directory") and line.endswith(f"  {base / 'data'} is writable")
               for line in result.stdout.splitlines()), result.stdout
    assert f"{conf / 'templates' / 'quote.typ'}: " in result.stdout
    assert (base / "data").is_dir()
