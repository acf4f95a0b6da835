#!/bin/bash
# Every torch stage on one GPU, chained on a small preprocessed subset (LAMOST and DESI shard
# indexes), with the SpecFormer of the config (e.g. the paper size), and the GPU embeddings
# compared with the CPU ones (SPECBRIDGE_DEVICE=cpu):
#   bash benchmarks/gpu_stages.sh LAMOST_INDEX DESI_INDEX CONFIG [WORKDIR]
set -e
export PYTHONUNBUFFERED=1
L=${1:?LAMOST index.h5}; D=${2:?DESI index.h5}; C=${3:?config with config/sizes/paper.yaml on top}; W=${4:-/tmp/specbridge-gpu}
# sb LOG ARGS...: run a specbridge command, its output in $W/LOG.log; on failure show its end
sb() { local log="$W/$1.log"; shift; mkdir -p "$W"
       python3 -c 'import sys; from specbridge.cli import main; sys.exit(main())' "$@" > "$log" 2>&1 \
           || { tail -30 "$log"; exit 1; }; }
show() { grep -E "$2" "$W/$1.log" | cut -c21- || true; }
step() { echo "== $1 $(date +%T)"; }
step pretrain_specformer
sb pretrain_specformer pretrain --config $C --model specformer --spectra $L --holdout $D --output $W/sf.pt --epochs 8
show pretrain_specformer "parameters|epoch|ratio|probe"
step embed_lamost
sb embed_lamost embed --config $C --model $W/sf.pt --spectra $L --output $W/emb/lamost/index.h5 --no-ood-scores --degraded-snr-min 3
show embed_lamost "on cuda|on cpu|wrote"
step embed_desi
sb embed_desi embed --config $C --model $W/sf.pt --spectra $D --output $W/emb/desi/index.h5
show embed_desi "on cuda|on cpu|wrote"
step embed_desi_cpu
SPECBRIDGE_DEVICE=cpu sb embed_desi_cpu embed --config $C --model $W/sf.pt --spectra $D --output $W/cpu/desi/index.h5
show embed_desi_cpu "on cuda|on cpu|wrote"
W=$W python3 - <<'PY'
import glob, os
import h5py, numpy as np
W = os.environ["W"]
for name in ("embedding", "ood_score"):
    a = np.concatenate([h5py.File(f)[name][()] for f in sorted(glob.glob(f"{W}/emb/desi/shards/*.h5"))])
    b = np.concatenate([h5py.File(f)[name][()] for f in sorted(glob.glob(f"{W}/cpu/desi/shards/*.h5"))])
    ok = np.isfinite(a) & np.isfinite(b)
    print(f"GPU vs CPU {name}: {ok.sum()} finite values, max |diff| {np.abs(a[ok]-b[ok]).max():.3g}, "
          f"rms value {np.sqrt((b[ok]**2).mean()):.3g}, same NaN pattern {np.array_equal(np.isfinite(a), np.isfinite(b))}")
PY
step pretrain_emb_mlp
sb pretrain_emb_mlp pretrain --config $C --model emb_mlp --spectra $L --embeddings $W/emb/lamost/index.h5 --holdout $D --output $W/emb_mlp.pt
show pretrain_emb_mlp "parameters|robust sigma"
step finetune
sb finetune_emb_mlp_zeroshot finetune --config $C --model emb_mlp --strategy zeroshot --pretrained $W/emb_mlp.pt --spectra $D --embeddings $W/emb/desi/index.h5 --output $W/emb_mlp_zeroshot.pt
show finetune_emb_mlp_zeroshot "trainable|epoch|validation|wrote|routed"
sb finetune_specformer_lora finetune --config $C --model specformer --strategy lora --pretrained $W/emb_mlp.pt --specformer $W/sf.pt --spectra $D --output $W/specformer_lora.pt --epochs 6
show finetune_specformer_lora "trainable|epoch|validation|wrote|routed"
step evaluate
sb evaluate evaluate --config $C --checkpoints $W/emb_mlp_zeroshot.pt $W/specformer_lora.pt --spectra $D --embeddings $W/emb/desi/index.h5 --metrics $W/ev/m.ecsv --metrics-md $W/ev/m.md --selection $W/ev/s.ecsv --summary $W/ev/x.ecsv --calibration $W/ev/c.ecsv --predictions $W/ev/p.h5
show evaluate "trainable|epoch|validation|wrote|routed"
step infer
sb infer infer --config $C --checkpoints $W/emb_mlp_zeroshot.pt $W/specformer_lora.pt --selection $W/ev/s.ecsv --calibration $W/ev/c.ecsv --spectra $D --embeddings $W/emb/desi/index.h5 --output $W/inf/index.h5
show infer "candidates|wrote|spectra/s"
step done
