"""`helm upgrade` from the last release keeps every byte: stateful objects keep their names and
immutable fields, generated Secrets are looked up rather than made anew, and a settings change
rolls exactly the pods that read it (upgrade.py; CHANGELOG.md's release policy)."""

from __future__ import annotations

import json
import re
import tarfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart import render, upgrade
from tests.chart.render import ROOT, Release, deep_merge, env_values, find, ours

SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?")


def test_one_version_names_the_chart_the_package_and_the_images() -> None:
    chart = yaml.safe_load((ROOT / "Chart.yaml").read_text())
    version = chart["version"]
    assert SEMVER.fullmatch(version), f"Chart.yaml version {version!r} is not SemVer"
    assert chart["appVersion"] == version, "appVersion tags the images: the same number"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(rf'^version = "{re.escape(version)}"$', pyproject, re.M), "pyproject.toml"
    bake = json.loads((ROOT / "docker" / "docker-bake.json").read_text())
    assert bake["variable"]["TAG"]["default"] == version, "docker-bake.json's TAG"
    last = upgrade.last_release()
    assert upgrade._semver(last) < upgrade._semver(version)
    section = upgrade.upgrading_section(version)
    assert f"Upgrading from {last}" in (ROOT / "CHANGELOG.md").read_text()
    assert section.strip(), f"CHANGELOG.md has no '### Upgrading' section for {version}"


@pytest.fixture(scope="module")
def last() -> dict[str, dict[str, dict[str, Any]]]:
    return upgrade.released(upgrade.last_release())


def test_upgrade_from_the_last_release_loses_nothing_unannounced(
    env: str, release: Release, last: dict[str, dict[str, dict[str, Any]]]
) -> None:
    """Every stateful object of the last release's render is still there with the same immutable
    fields, or the changelog names it with its migration."""
    if env not in last:
        return  # an environment new since that version: nothing installed to upgrade
    before = last[env][release.name]
    if "error" in before:
        # That version could not render this environment: nothing was installed to upgrade.
        assert before["error"], "a summary records why it has no objects"
        return
    found = upgrade.changes(before["objects"], upgrade.current(env, release))
    section = upgrade.upgrading_section(upgrade.chart_version())
    assert upgrade.unexplained(found, release.name, section) == [], (
        "an upgrade would lose state or fail: keep the names and fields, or name each object "
        "with its migration in CHANGELOG.md's Upgrading section"
    )


@pytest.mark.parametrize("name", [r for r in render.RELEASES if r.name != render.RELEASE], ids=str)
def test_the_changelogs_values_keep_a_renamed_release_s_data(
    name: Release, last: dict[str, dict[str, dict[str, Any]]]
) -> None:
    """Under another release name, the values block CHANGELOG.md gives keeps every StatefulSet,
    volume and EventBus of the last release as it was (what else changes, it names)."""
    keep = upgrade.keep_names_values(upgrade.chart_version(), name.name)
    assert keep, "CHANGELOG.md gives no values block to keep a renamed release's names"
    installed = {
        env: releases[name.name]
        for env, releases in last.items()
        if "objects" in releases[name.name]
    }
    assert installed, "the last release installed nothing under another name: nothing to check"
    for env, before in installed.items():
        # The install also carried what that version's rules asked for under this name.
        overlay = deep_merge(before["values"], keep)
        found = upgrade.changes(before["objects"], upgrade.current(env, name, overlay))
        held = ("StatefulSet/", "PersistentVolumeClaim/", "EventBus/")
        assert [c for c in found if c.startswith(held)] == [], env
        section = upgrade.upgrading_section(upgrade.chart_version())
        assert upgrade.unexplained(found, name.name, section) == [], env


def test_a_planted_rename_or_volume_change_fails_the_check() -> None:
    """The check can fail: renaming our objects or resizing Redis' volume template is reported,
    and no changelog entry covers it."""
    prod = env_values("prod")
    before = upgrade.current("prod", render.RELEASES[0])
    renamed = upgrade.current("prod", render.RELEASES[0], {"fullnameOverride": "renamed"})
    resized = upgrade.current(
        "prod", render.RELEASES[0], deep_merge(prod, {"redis": {"persistence": {"size": "3Gi"}}})
    )
    section = upgrade.upgrading_section(upgrade.chart_version())
    left = upgrade.unexplained(upgrade.changes(before, renamed), "bigbertha", section)
    assert "StatefulSet/bigbertha-redis removed" in left
    assert "EventBus/bigbertha removed" in left
    assert not any(c.startswith("Deployment/") for c in left), "a Deployment holds no data"
    left = upgrade.unexplained(upgrade.changes(before, resized), "bigbertha", section)
    assert left and left[0].startswith("StatefulSet/bigbertha-redis: volumeClaimTemplates"), left
    assert '"storage": "3Gi"' in left[0]


def test_changes_name_each_lost_secret_key_and_changed_selector() -> None:
    old: upgrade.Summary = {
        "Secret/s": {"generated": ["password"], "keys": ["password", "user"]},
        "Deployment/d": {"selector": {"matchLabels": {"a": "1"}}},
        "Deployment/gone": {"selector": {"matchLabels": {"a": "1"}}},
    }
    new: upgrade.Summary = {
        "Secret/s": {"generated": [], "keys": ["user"]},
        "Deployment/d": {"selector": {"matchLabels": {"a": "2"}}},
    }
    assert upgrade.changes(old, new) == [
        "Secret/s: keys password removed",
        'Deployment/d: selector {"matchLabels": {"a": "1"}} -> {"matchLabels": {"a": "2"}}',
    ]


