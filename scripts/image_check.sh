#!/usr/bin/env bash
# The image, built and run here in real containers: the CPU variant of ./Dockerfile runs a whole
# fleet arena. `make image-check`; docs/DEPLOY.md ("The image, checked in real containers") has its figures.
#
#   scripts/image_check.sh          build (reusing what is cached), run, compare, print the figures
#   scripts/image_check.sh --cold   first remake the base and drop the image: the cold build's figures
#
# 1. docker: docker.io and debootstrap come from apt when missing; dockerd is started when none
#    answers (--bridge=none --iptables=false: every build and container here uses --network host).
# 2. the base: no image can be pulled, so PYTHON_BASE is made from Debian's own packages (debootstrap
#    bookworm: Python 3.11) from the mirror apt uses, with a venv on PATH (Debian's Python refuses a
#    system-wide pip install) and this machine's CA bundle (pip's `cert`), as $BASE. Made once.
# 3. the build: the CPU variant with the legacy builder (DOCKER_BUILDKIT=0, which every docker
#    client still has), torch from TORCH_INDEX: unless given, the torch-version.txt wheel in pip's
#    find-links folder, served on http://127.0.0.1:$PORT. Then once more from a copy of the build
#    context whose code has one line more: torch and the dependencies must come from the cache.
# 4. the run: a master container (`evoarena run EXP --fleet`), then two worker containers, against
#    this machine's RabbitMQ (a queue of their own, signed tasks), SQLite and artifacts in one shared
#    directory; every task runs in the workers, as the image's non-root user, and the master's last
#    line must be a local run's (the image's `evoarena run EXP`, two worker processes in one container).
#
# Prints the figures and "IMAGE CHECK PASSED"; any failure exits non-zero with its reason (never a
# skip). Logs: runs/image-check/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

IMAGE=${IMAGE:-evoarena}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
TAG="$IMAGE:$VERSION-cpu"
BASE=${BASE:-evoarena-base:bookworm-py311}
PORT=${PORT:-8765}   # fixed: TORCH_INDEX is part of the torch layer's cache key
BROKER=${BROKER:-amqp://guest:guest@127.0.0.1:5672//}
EXP=${EXP:-experiments/arena-ring.yaml}
RUN_TIMEOUT=${RUN_TIMEOUT:-3600}   # seconds the fleet run may take
TORCH_VERSION=$(cat torch-version.txt)
LOGS=${IMAGE_CHECK_LOGS:-$ROOT/runs/image-check}
case "${1:-}" in
    "") COLD=0 ;;
    --cold) COLD=1 ;;
    *) echo "usage: $0 [--cold]" >&2; exit 2 ;;
esac

