"""What an in-place `helm upgrade` must keep: the stateful objects of a render and their immutable
fields, summarised, and compared with the summary of the last release.

`summarize(docs)` keeps, per object (`Kind/name`):
- StatefulSets: selector, serviceName, podManagementPolicy and volumeClaimTemplates (the API
  server refuses to change them in place; a renamed StatefulSet starts on new, empty volumes);
- PersistentVolumeClaims: access modes, class and size (size may only grow);
- Deployments and DaemonSets: selector (immutable; a change makes `helm upgrade` fail);
- Secrets that hold state: generated values (a new name or a template that does not look the old
  one up regenerates them) and those kept on uninstall;
- custom resources whose controller keeps volumes under their name: EventBus (JetStream),
  Prometheus, Alertmanager, with their storage.

The last release's summary is committed as tests/chart/releases/<version>.json (small, and
independent of the clone's history): `python -m tests.chart.upgrade` writes the current one when a
version is released (the release policy at the top of CHANGELOG.md).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.chart import render

RELEASES_DIR = Path(__file__).with_name("releases")
CHANGELOG = render.ROOT / "CHANGELOG.md"
Summary = dict[str, dict[str, Any]]


def _storage(spec: dict[str, Any] | None) -> dict[str, Any]:
    spec = spec or {}
    return {
        "accessModes": sorted(spec.get("accessModes") or []),
        "storageClassName": spec.get("storageClassName"),
        "storage": ((spec.get("resources") or {}).get("requests") or {}).get("storage"),
    }


def _statefulset(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    return {
        "selector": spec.get("selector"),
        "serviceName": spec.get("serviceName"),
        "podManagementPolicy": spec.get("podManagementPolicy", "OrderedReady"),
        "volumeClaimTemplates": {
            t["metadata"]["name"]: _storage(t.get("spec"))
            for t in spec.get("volumeClaimTemplates") or []
        },
    }


def _selector(doc: dict[str, Any]) -> dict[str, Any]:
    return {"selector": doc["spec"].get("selector")}


def _pvc(doc: dict[str, Any]) -> dict[str, Any]:
    return _storage(doc.get("spec"))


def _eventbus(doc: dict[str, Any]) -> dict[str, Any]:
    jetstream = doc["spec"].get("jetstream") or {}
    return {"persistence": jetstream.get("persistence")}


def _monitoring_cr(doc: dict[str, Any]) -> dict[str, Any]:
    return {"storage": doc["spec"].get("storage")}


SUMMARISED: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "StatefulSet": _statefulset,
    "PersistentVolumeClaim": _pvc,
    "Deployment": _selector,
    "DaemonSet": _selector,
    "EventBus": _eventbus,
    "Prometheus": _monitoring_cr,
    "Alertmanager": _monitoring_cr,
}


def _secret_values(doc: dict[str, Any]) -> dict[str, str]:
    return {**(doc.get("data") or {}), **(doc.get("stringData") or {})}


def summarize(docs: list[dict[str, Any]], again: list[dict[str, Any]]) -> Summary:
    """The stateful objects of one render. `again` is a second render of the same values: a Secret
    whose values differ between the two is generated at install, so it holds state."""
    second = {d["metadata"]["name"]: _secret_values(d) for d in again if d.get("kind") == "Secret"}
    summary: Summary = {}
    for doc in docs:
        kind, meta = doc.get("kind"), doc.get("metadata") or {}
        if kind in SUMMARISED:
            summary[f"{kind}/{meta['name']}"] = SUMMARISED[kind](doc)
        elif kind == "Secret":
            values = _secret_values(doc)
            rerendered = second.get(meta["name"], {})
            generated = sorted(k for k, v in values.items() if rerendered.get(k) != v)
            kept = (meta.get("annotations") or {}).get("helm.sh/resource-policy") == "keep"
            if generated or kept:
                summary[f"Secret/{meta['name']}"] = {"generated": generated, "keys": sorted(values)}
    return dict(sorted(summary.items()))


def current(env: str, release: render.Release, overlay: dict[str, Any] | None = None) -> Summary:
    """The summary of this chart's render of `env` (with `overlay` on top of its values)."""
    values = render.deep_merge(render.env_values(env), overlay or {})
    kwargs: dict[str, Any] = {"release": release.name, "namespace": release.namespace}
    first = render.render_env(env, release) if overlay is None else render.render(values, **kwargs)
    return summarize(first, render.render(values, **kwargs))


def _semver(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("-")[0].split("."))


def chart_version() -> str:
    return str(yaml.safe_load((render.ROOT / "Chart.yaml").read_text())["version"])


def last_release() -> str:
    """The newest release with a committed summary older than the chart's version."""
    ours = _semver(chart_version())
    versions = [p.stem for p in RELEASES_DIR.glob("*.json") if _semver(p.stem) < ours]
    assert versions, f"{RELEASES_DIR} holds no release older than {chart_version()}"
    return max(versions, key=_semver)


