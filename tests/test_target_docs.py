"""docs/targets/: one page per target (issue 23.5). The pages quote the code, so they fail here
when it drifts: every page exists and names device profiles that exist and load, every
`hwnas VERB ...` it shows is a real verb (and every command line in a bash block parses with
the CLI's own parser), every profile key it quotes (`power.source`, `agent_install.python`)
exists in DeviceProfile, and each page states its profile's runtime and power source as the
profile file has them."""

from __future__ import annotations

import argparse
import re
import shlex
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from hwnas.cli.main import build_parser
from hwnas.config import load_device_profile
from hwnas.config.models import DeviceProfile

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ROOT / "docs" / "targets"
# page -> the device profile it is about (its runtime and power source must be on the page)
PAGES = {"raspberry-pi-5.md": "raspberry-pi-5.yaml",
         "jetson-orin-nano.md": "jetson-orin-nano.yaml",
         "qualcomm-qnn.md": "qualcomm-qcs6490.yaml",
         "x86-gpu.md": "nvidia-gpu.yaml"}
ALL_PAGES = ["README.md", *PAGES]

CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
VERB = re.compile(r"(?<![\w./-])hwnas\s+([a-z][\w-]*)(?:\s+([a-z][\w-]*))?")
PROFILE_FILE = re.compile(r"device_profiles/[\w.-]+\.yaml")
KEY_PATH = re.compile(r"^([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+)(?::\s*(.*))?$")  # a.b[: value]


def page(name: str) -> str:
    return (TARGETS / name).read_text()


def code_texts(text: str) -> list[str]:
    """Inline code spans and the bodies of fenced blocks."""
    return CODE_SPAN.findall(FENCE.sub("", text)) + [body for _, body in FENCE.findall(text)]


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def model_of(annotation: typing.Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (a union of connections gives both)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in model_of(arg)]


def key_exists(path: str) -> bool:
    models: list[type[BaseModel]] = [DeviceProfile]
    for part in path.split("."):
        fields = [m.model_fields[part] for m in models if part in m.model_fields]
        if not fields:
            return False
        models = [m for f in fields for m in model_of(f.annotation)]
    return True


@pytest.mark.parametrize("name", ALL_PAGES)
def test_the_page_exists_and_names_profiles_that_load(name):
    text = page(name)
    named = set(PROFILE_FILE.findall(text))
    assert named, f"{name} names no device profile file"
    for relative in named:
        assert (ROOT / relative).is_file(), f"{name}: {relative} does not exist"
        load_device_profile(ROOT / relative)  # raises ConfigError if it no longer loads


@pytest.mark.parametrize("name", list(PAGES))
def test_the_page_is_about_its_profile_and_states_its_runtime_and_power(name):
    text = page(name)
    profile = load_device_profile(ROOT / "device_profiles" / PAGES[name])
    assert f"device_profiles/{PAGES[name]}" in text
    assert f"`runtime.name: {profile.runtime.name}`" in text, name
    assert f"`power.source: {profile.power.source}`" in text, name
    for provider in profile.runtime.execution_providers if profile.runtime.name == "onnxruntime" \
            else []:
        assert provider in text, f"{name} does not name {provider}, which its profile uses"
    assert 40 <= len(text.splitlines()) <= 120, f"{name}: keep it short"


@pytest.mark.parametrize("name", ALL_PAGES)
def test_every_hwnas_verb_shown_is_real(name):
    verbs = subparsers()
    shown = [m for code in code_texts(page(name)) for m in VERB.findall(code)]
    assert shown, f"{name} shows no hwnas command"
    for verb, action in shown:
        assert verb in verbs, f"{name}: `hwnas {verb}` is not a verb ({', '.join(verbs)})"
        positional = next((a for a in verbs[verb]._actions if a.choices and not a.option_strings),
                          None)  # agent install, devices check
        if positional is not None and action:
            assert action in positional.choices, f"{name}: `hwnas {verb} {action}`"


@pytest.mark.parametrize("name", ALL_PAGES)
def test_every_command_line_in_a_bash_block_parses(name):
    parser = build_parser()
    lines = [line.split(" #")[0].strip() for kind, body in FENCE.findall(page(name))
             if kind == "bash" for line in body.splitlines()]
    commands = [shlex.split(line) for line in lines if line.startswith("hwnas ")]
    for words in commands:
        try:
            parser.parse_args(words[1:])
        except SystemExit:
            pytest.fail(f"{name}: `{' '.join(words)}` does not parse")


@pytest.mark.parametrize("name", ALL_PAGES)
def test_every_profile_key_quoted_exists(name):
    tops = set(DeviceProfile.model_fields)
    quoted = [match.group(1) for code in CODE_SPAN.findall(page(name))
              if (match := KEY_PATH.match(code.strip())) and match.group(1).split(".")[0] in tops]
    quoted += [code.strip().split(":")[0] for code in CODE_SPAN.findall(page(name))
               if code.strip().split(":")[0] in tops]
    assert quoted or name == "README.md" and "agent_install.index" in page(name)
    missing = [key for key in quoted if not key_exists(key)]
    assert missing == [], f"{name} quotes profile keys DeviceProfile lacks: {missing}"


@pytest.mark.parametrize("name", list(PAGES))
def test_every_setting_quoted_is_a_value_its_key_takes(name):
    """`runtime.tensorrt_flags: [fp16, int8]` on a page is a setting a profile may hold: put
    into one of the profiles the page names, that profile still validates."""
    text = page(name)
    bases = [yaml.safe_load((ROOT / relative).read_text())
             for relative in sorted(set(PROFILE_FILE.findall(text)))]
    settings = [(m.group(1), m.group(2)) for code in CODE_SPAN.findall(text)
                if (m := KEY_PATH.match(code.strip())) and m.group(2)]
    assert settings, name
    for path, value in settings:
        errors = []
        for base in bases:
            profile = yaml.safe_load(yaml.safe_dump(base))
            *sections, key = path.split(".")
            where = profile
            for section in sections:
                where = where.setdefault(section, {})
            where[key] = yaml.safe_load(value)
            try:
                DeviceProfile.model_validate(profile)
                break
            except ValidationError as exc:
                errors.append(str(exc))
        else:
            pytest.fail(f"{name}: `{path}: {value}` is not a valid setting: {errors[0]}")


def test_the_checks_catch_a_wrong_key_and_a_wrong_verb():
    assert key_exists("agent_install.system_site_packages") and key_exists("connection.host")
    assert key_exists("connection.agent_port") and not key_exists("power.sources")
    assert not key_exists("agent_install.offline")
    assert VERB.findall("run `hwnas devices check x.yaml`") == [("devices", "check")]
    assert VERB.findall("python -m hwnas.testing.aarch64 check") == []
    assert "install" not in subparsers()


def test_the_readme_links_the_index():
    assert "docs/targets/README.md" in (ROOT / "README.md").read_text()
    index = page("README.md")
    for name in PAGES:
        assert f"]({name})" in index, f"the index does not link {name}"
