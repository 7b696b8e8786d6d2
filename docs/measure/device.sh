#!/bin/bash
# One lease of a lent GPU machine (docs/PERFORMANCE.md, "On an NVIDIA H200"):
# dilaseg's GPU tests, bench and profile there, and the PyTorch peer on the
# same GPU. Run from the repository root on that machine, with carried in:
#   .dev/dilaseg, .dev/kernels, .dev/model  stripped release builds (the
#       binary and the test binaries of tests/kernels.rs and tests/model.rs)
#   .gl/*.deb  the Vulkan loader (apt-get download libvulkan1 and the glvnd
#       libraries), unpacked here since the machine has the driver only.
# Results go to $OUT. NO_PEER=1 skips the PyTorch peer.
set -o pipefail
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f $icd ] && export VK_DRIVER_FILES=$icd
export WGPU_BACKEND=vulkan CI=1 RUST_BACKTRACE=1
cd "$(dirname "$0")/../.."
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv; ls /usr/local/nvidia/share/vulkan/icd.d /usr/share/vulkan/icd.d /etc/vulkan/icd.d; cat $icd; ldconfig -p | grep -i 'vulkan\|GLX_nvidia\|GLdispatch';
  .dev/dilaseg devices || VK_LOADER_DEBUG=error,warn,driver .dev/dilaseg devices 2>&1 | head -40; } 2>&1 | tee $OUT/env.txt
.dev/dilaseg devices >/dev/null 2>&1 || exit 3
{ timeout 90 .dev/kernels --test-threads 4; timeout 60 .dev/model --test-threads 4; } 2>&1 | grep -v XDG | tee $OUT/tests.txt | grep -E 'test result|FAILED|panicked' 
timeout 150 .dev/dilaseg bench --variant baseline --variant blocked-subgroup 2>&1 | grep -v XDG | tee $OUT/bench.jsonl
timeout 40 .dev/dilaseg profile --train --iters 5 2>&1 | tee $OUT/profile.txt | tail -25
timeout 20 .dev/dilaseg profile --preset seo2018 --batch 2 --train --iters 5 > $OUT/profile_seo.txt 2>&1
[ -n "$NO_PEER" ] || timeout 60 python3 docs/measure/torch_bench.py 2>&1 | tee $OUT/torch.jsonl