fail() { echo "IMAGE CHECK FAILED: $*" >&2; exit 1; }
say() { echo "== $*"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

rm -rf "$LOGS" && mkdir -p "$LOGS"
WORK=$(mktemp -d /tmp/evoarena-image-check.XXXXXX)
RUN_ID=imgcheck-$$
CONTAINERS=()
SERVER_PID=

cleanup() {
    local status=$?
    for c in "${CONTAINERS[@]}"; do docker logs -t "$c" >"$LOGS/$c.log" 2>&1 || true; done
    if ((${#CONTAINERS[@]})); then
        docker rm -f "${CONTAINERS[@]}" >/dev/null 2>&1 || true
        delete_queues || echo "warning: could not delete the queues of $RUN_ID" >&2
    fi
    [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null
    rm -rf "$WORK"
    ((status == 0)) || echo "logs: $LOGS" >&2
    exit "$status"
}
trap cleanup EXIT

# --- 1. docker ---------------------------------------------------------------------------------
missing=()
docker info >/dev/null 2>&1 || command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    ((EUID == 0)) || fail "${missing[*]} missing, and installing needs root"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
    say "starting dockerd (log: /var/log/evoarena-dockerd.log)"
    setsid nohup dockerd --bridge=none --iptables=false --ip6tables=false >/var/log/evoarena-dockerd.log 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || fail "dockerd did not start: $(tail -3 /var/log/evoarena-dockerd.log)"
fi
export DOCKER_BUILDKIT=0 DOCKER_CLI_HINTS=false

# --- 2. the base -------------------------------------------------------------------------------
if ((COLD)); then
    say "--cold: dropping $TAG, $BASE and unused layers"
    docker rmi -f "$TAG" "$BASE" "$BASE-raw" >/dev/null 2>&1 || true
    docker image prune -f >/dev/null
fi
made_base=0
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    mirror=$({ sed -nE 's/^deb (\[[^]]*\] )?([^ ]+).*/\2/p' /etc/apt/sources.list /etc/apt/sources.list.d/*.list
               sed -nE 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources; } 2>/dev/null |
             tr ' ' '\n' | grep -E '/debian/?$' | head -1)
    [[ -n $mirror ]] || fail "no Debian mirror in /etc/apt/sources.list{,.d}"
    cert=$(python3 -m pip config get global.cert 2>/dev/null || true)
    cert=${PIP_CERT:-${cert:-/etc/ssl/certs/ca-certificates.crt}}
    [[ -f $cert ]] || fail "no CA bundle at $cert (pip's cert)"
    say "making $BASE: debootstrap bookworm from $mirror"
    started=$(now)
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$WORK/rootfs" "$mirror" >"$LOGS/debootstrap.log" 2>&1 || fail "debootstrap: $(tail -3 "$LOGS/debootstrap.log")"
    cp "$cert" "$WORK/rootfs/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
    tar --numeric-owner -C "$WORK/rootfs" -c . | docker import - "$BASE-raw" >/dev/null
    rm -rf "$WORK/rootfs"
    docker build -q --network host -t "$BASE" - >"$LOGS/base.log" 2>&1 <<EOF || fail "the base: $(tail -3 "$LOGS/base.log")"
FROM $BASE-raw
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
EOF
    echo "base made in $(since "$started") s: $(docker run --rm --network host "$BASE" python --version)"
    made_base=1
fi

# --- 3. the build ------------------------------------------------------------------------------
if [[ -z ${TORCH_INDEX:-} ]]; then
    links=$(python3 -m pip config get global.find-links 2>/dev/null || true)
    wheel=$(ls ${PIP_FIND_LINKS:-$links}/torch-"$TORCH_VERSION"+cpu-cp311-*.whl 2>/dev/null | head -1 || true)
    [[ -n $wheel ]] || fail "no torch-$TORCH_VERSION+cpu cp311 wheel in pip's find-links (${PIP_FIND_LINKS:-$links}): give TORCH_INDEX"
    mkdir -p "$WORK/index/torch" && ln -s "$wheel" "$WORK/index/torch/"
    python3 -m http.server --bind 127.0.0.1 --directory "$WORK/index" "$PORT" >"$LOGS/index.log" 2>&1 &
    SERVER_PID=$!
    TORCH_INDEX=http://127.0.0.1:$PORT/
    for _ in $(seq 50); do curl -sf -o /dev/null "$TORCH_INDEX/torch/" && break; sleep 0.2; done
    kill -0 "$SERVER_PID" 2>/dev/null && curl -sf -o /dev/null "$TORCH_INDEX/torch/" ||
        fail "could not serve $wheel on port $PORT (in use? set PORT): $(tail -2 "$LOGS/index.log")"
    echo "torch: $(basename "$wheel") on $TORCH_INDEX"
fi

# `docker build` of the CPU variant; prints which steps came from the cache.
build() {  # build LOG TAG CONTEXT
    docker build --network host --build-arg VARIANT=cpu --build-arg PYTHON_BASE="$BASE" \
        --build-arg TORCH_INDEX="$TORCH_INDEX" -f "$3/Dockerfile" -t "$2" "$3" >"$LOGS/$1" 2>&1 ||
        fail "docker build ($1): $(grep -v '^ *$' "$LOGS/$1" | tail -15)"
}
steps() {  # steps LOG: "cached|built|stage|arg  Step n/N : INSTRUCTION", every step of every stage
    awk 'function out() { if (s) print (s ~ / : FROM / ? "stage " : !from ? "arg   " : c ? "cached" : "built ") "  " s }
         /^Step [0-9]+\/[0-9]+ : /{out(); from = from || s ~ / : FROM /; s=substr($0, 1, 110); c=0}
         / ---> Using cache/{c=1} END{out()}' "$LOGS/$1"
}

say "building $TAG (legacy builder, base $BASE)"
started=$(now)
build build.log "$TAG" "$ROOT"
first_build=$(since "$started")
steps build.log | sed 's/^/  /'
echo "built in $first_build s"
cached_first=$(steps build.log | grep -c '^cached' || true)

say "building again with only the code changed (a copy of the context, one line added to the code)"
mkdir -p "$WORK/context/scripts"
cp -r Dockerfile .dockerignore pyproject.toml README.md torch-version.txt service "$WORK/context/"
cp scripts/requirements.py "$WORK/context/scripts/"
echo "# image_check.sh: a code change ($RUN_ID)" >>"$WORK/context/service/evoarena/__init__.py"
started=$(now)
build code-change.log "$TAG-code-change" "$WORK/context"
code_build=$(since "$started")
steps code-change.log | sed 's/^/  /'
echo "built in $code_build s"
steps code-change.log | grep '^cached' | grep -qF 'RUN if [ "$VARIANT" = cpu ]' || fail "a code change reinstalled torch"
steps code-change.log | grep '^cached' | grep -qF 'RUN python /tmp/deps/requirements.py' ||
    fail "a code change reinstalled the dependencies"
docker run --rm --entrypoint grep "$TAG-code-change" -rq "$RUN_ID" /opt/venv/lib/python3.11/site-packages/evoarena/__init__.py ||
    fail "the code-change image does not hold the changed code"
docker rmi "$TAG-code-change" >/dev/null

say "inside $TAG"
inside=$(docker run --rm --network host --entrypoint python "$TAG" -c \
    "import os, torch; print(torch.__version__, torch.version.cuda, os.getuid())")
echo "torch, CUDA, uid: $inside"
read -r torch cuda uid <<<"$inside"
[[ ${torch%%+*} == "$TORCH_VERSION" ]] || fail "the image holds torch $torch, torch-version.txt says $TORCH_VERSION"
[[ $cuda == None ]] || fail "the CPU image's torch is built for CUDA $cuda"
[[ $uid != 0 ]] || fail "the image runs as root"
size=$(docker image inspect -f '{{.Size}}' "$TAG")

# --- 4. the run --------------------------------------------------------------------------------
shared=$WORK/shared
mkdir -p "$shared/artifacts" && chown -R "$uid" "$shared"
# torch threads as the local run's two worker processes take them (fleet/executor.py: the cores
# shared out): with torch's default each process takes every core, and on a busy machine their
# threads wait on each other, a train_pair chunk ~40x slower
threads=$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))
env=(-e "EVOARENA_BROKER_URL=$BROKER" -e "EVOARENA_QUEUE=$RUN_ID" -e "EVOARENA_STORE=sqlite:////shared/evoarena.db"
     -e "EVOARENA_ARTIFACTS=/shared/artifacts" -e "EVOARENA_LOG_LEVEL=INFO" -e "EVOARENA_THREADS=$threads"
     -e "EVOARENA_TASK_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(24))')")
WORKERS=("$RUN_ID-w1" "$RUN_ID-w2")
delete_queues() {  # the shared, dead-letter and direct queues are durable; the exchanges too
    docker run -i --rm --network host "${env[@]}" --entrypoint python "$TAG" - "$RUN_ID" "${WORKERS[@]/%/@image-check}" <<'EOF'
import sys
from evoarena.fleet.app import dead_letter_queue, direct_queue, make_app
queue, nodes = sys.argv[1], sys.argv[2:]
with make_app().connection_for_write() as conn:
    for name in [queue, dead_letter_queue(queue).name, *(direct_queue(n, queue).name for n in nodes)]:
        conn.channel().queue_delete(name)
    for name in [queue, f"{queue}.ev", f"{queue}.pidbox", f"reply.{queue}.pidbox"]:
        conn.channel().exchange_delete(name)
EOF
}

say "master: $TAG run /experiments/${EXP##*/} --fleet (queue $RUN_ID)"
CONTAINERS+=("$RUN_ID-master")
fleet_started=$(now)
docker run -d --name "$RUN_ID-master" --network host "${env[@]}" -v "$shared:/shared" \
    -v "$ROOT/$(dirname "$EXP"):/experiments:ro" "$TAG" run "/experiments/${EXP##*/}" --fleet >/dev/null
# the workers start once the master has sent its first tasks: their start is then what a new pod's is
for _ in $(seq 120); do
    docker logs "$RUN_ID-master" 2>/dev/null | grep -q "on the fleet at" && break
    [[ $(docker inspect -f '{{.State.Running}}' "$RUN_ID-master") == true ]] ||
        fail "the master stopped: $(docker logs "$RUN_ID-master" 2>&1 | tail -5)"
    sleep 1
done
sleep 3
for w in "${WORKERS[@]}"; do
    CONTAINERS+=("$w")
    docker run -d --name "$w" --network host "${env[@]}" -v "$shared:/shared" "$TAG" \
        worker --name "$w@image-check" --concurrency 1 >/dev/null
done
say "workers ${WORKERS[*]} started; waiting for the master"
for w in "${WORKERS[@]}"; do
    echo "$w runs as: $(docker exec "$w" id -un) (uid $(docker exec "$w" id -u))"
done
status=$(timeout "$RUN_TIMEOUT" docker wait "$RUN_ID-master") || fail "the fleet run did not end within $RUN_TIMEOUT s"
fleet_wall=$(since "$fleet_started")
docker logs "$RUN_ID-master" >"$LOGS/master.out" 2>"$LOGS/master.err"
((status == 0)) || fail "the master exited $status: $(tail -5 "$LOGS/master.err")"
fleet_line=$(tail -1 "$LOGS/master.out")
for w in "${WORKERS[@]}"; do docker logs -t "$w" >"$LOGS/$w.log" 2>&1; done

# what each worker ran, and how long from its container's start to its first task
report=$(python3 - "$LOGS" "${WORKERS[@]}" <<'EOF'
import json, re, subprocess, sys
from collections import Counter
from datetime import datetime, timezone
logs, workers = sys.argv[1], sys.argv[2:]
def when(stamp):  # docker's RFC 3339 UTC time, nanoseconds and trailing zeros trimmed
    whole, fraction = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z", stamp).groups()
    return datetime.fromisoformat(whole).replace(tzinfo=timezone.utc).timestamp() + float(f"0.{fraction or 0}")
ops, problems = Counter(), []
for w in workers:
    started = when(subprocess.run(["docker", "inspect", "-f", "{{.State.StartedAt}}", w],
                                  capture_output=True, text=True, check=True).stdout.strip())
    ran, first, ready = Counter(), None, None
    for line in open(f"{logs}/{w}.log"):
        stamp, _, text = line.partition(" ")
        try:
            event = json.loads(text)
        except ValueError:
            continue
        if event.get("event") == "worker ready" and ready is None:
            ready = when(stamp)
        if event.get("event") == "task started":
            ran[event["op"]] += 1
            first = first or when(stamp)
    if not ran:
        problems.append(f"{w} ran no task")
        continue
    ops.update(ran)
    print(f"{w}: {dict(ran)}; container start to ready {ready - started:.1f} s, to first task {first - started:.1f} s")
missing = {"train_pair", "match", "cross_train"} - set(ops)
if missing:
    problems.append(f"no {', '.join(sorted(missing))} task ran in a worker container")
print("\n".join(f"PROBLEM {p}" for p in problems))
EOF
)
echo "$report"
grep -q '^PROBLEM' <<<"$report" && fail "$(grep '^PROBLEM' <<<"$report" | head -1)"
owners=$(find "$shared" -mindepth 1 -not -user "$uid" | head -3)
[[ -z $owners ]] || fail "files in the shared directory not written by uid $uid: $owners"

# the same code as the fleet's (a checkout's .venv runs whatever the tree holds now), on the
# executor the file names (local: two worker processes in one container)
say "the same experiment locally: $TAG run /experiments/${EXP##*/}, without --fleet"
mkdir -p "$WORK/local" && chown "$uid" "$WORK/local"
started=$(now)
docker run --rm --network host -v "$WORK/local:/shared" -v "$ROOT/$(dirname "$EXP"):/experiments:ro" \
    -e EVOARENA_STORE=sqlite:////shared/evoarena.db -e EVOARENA_ARTIFACTS=/shared/artifacts \
    "$TAG" run "/experiments/${EXP##*/}" >"$LOGS/local.out" 2>"$LOGS/local.err" ||
    fail "the local run: $(tail -5 "$LOGS/local.err")"
local_wall=$(since "$started")
local_line=$(tail -1 "$LOGS/local.out")

echo
echo "fleet run (2 worker containers): $fleet_line"
echo "local run (one container):        $local_line"
[[ $fleet_line == "$local_line" ]] || fail "the fleet run's last line is not the local run's"
echo
echo "image $TAG: $(python3 -c "print(f'{$size / 1e9:.2f} GB')") ($size bytes)"
if ((made_base)) && ((cached_first == 0)); then kind="cold, base made in this run"; else kind="$cached_first steps from the cache"; fi
echo "build: $first_build s ($kind); code change only: $code_build s (torch and the dependencies from the cache)"
echo "fleet run: $fleet_wall s from the master's start; local run: $local_wall s"
echo "IMAGE CHECK PASSED"
