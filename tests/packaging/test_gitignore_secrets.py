"""The private keys of the demo CA and the emulator's connection files never end up in a commit.

`sfsign demo-keys` writes the whole demo PKI (root and issuing CA private keys included) under
config/keys/demo-pki/, and the emulator's `--json-out` file holds the consumer secret and the
control token; `git add -A` after trying the product must not pick any of them up.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sfsign.localpki.pki import create_demo_pki

REPO = Path(__file__).resolve().parents[2]


def _ignored(paths: list[str]) -> set[str]:
    """The subset of `paths` (relative to the repo) that git ignores; they need not exist."""
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        cwd=REPO, input="\n".join(paths), capture_output=True, text=True, timeout=30,
    )
    assert result.returncode in (0, 1), result.stderr
    return set(result.stdout.split())


@pytest.fixture(scope="module")
def demo_pki_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Every file `sfsign demo-keys` writes into its demo-pki folder, as repo paths under config/keys."""
    directory = tmp_path_factory.mktemp("demo-keys") / "demo-pki"
    create_demo_pki(directory, passphrase="x" * 16, key_algorithm="ec-p256",
                    services_url="http://127.0.0.1:1")  # with OCSP responders: every key file there is
    return [f"config/keys/demo-pki/{p.name}" for p in sorted(directory.iterdir())]


def test_every_demo_pki_file_is_git_ignored(demo_pki_files: list[str]) -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    assert any(name.endswith("root-ca-key.pem") for name in demo_pki_files)
    assert set(demo_pki_files) - _ignored(demo_pki_files) == set()


def test_emulator_connection_files_are_git_ignored() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    # the names docs/salesforce-setup.md and deploy/docker-compose.yml use for `--json-out`
    paths = ["emulator.json", "connection.json", "deploy/emulator.json"]
    assert set(paths) - _ignored(paths) == set()


def test_the_example_rules_and_key_readme_stay_tracked() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    assert _ignored(["config/rules.yaml", "config/keys/README.md"]) == set()


def test_the_generated_link_key_is_git_ignored_wherever_the_data_directory_is() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["link.key", "data/link.key", "deploy/data/link.key"]  # sfsign.signing.tokens.LINK_KEY_FILE
    assert set(paths) - _ignored(paths) == set()
