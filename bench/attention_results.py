# Result entries (bench/results/<date>-attention.json) from one GPU-box call's bench/attention.ts output and
# bench/attention_ref.py output: each of our rows against stock tfjs and PyTorch (fp32 rows against torch fp32,
# the default f16 config against torch bf16), ratio = reference / ours.
#
#   python3 bench/attention_results.py attention.jsonl attention-ref.jsonl bench/results/<date>-attention.json \
#     nsg4_bt32_dq16_kv4x32_hf_il_rs_v4_dr2_dsw_db_df [date]
import datetime, json, sys
ours_path, ref_path, outp, default = sys.argv[1:5]
date = sys.argv[5] if len(sys.argv) > 5 else datetime.date.today().isoformat()
ours = [json.loads(l) for l in open(ours_path) if l.strip().startswith("{")]
refs = [json.loads(l) for l in open(ref_path) if l.strip().startswith("{")]
tdev = next((r.get("device") for r in refs if r.get("device")), "")
rows = [r for r in ours if r.get("bench") == "attention" and "ms" in r]
key = lambda r: (r["name"], r["seq"], r["pass"])
out = []
for r in rows:
    if r["impl"] == "stock": continue
    same = [x for x in rows if key(x) == key(r) and x["impl"] == "stock"] + [x for x in refs if "ms" in x and key(x) == key(r)]
    want = {"fp32": ("stock", "torch eager float32", "torch sdpa float32"), f"f16 {default}": ("stock", "torch eager bfloat16", "torch sdpa bfloat16")}.get(r["impl"], ("stock",))
    for x in same:
        if x.get("impl") not in want: continue
        refname = "stock tfjs gqaAttention (webgpu, fp32)" if x["impl"] == "stock" else x["impl"]
        e = {"name": f"attention {r['name']} H{r['heads']}/KV{r['kv_heads']} D128 seq {r['seq']} {r['pass']}: ours {r['impl']} vs {refname}",
             "device": f"{tdev} (tfjs-webgpu/Dawn, Vulkan)", "ours_ms": r["ms"], "reference_ms": x["ms"],
             "ratio": round(x["ms"] / r["ms"], 4), "ours_tflops": r.get("tflops"), "reference": refname, "date": date,
             "impl": r["impl"], "pass": r["pass"], "seq": r["seq"], "heads": r["heads"], "kv_heads": r["kv_heads"],
             "note": f"card: {tdev} (PyTorch in the same call); default f16 config {default}; other f16 configs compare with stock only; see 2026-11-28-attention.md"}
        if x["impl"] == "stock": e["reference_issue_ms"] = x.get("issue_ms")
        e["ours_issue_ms"] = r.get("issue_ms")
        out.append(e)
json.dump(out, open(outp, "w"), indent=1)
print(len(out), "entries")