def released(version: str) -> dict[str, dict[str, dict[str, Any]]]:
    """env -> release name -> {"values", "objects"} or {"error"}, as committed for `version`."""
    data = json.loads((RELEASES_DIR / f"{version}.json").read_text())
    environments: dict[str, dict[str, dict[str, Any]]] = data["environments"]
    return environments


# Removing these loses nothing: their pods are replaced, their data lives elsewhere.
STATELESS = ("Deployment", "DaemonSet")


def changes(old: Summary, new: Summary) -> list[str]:
    """Every difference an in-place upgrade cannot take without losing state or failing, one line
    each, starting with the object: `Kind/name removed` or `Kind/name: field before -> after`."""
    found = []
    for key, before in old.items():
        kind = key.split("/", 1)[0]
        after = new.get(key)
        if after is None:
            if kind not in STATELESS:
                found.append(f"{key} removed")
            continue
        for field, was in before.items():
            now = after.get(field)
            if kind == "Secret":
                lost = sorted(set(before["keys"]) - set(after["keys"]))
                if field == "keys" and lost:
                    found.append(f"{key}: keys {', '.join(lost)} removed")
            elif now != was:
                found.append(f"{key}: {field} {json.dumps(was)} -> {json.dumps(now)}")
    return found


def unexplained(found: list[str], release: str, section: str) -> list[str]:
    """The changes whose object the changelog's Upgrading section does not name, in backticks as
    `Kind/name` with the release name written `<release>`."""
    left = []
    for change in found:
        key = re.split(r":? ", change, maxsplit=1)[0]
        name = re.sub(rf"\b{re.escape(release)}\b", "<release>", key)
        if f"`{name}`" not in section:
            left.append(change)
    return left


def upgrading_section(version: str) -> str:
    """The "Upgrading" part of `version`'s entry in CHANGELOG.md ('' when there is none)."""
    text = CHANGELOG.read_text()
    entry = re.search(rf"^## \[?{re.escape(version)}\]?.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    if not entry:
        return ""
    part = re.search(r"^### Upgrading.*?$(.*?)(?=^### |\Z)", entry.group(1), re.M | re.S)
    return part.group(1) if part else ""


KEEP_NAMES = "# values for an upgrade of a release not named bigbertha"


def keep_names_values(version: str, release: str) -> dict[str, Any]:
    """The values block the Upgrading section gives to keep a renamed release's objects (the YAML
    block headed KEEP_NAMES, `<release>` replaced by the release name); {} when it has none."""
    for block in re.findall(r"```yaml\n(.*?)```", upgrading_section(version), re.S):
        if block.startswith(KEEP_NAMES):
            return yaml.safe_load(block.replace("<release>", release)) or {}
    return {}


def summarize_chart(
    chart_dir: Path, overrides: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """env -> release name -> {"values": what the install needed on top of the env's files,
    "objects": summary} or {"error": why it does not render (so nothing was installed)}."""
    overrides = overrides or {}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for env in render.ENVS:
        files = [chart_dir / "values" / f"{name}.yaml" for name in render.ENV_FILES[env]]
        for rel in render.RELEASES:
            extra = overrides.get(rel.name, {})
            values = render.chart.load_values(files, extra)
            kwargs: dict[str, Any] = {"release": rel.name, "namespace": rel.namespace}
            entry: dict[str, Any]
            try:
                docs = [
                    render.documents(
                        render.chart.render_templates(values, chart_dir=chart_dir, **kwargs)
                    )
                    for _ in range(2)
                ]
            except Exception as exc:  # noqa: BLE001 - helm_python's errors: it renders nothing
                entry = {"error": " ".join(str(exc).split())[:300]}
            else:
                entry = {"values": extra, "objects": summarize(*docs)}
            out.setdefault(env, {})[rel.name] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chart", type=Path, default=render.ROOT, help="the chart to summarise")
    parser.add_argument(
        "--values",
        action="append",
        default=[],
        metavar="RELEASE=FILE",
        help="values an install under RELEASE needed beyond the env files (that version's rules)",
    )
    parser.add_argument("--source", default="", help="where the chart came from (git commit)")
    args = parser.parse_args()
    meta = yaml.safe_load((args.chart / "Chart.yaml").read_text())
    overrides = {}
    for item in args.values:
        name, _, path = item.partition("=")
        overrides[name] = yaml.safe_load(Path(path).read_text()) or {}
    data = {
        "version": meta["version"],
        "source": args.source,
        "environments": summarize_chart(args.chart, overrides),
    }
    RELEASES_DIR.mkdir(exist_ok=True)
    target = RELEASES_DIR / f"{meta['version']}.json"
    target.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    for env, releases in data["environments"].items():
        for name, entry in releases.items():
            state = entry.get("error") or f"{len(entry['objects'])} stateful objects"
            print(f"{env}/{name}: {state[:160]}")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
