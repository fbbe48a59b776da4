#!/usr/bin/env bash
# Every device benchmark in one command, for a lent accelerator (GPU or TPU); one JSON.
#
#   bash benchmarks/accelerator.sh [--smoke] [--out=FILE]      (default FILE: $OUT/accelerator.json
#                                                                if $OUT is set, else ./accelerator.json)
#
# Parts, in order, each under its own time limit so that the whole run ends within 8 minutes
# (a part that runs out is recorded as timed out, its partial output kept, and the rest go on):
#   nll    benchmarks/nll.py: the jitted diffrax probability-flow NLL at batch 32 / 128 / 512
#          against score_sde's host-side RK45 loop (the small MNIST UNet, 512 images)   limit  90 s
#   train  benchmarks/train_step.py: the CIFAR-10 UNet (35.7 M) plain and SGU steps at batch
#          128, float32 and bfloat16, images/s and MFU against the device's peak          limit 100 s
#   sd     benchmarks/sd_step.py --shape=full --isolate: every SD method's step on the SD v1.5
#          UNet, bfloat16, remat off then on: step time, XLA bytes and the allocator's peak,
#          each method in its own process                                             limit 2 x 120 s
#   torch  benchmarks/vs_pytorch.py (only where torch imports): JAX / PyTorch ratios of the
#          plain, SalUn and EraseDiff steps                                               limit  50 s
# The limits are the budget, not measurements: no accelerator has run this yet.  Measured on the
# 2-core CPU machine, --smoke (every part at tiny size, XLA:CPU at optimisation level 0, as
# tests/run.sh compiles): see the README's "Benchmarks".
#
# --smoke runs every part at a tiny size (the MLP NLL on 8 points, the 40 K-parameter UNet's plain
# step, the two-level SD UNet's fine-tuning step with remat off and on, the vs-PyTorch smoke UNet's
# plain step), each under a 240 s limit, to check that the command works; its timings mean nothing.  tests/test_benchmarks.py runs
# it.  Exit status: 0 when every part that ran succeeded, 1 otherwise (the JSON is written either way).
set -uo pipefail
cd "$(dirname "$0")/.."
smoke=0
out="${OUT:+$OUT/}accelerator.json"
for a in "$@"; do
  case "$a" in
    --smoke) smoke=1 ;;
    --out=*) out="${a#--out=}" ;;
    *) echo "benchmarks/accelerator.sh: unknown argument '$a'; expected --smoke or --out=FILE" >&2; exit 2 ;;
  esac
done
tmp=$(mktemp -d -t unlearn_jax_accel_XXXX)
export TF_CPP_MIN_LOG_LEVEL=2
if [ "$smoke" = 1 ]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=0"
fi
parts=()

part() {  # $1 name, $2 limit in seconds, the rest: the command
  local name=$1 limit=$2 t0=$SECONDS
  shift 2
  parts+=("$name")
  echo "== $name (limit ${limit} s): $*" >&2
  timeout --kill-after=10 "$limit" "$@" > "$tmp/$name.out" 2> "$tmp/$name.err"
  echo $? > "$tmp/$name.rc"
  echo $((SECONDS - t0)) > "$tmp/$name.s"
  tail -n 3 "$tmp/$name.err" >&2
}

has_torch() { python -c "import torch" 2>/dev/null; }

if [ "$smoke" = 1 ]; then
  part nll 240 python benchmarks/nll.py --model mlp_toy --dataset_size 8 --batch 4,8 --train_steps 20 \
    --step_size shared --repeats 1 --reference_tol 0
  part train 240 python benchmarks/train_step.py --sizes=tiny --dtypes=float32,bfloat16 --objectives=1 \
    --batch=4 --steps=1
  part sd_remat_off 240 python benchmarks/sd_step.py --shape=tiny --methods=finetune --steps=1 --rounds=1
  part sd_remat_on 240 python benchmarks/sd_step.py --shape=tiny --methods=finetune --remat --steps=1 --rounds=1
  has_torch && part torch 240 python benchmarks/vs_pytorch.py --smoke --steps=plain
else
  part nll 90 python benchmarks/nll.py --model unet_mnist_cpu --dataset_size 512 --batch 32,128,512 \
    --step_size shared --repeats 1 --reference_tol 0
  part train 100 python benchmarks/train_step.py --sizes=cifar10 --dtypes=float32,bfloat16 --batch=128 --steps=10
  part sd_remat_off 120 python benchmarks/sd_step.py --shape=full --dtype=bfloat16 --isolate --steps=3 --rounds=2
  part sd_remat_on 120 python benchmarks/sd_step.py --shape=full --dtype=bfloat16 --remat --isolate --steps=3 --rounds=2
  has_torch && part torch 50 python benchmarks/vs_pytorch.py --size=cpu --repeats=3
fi

python - "$tmp" "$out" "$smoke" "${parts[@]}" <<'EOF'
import json, os, sys
tmp, out, smoke, names = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4:]
result = {"benchmark": "accelerator", "smoke": smoke, "parts": {}}
try:
  import jax
  result["device"] = f"{jax.devices()[0].device_kind} x{jax.device_count()}"
except Exception as e:  # pylint: disable=broad-except
  result["device"] = f"unknown ({e})"
ok = True
for name in names:
  rc = int(open(os.path.join(tmp, name + ".rc")).read())
  lines = [l for l in open(os.path.join(tmp, name + ".out")).read().splitlines() if l.startswith("{")]
  entry = {"rc": rc, "seconds": int(open(os.path.join(tmp, name + ".s")).read()),
           "status": "ok" if rc == 0 else ("timed out" if rc in (124, 137) else "failed")}
  try:
    entry["result"] = json.loads(lines[-1]) if lines else None
  except json.JSONDecodeError:
    entry["result"] = None
  if rc != 0:
    entry["stderr_tail"] = open(os.path.join(tmp, name + ".err")).read()[-2000:]
  ok &= rc == 0 and entry["result"] is not None
  result["parts"][name] = entry
result["seconds"] = sum(p["seconds"] for p in result["parts"].values())
os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
with open(out + ".tmp", "w") as f:
  json.dump(result, f, indent=1)
os.replace(out + ".tmp", out)
print(" | ".join(f"{n}: {p['status']} {p['seconds']} s" for n, p in result["parts"].items()), file=sys.stderr)
print(json.dumps({k: v for k, v in result.items() if k != "parts"} |
                 {"parts": {n: p["status"] for n, p in result["parts"].items()}, "out": out}))
sys.exit(0 if ok else 1)
EOF
status=$?
rm -rf "$tmp"
exit $status
