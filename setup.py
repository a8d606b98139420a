"""Build hook: the wheel carries `salesforce-metadata/` as `sfsign/salesforce_metadata/`.

The SFDX package stays at the top of the repository, where admins deploy it with the Salesforce CLI;
an installed sfsign still needs it (`sfsign check` compares the org with it, rule validation knows the
package's fields, the emulator builds its schema from it). `sfsign.metadata.default_metadata_dir()`
looks for this packaged copy when there is no source tree, so a wheel works without
`SFSIGN_METADATA_DIR`. Everything else about the build is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

METADATA = Path(__file__).resolve().parent / "salesforce-metadata"


class BuildPyWithMetadata(build_py):
    """`build_py`, then copy the SFDX package into the built `sfsign` package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install finds the source tree's copy itself
            return
        if not (METADATA / "sfdx-project.json").is_file():
            raise SystemExit(f"{METADATA} is missing: the wheel must carry the SFDX package")
        target = Path(self.build_lib) / "sfsign" / "salesforce_metadata"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(METADATA, target)


setup(cmdclass={"build_py": BuildPyWithMetadata})
