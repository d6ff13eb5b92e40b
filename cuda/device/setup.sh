#!/usr/bin/env bash
# Sourced at the start of every device-machine command (see cuda/device/README.md): the
# device image has CUDA, CMake and PyTorch but not Eigen, xsimd, doctest or Google
# Benchmark, so they travel in the ignored folder .device/usr (a mirror of this machine's
# /usr paths, made by cuda/device/pack.sh) and are copied into /usr there (root).

if [ -d .device/usr ]; then cp -r --update=none .device/usr/. /usr/ && ldconfig; fi
export PATH=/usr/local/cuda/bin:$PATH
echo "device: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null)"
echo "nvcc: $(nvcc --version | tail -1)   g++: $(g++ --version | head -1)   cmake: $(cmake --version | head -1)   cores: $(nproc)"
# cuBLAS for binaries built elsewhere and carried (.devbin): the toolkit's, else PyTorch's wheel.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/lib:$(python3 -c "import nvidia.cublas, os; print(os.path.dirname(nvidia.cublas.__file__) + '/lib')" 2>/dev/null):${LD_LIBRARY_PATH:-}
