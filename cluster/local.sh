#!/usr/bin/env bash
# A multi-node Ray cluster on one machine: one head plus N worker raylets, token authentication on, the dashboard
# and the job server on 127.0.0.1. For development and for the tests (tests/ray_cluster.py drives this script).
#
#   cluster/local.sh start [--workers N] [--head-cpus C] [--worker-cpus C] [--port P] [--dashboard-port D]
#                          [--client-server-port P] [--temp-dir DIR] [--timeout S]
#   cluster/local.sh status [--temp-dir DIR]
#   cluster/local.sh stop   [--temp-dir DIR] [--grace S]
#   cluster/local.sh kill-worker --index I [--temp-dir DIR]   (node loss: SIGKILL worker node I, 1-based)
#
# Every node is started in its own process session; `stop` signals exactly those process groups (SIGTERM, then
# SIGKILL after --grace seconds), so a Ray started by someone else on this machine (`ray.init()`, another
# `ray start`) is left alone. Plain `ray stop` would stop every Ray process of this user on the machine.
# The cluster's state (ports, process groups, token location) lives in <temp dir>/stpa-cluster.env.
#
# Token: RAY_AUTH_TOKEN when set; otherwise the file RAY_AUTH_TOKEN_PATH (default ~/.ray/auth_token), generated when
# missing. Every node runs with RAY_AUTH_MODE=token; a client needs RAY_AUTH_MODE=token and the same token.
set -eEuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${STPA_RAY:-}" ]]; then
    RAY="$STPA_RAY"
elif [[ -x "$ROOT/.venv/bin/ray" ]]; then
    RAY="$ROOT/.venv/bin/ray"
else
    RAY="$(command -v ray || true)"
fi
[[ -n "$RAY" && -x "$RAY" ]] || { echo "local.sh: no ray executable (make install, or set STPA_RAY)" >&2; exit 2; }
PY="$(dirname "$RAY")/python"
[[ -x "$PY" ]] || PY="$(command -v python3)"

COMMAND="${1:-}"
[[ -n "$COMMAND" ]] && shift
NUM_WORKERS=1
HEAD_CPUS=1
WORKER_CPUS=1
PORT=6379
DASHBOARD_PORT=8265
CLIENT_SERVER_PORT=10001
# Ray puts unix sockets under the temp dir: keep the path short (sockets are limited to 107 characters).
TEMP_DIR="${TMPDIR:-/tmp}/stpa-ray-$(id -un)"
TIMEOUT=120
GRACE=10
WORKER_INDEX=""

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
need_value() { [[ $# -ge 2 && -n "$2" ]] || { echo "local.sh: $1 needs a value" >&2; exit 2; }; }
need_int() { [[ "$2" =~ ^[0-9]+$ ]] || { echo "local.sh: $1 must be a non-negative integer, got '$2'" >&2; exit 2; }; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --workers) need_value "$@"; need_int "$1" "$2"; NUM_WORKERS="$2"; shift 2 ;;
        --head-cpus) need_value "$@"; need_int "$1" "$2"; HEAD_CPUS="$2"; shift 2 ;;
        --worker-cpus) need_value "$@"; need_int "$1" "$2"; WORKER_CPUS="$2"; shift 2 ;;
        --port) need_value "$@"; need_int "$1" "$2"; PORT="$2"; shift 2 ;;
        --dashboard-port) need_value "$@"; need_int "$1" "$2"; DASHBOARD_PORT="$2"; shift 2 ;;
        --client-server-port) need_value "$@"; need_int "$1" "$2"; CLIENT_SERVER_PORT="$2"; shift 2 ;;
        --temp-dir) need_value "$@"; TEMP_DIR="$2"; shift 2 ;;
        --timeout) need_value "$@"; need_int "$1" "$2"; TIMEOUT="$2"; shift 2 ;;
        --index) need_value "$@"; need_int "$1" "$2"; WORKER_INDEX="$2"; shift 2 ;;
        --grace) need_value "$@"; need_int "$1" "$2"; GRACE="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "local.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
[[ "$COMMAND" == start ]] && mkdir -p "$TEMP_DIR"
[[ -d "$TEMP_DIR" ]] && TEMP_DIR="$(cd "$TEMP_DIR" && pwd)"
STATE="$TEMP_DIR/stpa-cluster.env"

