#!/usr/bin/env bash
# Resume the two long sweeps of issue 13 (specs paper and omnisafe) on this machine, in the
# background, from the state committed here; see README.md. Run from anywhere:
#
#     bash benchmarks/state/resume.sh            # SWEEP_WORKTREE=/work/sweep by default
#
# The runs go on in a worktree at the commit that ran them (the last line of code.txt). The
# OmniSafe comparison runs one run at a time beside the paper comparison; when it has finished
# (every run, exit status 0), the paper sweep is stopped at its last checkpoint and started again
# with two runs at a time, so that no core idles. A sweep's lock keeps two runners off one folder.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${SWEEP_WORKTREE:-/work/sweep}
methods=meta-cpo,meta-trpo,multitask-cpo,cpo-scratch  # the main rows of the paper comparison
code=$(tail -n 1 "$repo/benchmarks/state/paper/code.txt")
if [ "$(tail -n 1 "$repo/benchmarks/state/omnisafe/code.txt")" != "$code" ]; then
    echo "the two sweeps ran different commits; resume them one by one (README.md)" >&2
    exit 1
fi
cd "$repo"
make setup
[ -d "$work" ] || git worktree add --detach "$work" "$code"
ln -sfn "$repo/.venv" "$work/.venv"
for spec in paper omnisafe; do
    .venv/bin/python -m benchmarks.sweep "$spec" --runs-dir "$work/runs/sweeps" --restore-state benchmarks/state
done
cd "$work"
setsid nohup .venv/bin/python -m benchmarks.sweep paper --jobs 1 --methods "$methods" \
    >> sweep_paper.log 2>&1 < /dev/null &
# this shell's own command line must not match the pattern of pkill and pgrep: hence "$m" and [.]
setsid nohup bash -c '
    m=benchmarks.sweep
    .venv/bin/python -m "$m" omnisafe --jobs 1 >> sweep_omni.log 2>&1 || exit 0
    pkill -TERM -f "benchmarks[.]sweep paper" || true
    while pgrep -f "benchmarks[.]sweep paper" > /dev/null; do sleep 5; done
    exec .venv/bin/python -m "$m" paper --jobs 2 --methods '"$methods"' >> sweep_paper.log 2>&1
' < /dev/null > /dev/null 2>&1 &
echo "sweeps running in $work (logs: sweep_paper.log, sweep_omni.log)"
