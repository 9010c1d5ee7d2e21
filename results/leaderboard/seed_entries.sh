#!/usr/bin/env bash
# The seeded leaderboard: models of this suite submitted through the same path as anyone's
# (submit -> validate -> evaluate -> render). Seed 0 of each experiment, from the run folders
# of `dynbench reproduce dynamic-fmnist`, `d2nn-fmnist` and `quick` (their tables are in
# results/tables/). Usage: results/leaderboard/seed_entries.sh FMNIST_RUNS DIGITS_RUNS
set -euo pipefail
FMNIST_RUNS=${1:?the runs/ folder of dynamic-fmnist and d2nn-fmnist}
DIGITS_RUNS=${2:?the runs/ folder of the quick suite}
ENTRIES=${ENTRIES:-results/leaderboard/entries}
AUTHOR="dynbench maintainers"

run_of() {  # the finished seed-0 run folder of experiment $2 under $1
    local found
    found=$(ls -d "$1/$2"-s0-*/ 2>/dev/null | while read -r d; do [ -f "$d/complete.json" ] && echo "$d"; done | tail -1)
    [ -n "$found" ] || { echo "no finished run of $2 under $1" >&2; exit 2; }
    echo "${found%/}"
}

submit() {  # RUNS EXPERIMENT ENTRY_ID TITLE [PAPER_URL]
    local paper=() run
    [ -n "${5:-}" ] && paper=(--paper-url "$5")
    run=$(run_of "$1" "$2") || exit 2
    dynbench leaderboard submit "$run" --id "$3" --title "$4" --author "$AUTHOR" --entries "$ENTRIES" "${paper[@]}"
}

D2NN=https://arxiv.org/abs/1701.00299
LCNET=https://arxiv.org/abs/2007.15151
BRANCHY=https://arxiv.org/abs/1709.01686
L1=https://arxiv.org/abs/1608.08710
SKIPNET=https://arxiv.org/abs/1711.09485
BLOCKDROP=https://arxiv.org/abs/1711.08393
AIG=https://arxiv.org/abs/1711.11503
FBS=https://arxiv.org/abs/1810.05331

# Fashion-MNIST at 32x32, 10-way (dynamic-fmnist: one ResNet-20 backbone, fine-tunes at equal budgets)
submit "$FMNIST_RUNS" fmnist_resnet20 resnet20-fmnist32 "ResNet-20 (static backbone)"
submit "$FMNIST_RUNS" fmnist_resnet20_l1_p50 resnet20-l1-p50-fmnist32 "ResNet-20, L1-filter pruned 50%" "$L1"
submit "$FMNIST_RUNS" fmnist_resnet20_l--rho0.5 lcnet-l-rho0.5-fmnist32 "LC-Net L (layer skipping), rho 0.5" "$LCNET"
submit "$FMNIST_RUNS" fmnist_resnet20_c--rho0.5 lcnet-c-rho0.5-fmnist32 "LC-Net C (channel skipping), rho 0.5" "$LCNET"
submit "$FMNIST_RUNS" fmnist_resnet20_lc--rho0.5 lcnet-lc-rho0.5-fmnist32 "LC-Net LC, rho 0.5" "$LCNET"
submit "$FMNIST_RUNS" fmnist_resnet20_early_exit_calibrated--macs_fraction0.7 early-exit-0.7-fmnist32 \
    "Early exit on ResNet-20, thresholds calibrated on val to 70% of the MACs" "$BRANCHY"
submit "$FMNIST_RUNS" fmnist_resnet20_skipnet--alpha4 skipnet-alpha4-fmnist32 "SkipNet (RNNGate, hybrid RL), alpha 4" "$SKIPNET"
submit "$FMNIST_RUNS" fmnist_resnet20_blockdrop--penalty2 blockdrop-penalty2-fmnist32 "BlockDrop (ResNet-8 policy at 16x16), penalty 2" "$BLOCKDROP"
submit "$FMNIST_RUNS" fmnist_resnet20_convnet_aig--target0.7 convnet-aig-t0.7-fmnist32 "ConvNet-AIG, target rate 0.7" "$AIG"
submit "$FMNIST_RUNS" fmnist_resnet20_fbs--density0.5 fbs-d0.5-fmnist32 "FBS, density 0.5" "$FBS"
# Fashion-MNIST at 28x28, bag vs rest (D2NN's binary designs, scored by F-score)
submit "$FMNIST_RUNS" fmnist_highlow--lam0.99 d2nn-highlow-lam0.99-fmnist-bag "D2NN high-low capacity, lambda 0.99" "$D2NN"
submit "$FMNIST_RUNS" fmnist_highlow_high d2nn-highlow-high-static-fmnist-bag "D2NN high-low: its high-capacity path alone" "$D2NN"
submit "$FMNIST_RUNS" fmnist_cascade--lam0.9 d2nn-cascade-lam0.9-fmnist-bag "D2NN cascade, lambda 0.9" "$D2NN"
submit "$FMNIST_RUNS" fmnist_cascade_static--stages4 d2nn-cascade-static4-fmnist-bag "D2NN cascade: all four stages, static" "$D2NN"
submit "$FMNIST_RUNS" fmnist_cascade_confidence_calibrated--macs_fraction0.25 cascade-confidence-0.25-fmnist-bag \
    "Confidence cascade, thresholds calibrated on val to 25% of the MACs" "$D2NN"
submit "$FMNIST_RUNS" fmnist_chain--lam0.95 d2nn-chain-lam0.95-fmnist-bag "D2NN chain, lambda 0.95" "$D2NN"
submit "$FMNIST_RUNS" fmnist_chain_static--width_choicefull d2nn-chain-static-full-fmnist-bag "D2NN chain: every node at full width, static" "$D2NN"
# Fashion-MNIST at 28x28, 10-way (D2NN's hierarchical design)
submit "$FMNIST_RUNS" fmnist_hierarchical--lam0.99 d2nn-hierarchical-lam0.99-fmnist "D2NN hierarchical, lambda 0.99" "$D2NN"
submit "$FMNIST_RUNS" fmnist_hierarchical_flat d2nn-hierarchical-flat-fmnist "D2NN hierarchical: the flat classifier" "$D2NN"
# digits (the quick suite)
submit "$DIGITS_RUNS" digits_cnn digits-cnn "A small CNN on digits"
submit "$DIGITS_RUNS" digits_resnet20 resnet20-digits "ResNet-20 on digits"
submit "$DIGITS_RUNS" digits_resnet20_l1 resnet20-l1-digits "ResNet-20, L1-filter pruned, on digits" "$L1"
submit "$DIGITS_RUNS" digits_d2nn_cascade d2nn-cascade-digits "D2NN cascade on digits" "$D2NN"
submit "$DIGITS_RUNS" digits_resnet20_lc--rho0.5 lcnet-lc-rho0.5-digits "LC-Net LC, rho 0.5, on digits" "$LCNET"

dynbench leaderboard validate "$ENTRIES"