# --- token -----------------------------------------------------------------------------------------------------
setup_token() {
    export RAY_AUTH_MODE=token
    if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
        TOKEN_SOURCE="RAY_AUTH_TOKEN (environment variable)"
        TOKEN_FILE=""
        return
    fi
    TOKEN_FILE="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
    if [[ ! -s "$TOKEN_FILE" ]]; then
        if [[ -z "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
            "$RAY" get-auth-token --generate >/dev/null   # writes ~/.ray/auth_token
        else
            # `ray get-auth-token --generate` only writes ~/.ray/auth_token: same generator, our path.
            (umask 077 && mkdir -p "$(dirname "$TOKEN_FILE")" \
                && "$PY" -c 'import secrets, sys; open(sys.argv[1], "w").write(secrets.token_hex(32))' "$TOKEN_FILE")
        fi
        echo "local.sh: generated a new token in $TOKEN_FILE"
    fi
    export RAY_AUTH_TOKEN_PATH="$TOKEN_FILE"
    TOKEN_SOURCE="$TOKEN_FILE"
}

# --- process groups --------------------------------------------------------------------------------------------
# Run `ray start` as the leader of a new session: every daemon it leaves behind (GCS, raylet, dashboard, agents)
# stays in that process group, whose id is written to $1. Ray's worker processes get their own groups from the
# raylet and exit when their raylet goes.
start_in_new_session() {
    local pgid_file="$1"
    shift
    "$PY" - "$pgid_file" "$@" <<'EOF'
import subprocess, sys

proc = subprocess.Popen(sys.argv[2:], start_new_session=True)
with open(sys.argv[1], "w") as f:
    f.write(f"{proc.pid}\n")
sys.exit(proc.wait())
EOF
}

# The process group still belongs to this cluster: one of its processes names our temp dir on its command line.
group_is_ours() {
    local pgid="$1"
    ps -eo pgid=,args= | awk -v g="$pgid" -v d="$TEMP_DIR" '$1 == g && index($0, d) { found = 1 } END { exit !found }'
}

# Processes that inherited this cluster's marker STPA_LOCAL_CLUSTER=<temp dir> (and, with $1, STPA_LOCAL_NODE=$1):
# Ray workers and job drivers run in process groups of their own and can outlive their raylet by a few seconds.
# Linux only (/proc); elsewhere they exit on their own when their raylet is gone.
marked_pids() {
    [[ -d /proc/self ]] || return 0
    "$PY" - "$TEMP_DIR" "${1:-}" <<'EOF'
import os, sys

wanted = {f"STPA_LOCAL_CLUSTER={sys.argv[1]}".encode()}
if sys.argv[2]:
    wanted.add(f"STPA_LOCAL_NODE={sys.argv[2]}".encode())
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = set(f.read().split(b"\0"))
    except OSError:
        continue
    if wanted <= environ and int(pid) != os.getpid():
        print(pid)
EOF
}

stop_marked() {  # SIGTERM the marked processes, SIGKILL those left after 5 s
    local pids waited=0
    pids="$(marked_pids)"
    [[ -z "$pids" ]] && return 0
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    while [[ -n "$(marked_pids)" && $waited -lt 50 ]]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    pids="$(marked_pids)"
    # shellcheck disable=SC2086
    [[ -n "$pids" ]] && { kill -KILL $pids 2>/dev/null || true; }
    return 0
}

group_alive() { ps -eo pgid= | awk -v g="$1" '$1 == g { found = 1 } END { exit !found }'; }

stop_groups() {  # stop_groups PGID... : SIGTERM, wait up to $GRACE s, SIGKILL
    local pgid ours=()
    for pgid in "$@"; do
        if group_is_ours "$pgid"; then ours+=("$pgid"); fi
    done
    [[ ${#ours[@]} -eq 0 ]] && return 0
    for pgid in "${ours[@]}"; do kill -TERM -- "-$pgid" 2>/dev/null || true; done
    local waited=0 alive
    while :; do
        alive=()
        for pgid in "${ours[@]}"; do group_alive "$pgid" && alive+=("$pgid"); done
        [[ ${#alive[@]} -eq 0 ]] && return 0
        [[ $waited -ge $((GRACE * 10)) ]] && break
        sleep 0.1
        waited=$((waited + 1))
    done
    for pgid in "${alive[@]}"; do kill -KILL -- "-$pgid" 2>/dev/null || true; done
    sleep 0.5
}

# --- readiness -------------------------------------------------------------------------------------------------
wait_for_nodes() {  # wait until the dashboard's state API lists $1 alive nodes
    "$PY" - "http://127.0.0.1:$DASHBOARD_PORT" "$1" "$TIMEOUT" <<'EOF'
import json, os, sys, time, urllib.error, urllib.request

url, expected, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
token = os.environ.get("RAY_AUTH_TOKEN") or open(os.environ["RAY_AUTH_TOKEN_PATH"]).read().strip()
request = urllib.request.Request(
    f"{url}/api/v0/nodes?limit=1000&detail=false", headers={"x-ray-authorization": f"Bearer {token}"}
)
deadline = time.monotonic() + timeout
alive, last_error = 0, ""
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            nodes = json.load(response)["data"]["result"]["result"]
        alive = sum(node["state"] == "ALIVE" for node in nodes)
        if alive >= expected:
            sys.exit(0)
    except (urllib.error.URLError, OSError, KeyError, ValueError) as error:
        last_error = repr(error)
    time.sleep(0.5)
sys.exit(f"local.sh: {alive} of {expected} nodes alive after {timeout:.0f} s at {url} {last_error}")
EOF
}

# --- commands --------------------------------------------------------------------------------------------------
cmd_start() {
    if [[ -f "$STATE" ]]; then
        # shellcheck disable=SC1090
        source "$STATE"
        if group_alive "${HEAD_PGID:-0}" && group_is_ours "$HEAD_PGID"; then
            echo "local.sh: a cluster is already running from $TEMP_DIR (cluster/local.sh stop --temp-dir $TEMP_DIR)" >&2
            exit 1
        fi
    fi
    setup_token
    # Job entrypoints (`ray job submit -- python ...`) and workers find this environment's python first.
    export PATH="$(dirname "$RAY"):$PATH"
    # Marks every process of this cluster (inherited by Ray workers and job drivers), so `stop` finds them all.
    export STPA_LOCAL_CLUSTER="$TEMP_DIR"
    # The raylet warns (to every job's driver) when more than 4x its worker start-up concurrency, min(cores, CPUs),
    # of worker processes exist. A workflow holds about a dozen (step tasks, Train controller and workers, Ray Data's
    # coordinator and decode tasks), so on a 2-core machine the warning comes with nothing wrong; allow 3x the CPUs
    # (as pipeline/runtime.py does for a local Ray, and SkyPilot for its clusters).
    local most_cpus=$(( HEAD_CPUS > WORKER_CPUS ? HEAD_CPUS : WORKER_CPUS ))
    export RAY_worker_maximum_startup_concurrency="${RAY_worker_maximum_startup_concurrency:-$(( 3 * (most_cpus > 2 ? most_cpus : 2) ))}"
    local common=(--disable-usage-stats --node-ip-address=127.0.0.1 --dashboard-agent-listen-port=0)
    local pgids=() pgid_file="$TEMP_DIR/.pgid"
    cleanup_on_error() {
        trap - ERR
        echo "local.sh: start failed; stopping what was started (logs: $TEMP_DIR/session_latest/logs)" >&2
        tail -n 20 "$TEMP_DIR"/start-*.log >&2 || true
        stop_groups "${pgids[@]}"
        stop_marked
        rm -f "$STATE"
    }
    trap cleanup_on_error ERR

    STPA_LOCAL_NODE=head start_in_new_session "$pgid_file" "$RAY" start --head "${common[@]}" \
        --port="$PORT" --num-cpus="$HEAD_CPUS" --num-gpus=0 --temp-dir="$TEMP_DIR" \
        --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
        --ray-client-server-port="$CLIENT_SERVER_PORT" --node-name=stpa-head >"$TEMP_DIR/start-head.log" 2>&1
    pgids+=("$(cat "$pgid_file")")
    local i
    for ((i = 1; i <= NUM_WORKERS; i++)); do
        # A worker node takes the head's temp dir (one session folder, raylet.N sockets): Ray refuses
        # nothing here, and `stop` needs only the one folder.
        STPA_LOCAL_NODE="worker-$i" start_in_new_session "$pgid_file" "$RAY" start --address="127.0.0.1:$PORT" "${common[@]}" \
            --num-cpus="$WORKER_CPUS" --num-gpus=0 --node-name="stpa-worker-$i" \
            >"$TEMP_DIR/start-worker-$i.log" 2>&1
        pgids+=("$(cat "$pgid_file")")
    done
    rm -f "$pgid_file"
    {
        echo "PORT=$PORT"
        echo "DASHBOARD_PORT=$DASHBOARD_PORT"
        echo "CLIENT_SERVER_PORT=$CLIENT_SERVER_PORT"
        echo "NUM_WORKERS=$NUM_WORKERS"
        echo "HEAD_PGID=${pgids[0]}"
        echo "WORKER_PGIDS=\"${pgids[*]:1}\""
        echo "TOKEN_FILE=\"$TOKEN_FILE\""
    } >"$STATE"
    wait_for_nodes $((NUM_WORKERS + 1))
    trap - ERR

    local token_env="RAY_AUTH_TOKEN_PATH=$TOKEN_FILE"
    [[ -z "$TOKEN_FILE" ]] && token_env="RAY_AUTH_TOKEN=<your token>"
    cat <<EOF
Ray cluster up: head + $NUM_WORKERS worker node(s) on this machine (temp dir $TEMP_DIR)
  GCS address   127.0.0.1:$PORT
  dashboard     http://127.0.0.1:$DASHBOARD_PORT   (job server too; bound to 127.0.0.1)
  token         $TOKEN_SOURCE
Submit a job from the repository root:
  export RAY_AUTH_MODE=token $token_env
  RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT ray job submit --working-dir . -- python workflows/train_charades.py
Stop it:  cluster/local.sh stop --temp-dir $TEMP_DIR
EOF
}

cmd_status() {
    [[ -f "$STATE" ]] || { echo "local.sh: no cluster state in $TEMP_DIR" >&2; exit 1; }
    # shellcheck disable=SC1090
    source "$STATE"
    local pgid state
    for pgid in $HEAD_PGID $WORKER_PGIDS; do
        state="stopped"
        group_alive "$pgid" && group_is_ours "$pgid" && state="running"
        echo "process group $pgid: $state"
    done
    export RAY_AUTH_MODE=token
    [[ -n "$TOKEN_FILE" ]] && export RAY_AUTH_TOKEN_PATH="$TOKEN_FILE"
    "$RAY" status --address="127.0.0.1:$PORT"
}

cmd_kill_worker() {  # node loss: SIGKILL worker node $1 (its raylet, agents and Ray workers), no clean shutdown
    local index="$1"
    [[ -f "$STATE" ]] || { echo "local.sh: no cluster state in $TEMP_DIR" >&2; exit 1; }
    # shellcheck disable=SC1090
    source "$STATE"
    local groups
    read -r -a groups <<<"$WORKER_PGIDS"
    [[ "$index" -ge 1 && "$index" -le ${#groups[@]} ]] \
        || { echo "local.sh: worker $index does not exist (1..${#groups[@]})" >&2; exit 2; }
    local pgid="${groups[$((index - 1))]}" pids
    group_is_ours "$pgid" || { echo "local.sh: worker $index is not running" >&2; exit 1; }
    pids="$(marked_pids "worker-$index")"
    kill -KILL -- "-$pgid" 2>/dev/null || true
    # shellcheck disable=SC2086
    [[ -n "$pids" ]] && { kill -KILL $pids 2>/dev/null || true; }
    echo "local.sh: killed worker node $index (process group $pgid)"
}

cmd_stop() {
    [[ -d "$TEMP_DIR" ]] || { echo "local.sh: no cluster in $TEMP_DIR: nothing to stop"; return 0; }
    if [[ ! -f "$STATE" ]]; then  # an interrupted start: only the marked processes can be found
        stop_marked
        echo "local.sh: no cluster state in $TEMP_DIR; stopped any process marked as this cluster's"
        return 0
    fi
    # shellcheck disable=SC1090
    source "$STATE"
    # Workers first, then the head (GCS), as `ray stop` does.
    # shellcheck disable=SC2086
    [[ -n "$WORKER_PGIDS" ]] && stop_groups $WORKER_PGIDS
    stop_groups "$HEAD_PGID"
    stop_marked
    rm -f "$STATE"
    echo "local.sh: stopped the cluster in $TEMP_DIR"
}

case "$COMMAND" in
    start) cmd_start ;;
    status) cmd_status ;;
    stop) cmd_stop ;;
    kill-worker) cmd_kill_worker "${WORKER_INDEX:?local.sh kill-worker needs --index I}" ;;
    -h|--help|help) usage ;;
    *) echo "local.sh: unknown command '$COMMAND'" >&2; usage >&2; exit 2 ;;
esac
