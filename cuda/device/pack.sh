#!/usr/bin/env bash
# Fills .device/usr (ignored) with the build dependencies the device image lacks, copied
# from this (Debian 12) machine's /usr: Eigen, xsimd, doctest, Google Benchmark.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
U=.device/usr
rm -rf .device && mkdir -p $U/include $U/share/eigen3 $U/lib/x86_64-linux-gnu/cmake $U/lib/cmake
cp -r /usr/include/eigen3 /usr/include/xsimd /usr/include/doctest /usr/include/benchmark $U/include/
cp -r /usr/share/eigen3/cmake $U/share/eigen3/
cp -r /usr/lib/x86_64-linux-gnu/cmake/xsimd /usr/lib/x86_64-linux-gnu/cmake/benchmark $U/lib/x86_64-linux-gnu/cmake/
cp -r /usr/lib/cmake/doctest $U/lib/cmake/
cp -P /usr/lib/x86_64-linux-gnu/libbenchmark.so* /usr/lib/x86_64-linux-gnu/libbenchmark_main.a $U/lib/x86_64-linux-gnu/
du -sh .device
