"""sfsign: Salesforce stage changes → signed contracts, and customer signing (README.md)."""

import warnings

__version__ = "0.1.0"

# cryptography 51 deprecates DSA and warns when pyHanko imports its DSA key type, which every command and
# every pool process does: an operator would read it on each start, about an algorithm sfsign never uses.
# Only that warning, only from pyHanko's imports, is silenced.
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"pyhanko(\.|$)")
