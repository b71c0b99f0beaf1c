#!/usr/bin/env bash
# Issues 7 and 8 in one GPU-box call: kernel tests on the card, then every bench beside its PyTorch
# reference, each under its own time limit so one slow part cannot eat the others. Results go to $OUT.
#
#   here:  bash bench/gpu-call.sh --pack        (pack.sh of every entry, then .gpu-call/ with the bundles
#                                                xz-compressed: ~33 MB, under the box's 64 MiB carry limit)
#   box:   bash bench/gpu-call.sh .gpu-call [parts]      (carry [".gpu-call"]; parts: comma list)
#   here:  tar xzf <files_at>/results.tgz -C DIR, then (bench/README.md):
#          npx tsx bench/report.ts --name <device>-issues-7-8 DIR/ours.jsonl DIR/ref.jsonl
#          npx tsx bench/cross-entropy.ts --merge DIR/ce-ours.json DIR/ce-ref.json --out bench/results/<date>-cross-entropy.json
#          python3 bench/attention_results.py DIR/attention.jsonl DIR/attention-ref.jsonl bench/results/<date>-attention.json nsg4_bt32_dq16_kv4x32_hf_il_rs_v4_dr2_dsw_db_df
#          npx tsx bench/mixed-curve.ts --plot DIR/mixed-curve.json
#
# parts (run in the order given): steps, curve, ce, attention, tests, profile (default: all but profile).
set -u
if [[ ${1:-} == --pack ]]; then
  # here: bundle the entries into .gpu (pack.sh), then copy what the call needs into .gpu-call, the bundles
  # xz-compressed (carry [".gpu-call"]; `bash bench/gpu-call.sh .gpu-call` on the box)
  entries=(bench/train-step.ts bench/attention.ts bench/cross-entropy.ts bench/mixed-curve.ts bench/profile-step.ts
    tests/flash-attention.test.ts tests/cross-entropy.test.ts tests/mixed-precision.test.ts tests/matmul-f16.test.ts
    tests/lora-linear.test.ts)
  "$(git rev-parse --show-toplevel)/../shared/gpu/pack.sh" "${entries[@]}" >/dev/null || exit 1
  grep -qx '/.gpu-call/' .git/info/exclude 2>/dev/null || echo '/.gpu-call/' >> .git/info/exclude
  rm -rf .gpu-call && mkdir .gpu-call
  cp -r .gpu/node.xz .gpu/dawn.node.xz .gpu/debs .gpu/webgpu-js .gpu/setup.sh .gpu-call/
  for e in "${entries[@]}"; do n=$(basename "${e%.ts}"); xz -T2 -6 -c ".gpu/$n.mjs" > ".gpu-call/$n.mjs.xz"; done
  du -sh .gpu-call
  exit 0
fi
GPU=${1:-.gpu}
PARTS=,${2:-steps,curve,ce,attention,tests},
FINAL=${OUT:-/tmp/out}
# everything is written under $OUT (a work folder) and packed into $FINAL/results.tgz at the end: the
# GPU box hands back only a few files
OUT=/tmp/gpu-call-results
rm -rf "$OUT"; mkdir -p "$OUT" "$FINAL"
# bundles may travel xz-compressed (the box's carry limit is 64 MiB)
for f in "$GPU"/*.mjs.xz; do [[ -f $f ]] && xz -dc "$f" > "${f%.xz}"; done
source "$GPU/setup.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/device.txt" 2>&1
stamp() { echo "[$(date +%T)] $*"; }

part_tests() {
  for t in flash-attention cross-entropy mixed-precision matmul-f16 lora-linear; do
    [[ -f $GPU/$t.test.mjs ]] || continue
    stamp "test $t"
    CI=1 timeout 150 node --test "$GPU/$t.test.mjs" > "$OUT/test-$t.log" 2>&1
    echo "rc=$?" >> "$OUT/test-$t.log"; grep -E '^# (tests|pass|fail)' "$OUT/test-$t.log" | tr '\n' ' '; echo
  done
}
part_ce() {
  stamp "cross-entropy"
  timeout 100 node "$GPU/cross-entropy.mjs" --out "$OUT/ce-ours.json" > "$OUT/ce-ours.log" 2>&1
  timeout 60 python3 bench/cross_entropy_ref.py --out "$OUT/ce-ref.json" > "$OUT/ce-ref.log" 2>&1
}
part_attention() {
  stamp "attention"
  timeout 120 node "$GPU/attention.mjs" --budget-s 90 --out "$OUT/attention.jsonl" > "$OUT/attention.log" 2>&1
  timeout 60 python3 bench/attention_ref.py "$OUT/attention-ref.jsonl" > "$OUT/attention-ref.log" 2>&1
}
CASES_OURS=${CASES_OURS:-qwen3-0.6b:full:2048:fp32,qwen3-0.6b:full:2048:f16,qwen2.5-3b:lora:2048:f16:ckpt,qwen3-4b:full:2048:f16:ckpt}
CASES_REF=${CASES_REF:-qwen3-0.6b:full:2048:fp32,qwen3-0.6b:full:2048:bf16,qwen2.5-3b:lora:2048:bf16:ckpt,qwen3-4b:full:2048:bf16:ckpt}
part_steps() {
  stamp "train steps"
  timeout 260 node "$GPU/train-step.mjs" --no-attention --no-decode --steps 2 --budget-s 240 --cases "$CASES_OURS" --out "$OUT/ours.jsonl" > "$OUT/ours.log" 2>&1
  timeout 130 python3 bench/reference.py --no-attention --steps 2 --budget-s 120 --cases "$CASES_REF" --out "$OUT/ref.jsonl" > "$OUT/ref.log" 2>&1
  # Qwen3-4B full fine-tuning within an 80 GB H100's memory: the memory guard capped at its 79.6 GiB
  # (81,559 MiB); a buffer past it fails with DeviceMemoryError instead of using the H200's rest
  TSFT_GPU_MEMORY=79.6 timeout 90 node "$GPU/train-step.mjs" --no-attention --no-decode --steps 2 --cases qwen3-4b:full:2048:f16:ckpt --out "$OUT/ours-4b-80g.jsonl" > "$OUT/ours-4b-80g.log" 2>&1
}
part_curve() {
  stamp "mixed curve"
  timeout 150 node "$GPU/mixed-curve.mjs" --out "$OUT/mixed-curve.json" > "$OUT/mixed-curve.log" 2>&1
}
part_profile() {
  stamp "profile"
  timeout 120 node "$GPU/profile-step.mjs" ${PROFILE_ARGS:---model qwen2.5-3b --layers 4 --seq 2048 --dtype float16 --lora --ckpt --no-matmul} --out "$OUT/profile.json" > "$OUT/profile.log" 2>&1
}
# packed after every part, so a call cut off by its time limit still brings back what it measured
for p in ${PARTS//,/ }; do "part_$p"; tar czf "$FINAL/results.tgz" -C "$OUT" .; done
stamp done
for f in "$OUT"/*.log; do echo "== $f"; tail -n 3 "$f" | cut -c1-400; done
tar czf "$FINAL/results.tgz" -C "$OUT" .
