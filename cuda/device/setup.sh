#!/usr/bin/env bash
# Sourced at the start of every device-machine command (see cuda/device/README.md): the
# device image has CUDA, CMake and PyTorch but not Eigen, xsimd, doctest or Google
# Benchmark, so they travel in the ignored folder .device/usr (a mirror of this machine's
# /usr paths, made by cuda/device/pack.sh) and are copied into /usr there (root).

if [ -d .device/usr ]; then cp -r --update=none .device/usr/. /usr/ && ldconfig; fi
export PATH=/usr/local/cuda/bin:$PATH
echo "device: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null)"
echo "nvcc: $(nvcc --version | tail -1)   g++: $(g++ --version | head -1)   cmake: $(cmake --version | head -1)   cores: $(nproc)"
