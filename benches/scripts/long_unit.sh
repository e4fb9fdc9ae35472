#!/usr/bin/env bash
# One long unit and 8 tasks, on the embedded backends: how many tasks exit 0,
# the execution's outcome (Cloud Run fails an execution when any task
# fails, and retries each failed task), and the task-seconds spent.
#
# 16 tables of 1,000 rows, one of them slowed to 60 s (`bqdrain fault --kind
# slow`); a subscription whose patience (max backoff + ack deadline) is 20 s,
# the module's 660 s scaled down; 8 workers with `--heartbeat 5` where the
# binary has it. Give it two builds to compare them:
#
#   benches/scripts/long_unit.sh target/release/bqdrain target/release/bqdrain-producer /tmp/long-unit
set -u
bin=$1
producer=$2
dir=$3
rm -rf "$dir"
mkdir -p "$dir"
"$bin" demo --dir "$dir/demo" --tables 16 --rows 1000 --tasks 2 --json >/dev/null 2>&1 ||
  { echo "demo failed" >&2; exit 1; }
src="sqlite://$dir/demo/warehouse.db"
"$bin" fault --source "$src" --table dummy_01 --kind slow --delay-ms 60000 >/dev/null ||
  exit 1
sub="queue://$dir/q.db?ack_deadline=10&min_backoff=1&max_backoff=10&dead_letter=dead#work"
"$producer" --source "$src" --topic "queue://$dir/q.db#work" --destination "file://$dir/out" \
  --run-id r1 >/dev/null 2>&1 || { echo "producer failed" >&2; exit 1; }
heartbeat=()
"$bin" work --help | grep -q -- --heartbeat && heartbeat=(--heartbeat 5)
pids=()
for i in 0 1 2 3 4 5 6 7; do
  CLOUD_RUN_TASK_INDEX=$i "$bin" --log-format json work --json --subscription "$sub" \
    --run-id r1 --destination "file://$dir/out" "${heartbeat[@]}" \
    >"$dir/task-$i.json" 2>"$dir/task-$i.log" &
  pids+=($!)
  [ "$i" = 0 ] && sleep 1 # task 0 takes the long unit
done
codes=()
for pid in "${pids[@]}"; do
  wait "$pid"
  codes+=($?)
done
python3 - "$dir" "${codes[@]}" <<'PY'
import json, sys
folder, codes = sys.argv[1], [int(c) for c in sys.argv[2:]]
seconds = 0.0
for i, code in enumerate(codes):
    report = json.load(open(f"{folder}/task-{i}.json"))
    seconds += report["seconds"]
    print(f"task {i}: exit {code}, {report['exit']}, acked {report['acked']}, {report['seconds']:.1f} s")
failed = sum(1 for c in codes if c != 0)
print(f"tasks exiting 0: {len(codes) - failed}/{len(codes)}; execution "
      f"{'failed' if failed else 'succeeded'}; task-seconds {seconds:.1f} "
      f"(idle {seconds - 60:.1f}: all but the long unit's 60 s)")
PY
