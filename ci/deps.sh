#!/usr/bin/env bash
# Fill charts/ with the subchart archives Chart.yaml pins (`make deps`; docs/install.md).
#
# Two sources, the same result (charts/<name>-<version>.tgz, exactly what Helm renders):
#   - `helm dependency build` from the chart repositories Chart.yaml lists, when a helm binary
#     is on PATH and they answer;
#   - otherwise a mirror directory of the packaged archives: ../shared/charts (BIGBERTHA_SHARED)
#     by default, which is what CI uses. BIGBERTHA_CHART_MIRROR names one and always wins: an
#     air-gapped install keeps such a mirror (docs/air-gapped.md).
# Either way every archive is then checked: its chart's name and version must be the pins in
# Chart.yaml, and an archive no dependency pins (an older version left behind) is removed, since
# Helm would load it too. Any mismatch stops with a message naming the archive and the pin.
#
# Usage: ci/deps.sh [chart-dir]      (default: the repository root; needs bash, tar, awk)
set -euo pipefail

chart_dir=$(cd "${1:-$(dirname "$0")/..}" && pwd)
charts="$chart_dir/charts"
shared=${BIGBERTHA_SHARED:-$chart_dir/../shared}

fail() {
  echo "deps: $*" >&2
  exit 1
}

# "name version" per dependency of Chart.yaml (our Chart.yaml lists `- name:` then `version:`).
pins() {
  awk '
    /^dependencies:/ { deps = 1; next }
    deps && /^[^ #-]/ { deps = 0 }
    deps && /^ *- name:/ { name = $3 }
    deps && /^ *version:/ { gsub(/"/, "", $2); print name, $2 }
  ' "$chart_dir/Chart.yaml"
}

# The name and version inside an archive: <name>/Chart.yaml, as `helm dependency build` packs it.
archive_meta() {
  local archive=$1 name=$2 meta
  meta=$(tar -xzOf "$archive" "$name/Chart.yaml" 2>/dev/null) ||
    fail "$archive holds no $name/Chart.yaml: not a packaged $name chart"
  awk '/^name:/ { gsub(/"/, "", $2); n = $2 } /^version:/ { gsub(/"/, "", $2); v = $2 }
       END { print n, v }' <<<"$meta"
}

[[ -f "$chart_dir/Chart.yaml" ]] || fail "$chart_dir/Chart.yaml not found"
mapfile -t deps < <(pins)
[[ ${#deps[@]} -gt 0 ]] || fail "no dependencies found in $chart_dir/Chart.yaml"
mkdir -p "$charts"

from_mirror() {
  local mirror=$1
  [[ -d "$mirror" ]] || fail "chart mirror $mirror is not a directory (BIGBERTHA_CHART_MIRROR)"
  mirror=$(cd "$mirror" && pwd)
  echo "deps: copying the pinned subcharts from $mirror"
  for dep in "${deps[@]}"; do
    read -r name version <<<"$dep"
    src="$mirror/$name-$version.tgz"
    [[ -f "$src" ]] || fail "$src is missing: the mirror must hold $name $version (Chart.yaml's pin)"
    if ! cmp -s "$src" "$charts/$name-$version.tgz"; then
      cp "$src" "$charts/.$name-$version.tgz.part"
      mv "$charts/.$name-$version.tgz.part" "$charts/$name-$version.tgz"
    fi
  done
}

from_repositories() {
  echo "deps: helm dependency build from the chart repositories in Chart.yaml"
  # `helm dependency build` resolves each repository URL through a named repository entry.
  awk '/^ *- name:/ { name = $3 } /^ *repository:/ { print name, $2 }' "$chart_dir/Chart.yaml" |
    while read -r name url; do
      helm repo add --force-update "bigbertha-$name" "$url" >/dev/null || return 1
    done
  helm dependency build "$chart_dir"
}

if [[ -n "${BIGBERTHA_CHART_MIRROR:-}" ]]; then
  from_mirror "$BIGBERTHA_CHART_MIRROR"
elif command -v helm >/dev/null && from_repositories; then
  :
elif [[ -d "$shared/charts" ]]; then
  command -v helm >/dev/null && echo "deps: the chart repositories are unreachable; using the mirror"
  from_mirror "$shared/charts"
else
  fail "no chart repository reachable (helm) and no mirror: set BIGBERTHA_CHART_MIRROR to a directory of the pinned archives (docs/air-gapped.md)"
fi

# Whatever filled charts/, it must hold exactly the pinned archives.
declare -A wanted=()
for dep in "${deps[@]}"; do
  read -r name version <<<"$dep"
  archive="$charts/$name-$version.tgz"
  [[ -f "$archive" ]] || fail "$archive is missing after filling charts/"
  read -r inner_name inner_version < <(archive_meta "$archive" "$name")
  if [[ "$inner_name" != "$name" || "$inner_version" != "$version" ]]; then
    fail "$archive holds $inner_name $inner_version, but Chart.yaml pins $name $version"
  fi
  wanted["$name-$version.tgz"]=1
done
shopt -s nullglob
for archive in "$charts"/*.tgz; do
  if [[ -z "${wanted[$(basename "$archive")]:-}" ]]; then
    echo "deps: removing $archive: no dependency in Chart.yaml pins it"
    rm -f "$archive"
  fi
done
echo "deps: charts/ holds the ${#deps[@]} pinned subcharts"
