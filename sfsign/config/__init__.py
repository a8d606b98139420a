"""Configuration: settings (environment) and rules (YAML), validated at start with file, line and fix.

Ops configure the process through `SFSIGN_*` variables, a `.env` file or a secrets directory (Docker
and Kubernetes secrets); admins configure *what* gets signed in one rules file. A mistake in either
must stop the daemon before it touches Salesforce, with a message that says where and how to fix it.

`settings.py` holds the process settings, `rules.py` the rules file's model, `rules_file.py` reads and
checks the file; everything is importable from `sfsign.config`, where the rest of sfsign finds it.
"""

from sfsign.config.errors import ConfigError as ConfigError
from sfsign.config.rules import BUILTIN_TEMPLATES as BUILTIN_TEMPLATES
from sfsign.config.rules import CUSTOM_FIELD as CUSTOM_FIELD
from sfsign.config.rules import FIELD_PATH as FIELD_PATH
from sfsign.config.rules import MASTER_RECORD_TYPE as MASTER_RECORD_TYPE
from sfsign.config.rules import RECORD_TYPE_NAME as RECORD_TYPE_NAME
from sfsign.config.rules import RECORD_TYPE_PATH as RECORD_TYPE_PATH
from sfsign.config.rules import SFSIGN_OWNED_FIELDS as SFSIGN_OWNED_FIELDS
from sfsign.config.rules import STANDARD_TRIGGER_FIELDS as STANDARD_TRIGGER_FIELDS
from sfsign.config.rules import AppearanceConfig as AppearanceConfig
from sfsign.config.rules import EidasLevel as EidasLevel
from sfsign.config.rules import KeyConfig as KeyConfig
from sfsign.config.rules import Pkcs11Config as Pkcs11Config
from sfsign.config.rules import ProfileConfig as ProfileConfig
from sfsign.config.rules import RuleConfig as RuleConfig
from sfsign.config.rules import Rules as Rules
from sfsign.config.rules import RulesFile as RulesFile
from sfsign.config.rules import SellerConfig as SellerConfig
from sfsign.config.rules import SignatureLevelName as SignatureLevelName
from sfsign.config.rules import TsaConfig as TsaConfig
from sfsign.config.rules_file import load_rules as load_rules
from sfsign.config.settings import CA_BUNDLE_FIX as CA_BUNDLE_FIX
from sfsign.config.settings import Settings as Settings
from sfsign.config.settings import load_settings as load_settings
from sfsign.config.settings import read_secret as read_secret
from sfsign.config.signers import SignerEntry as SignerEntry
from sfsign.config.signers import SignersConfig as SignersConfig
