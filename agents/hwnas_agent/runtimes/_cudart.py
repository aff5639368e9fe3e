"""The few CUDA runtime calls TensorRT needs (memory, copies, a stream), through ctypes:
no pycuda or cuda-python on the device."""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
from typing import Any

from hwnas_agent.runtimes import RuntimeUnavailable

HOST_TO_DEVICE, DEVICE_TO_HOST = 1, 2


def _load() -> Any:
    names = [ctypes.util.find_library("cudart")] + ["libcudart.so", "libcudart.so.13",
                                                    "libcudart.so.12", "libcudart.so.11.0"]
    names += sorted(glob.glob("/usr/local/cuda*/lib64/libcudart.so*"))
    for name in names:
        if name:
            try:
                return ctypes.CDLL(name)
            except OSError:
                continue
    raise RuntimeUnavailable("libcudart (the CUDA runtime) not found: install CUDA or JetPack")


class CudaRuntime:
    def __init__(self) -> None:
        self._lib = _load()
        self._lib.cudaGetErrorString.restype = ctypes.c_char_p

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError("%s failed: %s" % (what, self._lib.cudaGetErrorString(status).decode()))

    def malloc(self, size: int) -> int:
        pointer = ctypes.c_void_p()
        self._check(self._lib.cudaMalloc(ctypes.byref(pointer), ctypes.c_size_t(size)), "cudaMalloc")
        return int(pointer.value or 0)

    def free(self, pointer: int) -> None:
        self._lib.cudaFree(ctypes.c_void_p(pointer))

    def copy_to_device(self, pointer: int, array: Any) -> None:
        self._check(self._lib.cudaMemcpy(ctypes.c_void_p(pointer), ctypes.c_void_p(array.ctypes.data),
                                         ctypes.c_size_t(array.nbytes), HOST_TO_DEVICE), "cudaMemcpy")

    def copy_to_host(self, array: Any, pointer: int) -> None:
        self._check(self._lib.cudaMemcpy(ctypes.c_void_p(array.ctypes.data), ctypes.c_void_p(pointer),
                                         ctypes.c_size_t(array.nbytes), DEVICE_TO_HOST), "cudaMemcpy")

    def stream(self) -> int:
        handle = ctypes.c_void_p()
        self._check(self._lib.cudaStreamCreate(ctypes.byref(handle)), "cudaStreamCreate")
        return int(handle.value or 0)

    def synchronize(self, stream: int) -> None:
        self._check(self._lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")