# --- generated Secrets survive upgrades ----------------------------------------------------


@cache
def _chart_sources(template: str) -> tuple[str, dict[str, str]]:
    """(the template's text, every named template of its chart: name -> body), read from our
    templates/ or the subchart archive that rendered `template`."""
    parts = template.split("/")
    if "charts" not in parts:
        base = ROOT
        files = {
            str(p.relative_to(ROOT)): p.read_text()
            for p in ROOT.glob("templates/**/*")
            if p.is_file()
        }
        inner = "/".join(parts[1:])
    else:
        top = parts[2]
        archive = next((ROOT / "charts").glob(f"{top}-*.tgz"))
        last = max(i for i, p in enumerate(parts) if p == "charts")
        prefix = "/".join(parts[2 : last + 2]) + "/"
        with tarfile.open(archive) as tar:
            files = {
                m.name[len(prefix) :]: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
                for m in tar.getmembers()
                if m.isfile() and m.name.startswith(prefix + "templates/")
            }
        inner = "/".join(parts[last + 2 :])
        base = Path(archive)
    defines = {}
    for text in files.values():
        for name, body in re.findall(
            r'{{-?\s*define\s+"([^"]+)"\s*-?}}(.*?){{-?\s*end\s*-?}}\s*(?={{-?\s*define|\Z|\n\n|{{/\*)',
            text,
            re.S,
        ):
            defines[name] = body
    assert inner in files, f"{inner} not found in {base}"
    return files[inner], defines


def _looks_up_live_secret(
    text: str, defines: dict[str, str], seen: frozenset[str] = frozenset()
) -> bool:
    if re.search(r'lookup\s+"v1"\s+"Secret"', text):
        return True
    for name in re.findall(r'include\s+"([^"]+)"', text):
        if (
            name in defines
            and name not in seen
            and _looks_up_live_secret(defines[name], defines, seen | {name})
        ):
            return True
    return False


def test_every_generated_secret_is_looked_up_before_it_is_made(env: str) -> None:
    """A generated value (different in two renders) comes from a template that reads the live
    Secret first, so `helm upgrade` keeps it (Argo CD cannot look up: docs/gitops.md)."""
    first = render.render_env(env)
    second = {d["metadata"]["name"]: d for d in find(render.render(env_values(env)), "Secret")}
    generated = [
        d
        for d in find(first, "Secret")
        if d.get("data") != second[d["metadata"]["name"]].get("data")
    ]
    assert generated or env == "prod", f"{env} generates its credentials: the check ran on none"
    for secret in generated:
        text, defines = _chart_sources(secret["__template"])
        assert _looks_up_live_secret(text, defines), (
            f"{secret['metadata']['name']} ({secret['__template']}) would be regenerated on upgrade"
        )


# --- settings changes roll exactly the pods that read them ----------------------------------


def _pod_templates(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"]
        for d in ours(docs)
        if d["kind"] in ("Deployment", "StatefulSet")
    }


REFS = {
    "configMapRef": "ConfigMap",
    "configMapKeyRef": "ConfigMap",
    "configMap": "ConfigMap",
    "secretRef": "Secret",
    "secretKeyRef": "Secret",
    "secret": "Secret",
}


def _reads(node: Any) -> set[str]:
    """`Kind/name` of every ConfigMap and Secret a pod spec reads: env, envFrom, volumes and
    projected volumes."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key in REFS and isinstance(value, dict):
                name = value.get("name") or value.get("secretName")
                if name:
                    found.add(f"{REFS[key]}/{name}")
            found |= _reads(value)
    elif isinstance(node, list):
        for item in node:
            found |= _reads(item)
    return found


def _data(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        f"{d['kind']}/{d['metadata']['name']}": (d.get("data"), d.get("stringData"))
        for d in ours(docs)
        if d["kind"] in ("ConfigMap", "Secret")
    }


@pytest.mark.parametrize(
    "change",
    [
        {"settings": {"chat": {"top_k": 7}}},
        {"settings": {"serving": {"poll_seconds": 45}}},
        {"chatbot": {"service": {"port": 8502}}},
        {"monitoring": {"rules": {"negativeFeedback": {"threshold": 0.4}}}},
    ],
    ids=["chat-setting", "serving-setting", "chatbot-port", "alert-threshold"],
)
def test_a_settings_change_rolls_exactly_the_pods_that_read_it(change: dict[str, Any]) -> None:
    values = env_values("prod")
    before = render.render(values)
    after = render.render(deep_merge(values, change))
    changed = {k for k, v in _data(after).items() if _data(before).get(k) != v}
    pods_before, pods_after = _pod_templates(before), _pod_templates(after)
    rolled = {k for k in pods_after if pods_before.get(k) != pods_after[k]}
    readers = {k for k, t in pods_after.items() if _reads(t["spec"]) & changed}
    assert changed or change.get("monitoring"), "the change reached no ConfigMap: a dead case"
    assert rolled == readers, (
        f"changed {sorted(changed)}: rolled {sorted(rolled)}, readers {sorted(readers)}"
    )
