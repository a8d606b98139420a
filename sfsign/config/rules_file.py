"""Loading the rules file: YAML with the line of every key, so each mistake names the file, the line and
the fix, and the checks no single entry can make alone (unique rule names, known objects and fields,
templates inside the configuration directory, defined profiles, file name placeholders).

Paths in the file are relative to the file's folder; they are resolved here, once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sfsign.config.errors import ConfigError
from sfsign.config.rules import (
    BUILTIN_TEMPLATES,
    CUSTOM_FIELD,
    SFSIGN_OWNED_FIELDS,
    STANDARD_TRIGGER_FIELDS,
    KeyConfig,
    ProfileConfig,
    RuleConfig,
    Rules,
    RulesFile,
)
from sfsign.config.signers import line_key, signer_paths, signer_problems
from sfsign.metadata import MetadataError, load_schema


class _LineLoader(yaml.SafeLoader):
    """A YAML loader that remembers the line of every mapping key and sequence item."""


def _yaml_with_lines(text: str, source: Path) -> tuple[Any, dict[tuple[Any, ...], int]]:
    try:
        node = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else str(source)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    lines: dict[tuple[Any, ...], int] = {}

    def walk(n: yaml.Node, path: tuple[Any, ...]) -> None:
        lines[path] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                walk(v, (*path, k.value))
                lines[(*path, k.value)] = k.start_mark.line + 1  # the key's line, not its value's
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, (*path, i))

    if node is not None:
        walk(node, ())
    data = yaml.load(text, Loader=yaml.SafeLoader)
    return data, lines


def _line_for(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return 1


def _known_fields(metadata_dir: Path | None) -> dict[str, set[str]]:
    known = {obj: set(fields) for obj, fields in STANDARD_TRIGGER_FIELDS.items()}
    try:
        schema = load_schema(metadata_dir)
    except MetadataError:
        return known
    for obj, fields in known.items():
        if obj in schema.objects:
            fields.update(schema.objects[obj].fields)
    return known


Lines = dict[tuple[Any, ...], int]


def load_rules(path: Path, *, metadata_dir: Path | None = None) -> Rules:
    """Parse and check the rules file; every error names the file, the line and the fix."""
    parsed, lines = _parse(path)
    errors: list[str] = []
    templates = _check_rules(parsed, path, lines, _known_fields(metadata_dir), errors)
    profiles = _resolve_profiles(parsed, path, lines, errors)
    if errors:
        raise ConfigError("\n".join(errors))
    return Rules(
        source=path,
        seller=parsed.seller,
        profiles=profiles,
        rules=list(parsed.rules),
        templates=templates,
        lines={
            (rule.name, key): _line_for(lines, ("rules", i, key))
            for i, rule in enumerate(parsed.rules)
            for key in ("name", "object", "field", "values", "fields", "record_types")
        } | {
            (rule.name, line_key(*sub)): _line_for(lines, ("rules", i, "signers", *sub))
            for i, rule in enumerate(parsed.rules) if rule.signers is not None
            for sub in signer_paths(rule.signers)
        },
    )


def _parse(path: Path) -> tuple[RulesFile, Lines]:
    """The file as the model, with the line of every key; what the model refuses, at its line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the rules file ({exc.strerror}); set SFSIGN_RULES_FILE") from None
    data, lines = _yaml_with_lines(text, path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the rules file must be a mapping with `seller`, `signing_profiles`, `rules`")
    try:
        return RulesFile.model_validate(data), lines
    except ValidationError as exc:
        msgs = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            dotted = ".".join(str(p) for p in loc)
            msgs.append(f"{path}:{_line_for(lines, loc)}: {dotted}: {err['msg']}")
        raise ConfigError("\n".join(msgs)) from None


def _check_rules(
    parsed: RulesFile, path: Path, lines: Lines, known: dict[str, set[str]], errors: list[str]
) -> dict[str, Path | str]:
    """Appends each rule's mistakes to `errors`; returns each rule's template (built-in name or path)."""
    names: set[str] = set()
    templates: dict[str, Path | str] = {}
    for i, rule in enumerate(parsed.rules):

        def at(key: str, _i: int = i) -> str:
            return f"{path}:{_line_for(lines, ('rules', _i, key))}"

        if rule.name in names:
            errors.append(f"{at('name')}: rule name {rule.name!r} is used twice; rule names must be unique")
        names.add(rule.name)
        errors += _watched_field_problems(rule, known, at)
        if rule.signers is not None:
            errors += signer_problems(rule.object, rule.field, rule.values, rule.signers,
                                      lambda *sub, _i=i: f"{path}:{_line_for(lines, ('rules', _i, 'signers', *sub))}")
        if rule.profile not in parsed.signing_profiles:
            errors.append(
                f"{at('profile')}: unknown signing profile {rule.profile!r}; "
                f"defined: {', '.join(sorted(parsed.signing_profiles))}"
            )
        templates[rule.name] = _template(rule, path, at, errors)
        try:
            rule.file_name.format(kind="x", number="x", name="x", date="x", transaction_id="x", record_id="x")
        except (KeyError, IndexError, ValueError) as exc:
            errors.append(
                f"{at('file_name')}: bad placeholder {exc} in file_name; "
                "use {kind}, {number}, {name}, {date}, {transaction_id}, {record_id}"
            )
    return templates


def _watched_field_problems(rule: RuleConfig, known: dict[str, set[str]], at: Callable[[str], str]) -> list[str]:
    """The object and field a rule watches: supported, not one sfsign writes, spelled as the schema has it."""
    if rule.object not in known:
        return [f"{at('object')}: unknown object {rule.object!r}; supported: {', '.join(sorted(known))}"]
    if rule.field in SFSIGN_OWNED_FIELDS:
        return [
            f"{at('field')}: rule watches {rule.field!r}, which sfsign writes itself; "
            "it would re-trigger on every write-back. Watch a business field such as StageName"
        ]
    if rule.field not in known[rule.object] and not CUSTOM_FIELD.match(rule.field):
        return [
            f"{at('field')}: unknown field {rule.field!r} on {rule.object}; "
            f"use one of: {', '.join(sorted(known[rule.object]))}, or a custom field of your org "
            "(its API name, ending in __c; checked against the org at start)"
        ]
    return []


def _template(rule: RuleConfig, path: Path, at: Callable[[str], str], errors: list[str]) -> Path | str:
    """A built-in template's name, or the .typ file's resolved path (its mistakes appended to `errors`)."""
    if rule.template in BUILTIN_TEMPLATES:
        return rule.template
    templates_dir = path.parent.resolve()
    tpath = (path.parent / rule.template).resolve()
    if not tpath.is_relative_to(templates_dir):
        # Typst reads the template and anything beside it (its root is the template's folder):
        # a path out of the configuration directory would let a rules file read any file.
        errors.append(
            f"{at('template')}: template {rule.template!r} resolves to {tpath}, outside the "
            f"templates directory {templates_dir} (the rules file's folder); put the .typ file there "
            "(e.g. templates/my.typ) and name it by its path relative to the rules file"
        )
    elif not tpath.is_file():
        errors.append(
            f"{at('template')}: unknown template {rule.template!r}: no file {tpath}; "
            f"use a built-in template ({', '.join(sorted(BUILTIN_TEMPLATES))}) or a .typ path "
            "relative to the rules file"
        )
    return tpath


def _resolve_profiles(parsed: RulesFile, path: Path, lines: Lines, errors: list[str]) -> dict[str, ProfileConfig]:
    """The signing profiles with their key, chain and trust root paths made absolute (relative to the
    rules file's folder); a malformed passphrase variable name is appended to `errors`."""
    profiles: dict[str, ProfileConfig] = {}
    for pname, profile in parsed.signing_profiles.items():
        key = profile.key
        profiles[pname] = profile.model_copy(
            update={
                "key": key.model_copy(update=_resolved_key_paths(key, path.parent)),
                "trust_roots": [(path.parent / c).resolve() for c in profile.trust_roots],
            }
        )
        if key.passphrase_env is not None and not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key.passphrase_env):
            line = _line_for(lines, ("signing_profiles", pname, "key", "passphrase_env"))
            errors.append(f"{path}:{line}: passphrase_env must be an environment variable name")
    return profiles


def _resolved_key_paths(key: KeyConfig, folder: Path) -> dict[str, Any]:
    resolved: dict[str, Any] = {}
    for attr in ("pkcs12", "pem_key", "pem_cert"):
        value = getattr(key, attr)
        if value is not None:
            resolved[attr] = (folder / value).resolve()
    resolved["chain"] = [(folder / c).resolve() for c in key.chain]
    if key.pkcs11 is not None:
        hsm = key.pkcs11
        resolved["pkcs11"] = hsm.model_copy(
            update={"cert_file": (folder / hsm.cert_file).resolve() if hsm.cert_file else None}
        )
    return resolved
