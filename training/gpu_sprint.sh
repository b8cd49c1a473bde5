#!/usr/bin/env bash
# A GPU sprint in one command (issue 16, item 8): when a session is lent a GPU, train the three
# default models (MR, X-ray, CT) at wider widths than 2 CPU cores allow, and bring back weights,
# run folders and logs, to be exported here through the same path as every model.
#
# Here, once (writes the case caches into .sprint/, ignored by git; about 2 min):
#   bash training/gpu_sprint.sh prepare
# On the lent machine (the `device` tool's run; $OUT comes back), two calls so that each
# carries less than the 64 MiB the transfer allows (the MR cache alone is 27 MB):
#   run(command="bash training/gpu_sprint.sh mr", carry=[".sprint/mr.npz"], timeout_s=480)
#   run(command="bash training/gpu_sprint.sh xray-ct", carry=[".sprint/xr.npz", ".sprint/ct.npz"], timeout_s=480)
# Back here, for each returned run folder R (under the tool's files_at):
#   .venv/bin/python -m training export verdiff-mr --run R --start-timestep 150 --steps 1 --ensemble 2 --suites all
#
# Defaults fit 12 minutes of one H200 (about 5 min MR, 3.5 min X-ray, 2 min CT of training, the
# rest start-up); every setting can be overridden by the environment, which is also how the CPU
# test runs it in seconds: STEPS, TIME_MR, TIME_XR, TIME_CT, CHANNELS, BATCH, CROP, WORKERS,
# DEVICE, SPRINT_DIR, OUT, PYTHON, XR_SPACING, LIMIT (prepare: cache only the first N training subjects).
# Decisions: channels 32..256 (4x the bundled CPU models' widths, as wide as the U-Nets of the
# papers at this depth), the any-contrast augmentation, batch 32 of 192-pixel crops, lr 1e-3 with
# cosine decay over STEPS and a time limit that finishes early with the weights reached; no
# validation there (the images stay here): export validates. The X-ray model is trained with the
# gap channel (label scheme binary-gaps, issue 15) on the 4 px grid, as the bundled one; the CT
# model on both development CTs with S1 (training/verdiff-ct-all.toml at the sprint's width, the
# bundled CT model's light augmentation; session 14), whose export validates on them as trained on.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SPRINT_DIR=${SPRINT_DIR:-.sprint}
OUT=${OUT:-runs/gpu-sprint}
STEPS=${STEPS:-8000}
CHANNELS=${CHANNELS:-32,64,128,256}
BATCH=${BATCH:-32}
CROP=${CROP:-192}
WORKERS=${WORKERS:-14}
DEVICE=${DEVICE:-cuda}
XR_SPACING=${XR_SPACING:-4}  # the bundled X-ray model's grid since session 6 (xr.npz: 35 MB for the 433 training images)

use_checkout() {
    # the lent machine's python has torch, numpy and scipy; a run from a cache needs no SimpleITK
    export PYTHONPATH=$PWD/VerdiffSegment:$PWD:${PYTHONPATH:-}
}

train() {  # NAME CACHE SECONDS WHAT... (a recipe with its options, or --config FILE)
    local name=$1 cache=$2 seconds=$3
    shift 3
    mkdir -p "$OUT"
    "$PYTHON" -m training train "$@" --out "$OUT/$name" --cache "$cache" \
        --steps "$STEPS" --batch-size "$BATCH" --crop "$CROP" \
        --workers "$WORKERS" --device "$DEVICE" --time-limit "$seconds" --checkpoint-every 500 --log-every 100 --no-tensorboard \
        2>&1 | tee "$OUT/$name.log"
    rm -f "$OUT/$name/checkpoint.pt"  # the final weights are model.pt; the checkpoint would only fill the transfer
}

recipe() {  # RECIPE [more options]: a bundled recipe at the sprint's width, any-contrast augmentation
    local model=$1
    shift
    echo "$model" --name "$model" --channels "$CHANNELS" --family verdiff-net --augmentation any-contrast "$@"
}

ct_config() {  # the shipped CT model's data (both CTs, S1 included) at the sprint's width
    sed -e "s/^channels = .*/channels = [${CHANNELS}]/" training/verdiff-ct-all.toml > "$SPRINT_DIR/ct-all.toml"
    echo "$SPRINT_DIR/ct-all.toml"
}

case "${1:-}" in
    prepare)
        mkdir -p "$SPRINT_DIR"
        limit=()
        [ -n "${LIMIT:-}" ] && limit=(--limit "$LIMIT")
        "$PYTHON" -m training train verdiff-mr --channels "$CHANNELS" --family verdiff-net --out "$SPRINT_DIR/tmp" --write-cache "$SPRINT_DIR/mr.npz" --cache-slice-step 2 "${limit[@]}"
        "$PYTHON" -m training train verdiff-xray --channels "$CHANNELS" --family verdiff-net --label-scheme binary-gaps --spacing "$XR_SPACING" --out "$SPRINT_DIR/tmp" --write-cache "$SPRINT_DIR/xr.npz" "${limit[@]}"
        "$PYTHON" -m training train --config "$(ct_config)" --out "$SPRINT_DIR/tmp" --write-cache "$SPRINT_DIR/ct.npz" "${limit[@]}"
        rm -rf "$SPRINT_DIR/tmp"
        du -sh "$SPRINT_DIR"/*.npz
        ;;
    mr)
        use_checkout
        # shellcheck disable=SC2046  # recipe prints words meant to be split
        train verdiff-mr "$SPRINT_DIR/mr.npz" "${TIME_MR:-300}" $(recipe verdiff-mr)
        ;;
    xray-ct)
        use_checkout
        # shellcheck disable=SC2046
        train verdiff-xray "$SPRINT_DIR/xr.npz" "${TIME_XR:-210}" $(recipe verdiff-xray --label-scheme binary-gaps --spacing "$XR_SPACING")
        mkdir -p "$SPRINT_DIR"
        train verdiff-ct "$SPRINT_DIR/ct.npz" "${TIME_CT:-120}" --config "$(ct_config)" --augmentation light
        ;;
    *)
        echo "usage: bash training/gpu_sprint.sh prepare|mr|xray-ct" >&2
        exit 2
        ;;
esac
