#!/usr/bin/env bash
# make docker-check: build the CPU image and prove it serves, with podman, on a machine where
# no registry image can be pulled.
#
#  1. a Debian bookworm base (Python 3.11) built locally with debootstrap and imported
#     (once; reused while `podman image exists` says so)
#  2. docker/Dockerfile.cpu built FROM it (BASE_IMAGE build argument), pip reaching the
#     host's package index (its find-links directory and CA bundle mounted into the build)
#  3. the image run: wait for /health, a steered and an alpha-0 chat completion, the
#     `steering` object checked, a bad steer_alpha answered 400, then stopped
#  4. the same through docker/docker-compose.yml's `cpu` profile (podman-compose)
# Every step prints its wall time. Needs root (podman, debootstrap); installs them with apt.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=localhost/adaras-base:bookworm
IMAGE=localhost/adaras-vllm-cpu:latest
PORT=${ADARAS_CHECK_PORT:-18000}
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
PY=${PY:-.venv/bin/python}
T0=$(date +%s)
step() { printf '\n[%4ds] == %s\n' "$(( $(date +%s) - T0 ))" "$*"; }

step "tools"
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman debootstrap >/dev/null
fi
# crun (podman's default runtime) refuses hosts with cgroup v1 or hybrid hierarchies, as on
# these machines: use runc with cgroupfs there, for podman and podman-compose alike.
if [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then
    command -v runc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q runc >/dev/null
    export CONTAINERS_CONF=/tmp/adaras-containers.conf
    printf '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n' > "$CONTAINERS_CONF"
    echo "cgroup v1/hybrid host: podman runs with runc and cgroupfs"
fi
podman --version
"$PY" -m pip install --quiet "podman-compose==1.6.0"

step "base image $BASE"
if ! podman image exists "$BASE"; then
    rootfs=$(mktemp -d /tmp/adaras-rootfs.XXXXXX)
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates,libnuma1,curl \
        bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
    tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
    rm -rf "$rootfs"
fi
podman image inspect "$BASE" --format '{{.Id}} {{.Size}} bytes'

# The host's package index, passed through (pip's own configuration is not in the image).
BUILD_ARGS=(--build-arg "BASE_IMAGE=$BASE")
MOUNTS=()
for dir in /opt/wheels /opt/pypi /opt/pypi-more; do
    [ -d "$dir" ] && MOUNTS+=(--volume "$dir:$dir:ro")
done
[ -d /opt/wheels ] && BUILD_ARGS+=(--build-arg PIP_FIND_LINKS=/opt/wheels)
extra=""
for dir in /opt/pypi /opt/pypi-more; do [ -d "$dir" ] && extra+="file://$dir/simple "; done
[ -n "$extra" ] && BUILD_ARGS+=(--build-arg "PIP_EXTRA_INDEX_URL=${extra% }")
# PyTorch's own index (the image's default source of the CPU torch) is not reachable from
# every network; where the host keeps a local index, torch comes from there instead.
[ -d /opt/pypi ] && BUILD_ARGS+=(--build-arg TORCH_INDEX_URL=file:///opt/pypi/simple)
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    MOUNTS+=(--volume /etc/ssl/certs/ca-certificates.crt:/host-ca.crt:ro)
    BUILD_ARGS+=(--build-arg PIP_CERT=/host-ca.crt)
fi

step "build $IMAGE"
podman build --format docker --network host "${LIMITS[@]}" "${MOUNTS[@]}" "${BUILD_ARGS[@]}" \
    -f docker/Dockerfile.cpu -t "$IMAGE" . | tail -n 3
podman image inspect "$IMAGE" --format 'image size: {{.Size}} bytes'

probe() {  # $1 = base URL: health, steered + alpha-0 answers, a 400 for a bad alpha
    "$PY" - "$1" <<'EOF'
import sys, httpx
base = sys.argv[1]
assert httpx.get(f"{base}/health", timeout=10).status_code == 200
model = httpx.get(f"{base}/v1/models", timeout=10).json()["data"][0]["id"]
def chat(alpha):
    body = {"model": model, "max_tokens": 128, "temperature": 0,
            "messages": [{"role": "user", "content": "53+55-24-15"}]}
    if alpha is not None:
        body["steer_alpha"] = alpha
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
steered, plain, bad = chat(None), chat(0), chat("abc")
assert steered.status_code == 200 and plain.status_code == 200, (steered.text, plain.text)
s, p = steered.json()["steering"], plain.json()["steering"]
assert s["applied"] is True and s["alpha"] != 0, s
assert p["applied"] is False and p["alpha"] == 0, p
assert bad.status_code == 400 and "steer_alpha" in bad.text, bad.text
print(f"model {model}; steered: {s}")
print(f"  {steered.json()['choices'][0]['message']['content']!r}")
print(f"alpha 0: {p}")
print(f"  {plain.json()['choices'][0]['message']['content']!r}")
print(f"bad steer_alpha: {bad.status_code} {bad.json()['error']['message'][:100]}")
EOF
}

wait_healthy() {  # $1 = base URL, $2 = what to show on failure
    for _ in $(seq 1 300); do
        curl -fsS "$1/health" >/dev/null 2>&1 && return 0
        sleep 1
    done
    echo "not healthy after 300 s"; eval "$2"; return 1
}

step "run the image"
podman rm -f adaras-check >/dev/null 2>&1 || true
started=$(date +%s)
podman run -d --name adaras-check --network host --shm-size 1g "${LIMITS[@]}" "$IMAGE" \
    --host 127.0.0.1 --port "$PORT" >/dev/null
trap 'podman rm -f adaras-check >/dev/null 2>&1 || true' EXIT
wait_healthy "http://127.0.0.1:$PORT" "podman logs --tail 40 adaras-check"
echo "healthy after $(( $(date +%s) - started )) s"
probe "http://127.0.0.1:$PORT"
podman stop -t 20 adaras-check >/dev/null && podman rm adaras-check >/dev/null
echo "stopped"

step "compose: the cpu profile"
export ADARAS_CPU_PORT=$PORT PODMAN_COMPOSE_PROVIDER=podman-compose
COMPOSE=("$PY" -m podman_compose -f docker/docker-compose.yml --profile cpu)
started=$(date +%s)
"${COMPOSE[@]}" --podman-run-args="${LIMITS[*]}" up -d --no-build adaras-cpu >/dev/null
trap '"${COMPOSE[@]}" down >/dev/null 2>&1 || true' EXIT
wait_healthy "http://127.0.0.1:$PORT" "${COMPOSE[*]} logs adaras-cpu | tail -40"
echo "healthy after $(( $(date +%s) - started )) s"
probe "http://127.0.0.1:$PORT"
"${COMPOSE[@]}" down >/dev/null 2>&1
echo "stopped"

step "docker-check passed"
