#!/usr/bin/env bash
# Regenerate every figure of README.md with the command the README names for it.
#
#   bash benchmarks/readme_figures.sh                      # everything (an hour or more on 2 CPU cores)
#   bash benchmarks/readme_figures.sh digits scanobjectnn  # only some parts
#
# Parts: map (docs/cluster_map.png), digits (the four-format table), scanobjectnn (seeds 0-2),
# rgbd (the trained RGB-D run), ops / cluster / pointmlp (the benchmark tables, one thread).
# Every command's output is also written to outputs/readme_figures/<part>.log; copy the tables
# from there into the README (figures) or docs/benchmarks.md (benchmark tables). Run it alone: other processes on the machine skew the timings.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
logs=outputs/readme_figures
mkdir -p "$logs"

run() {  # run NAME COMMAND...: run the command, its output also in $logs/NAME.log
    local name=$1
    shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$logs/$name.log"
}

all=(map digits scanobjectnn rgbd ops cluster pointmlp)
parts=("$@")
if [ ${#parts[@]} -eq 0 ]; then
    parts=("${all[@]}")
fi
for part in "${parts[@]}"; do
    case $part in
        map)
            run cluster_map python examples/visualize_clusters.py --model coc_tiny --stage 2 --head 0 --with-input \
                --out docs/cluster_map.png ;;
        digits)
            run digits python examples/images.py --no-progress ;;
        scanobjectnn)
            for seed in 0 1 2; do
                run "scanobjectnn_seed$seed" python examples/scanobjectnn.py --seed "$seed" --no-progress \
                    --output "$logs/scanobjectnn_seed$seed"
            done
            run scanobjectnn_coc_mini python examples/scanobjectnn.py --model coc_mini --num-points 256 --no-progress \
                --output "$logs/scanobjectnn_coc_mini" ;;
        rgbd)
            run rgbd python examples/rgbd.py --train --no-progress --output "$logs/rgbd"
            cp "$logs/rgbd/clusters.png" docs/rgbd_clusters.png ;;
        ops)
            run ops python benchmarks/ops.py --threads 1 ;;
        cluster)
            run cluster python benchmarks/cluster.py --threads 1 ;;
        pointmlp)
            run pointmlp python benchmarks/pointmlp.py --threads 1 ;;
        *)
            echo "error: unknown part '$part' (choose from: ${all[*]})" >&2
            exit 2 ;;
    esac
done
