"""Names shared by the generated packages and the code that loads them.

A generated package builds, for the host, a registration library and a CPU implementation library in
``libs/x86-64_linux_clang/`` (the folder name the SDK's packages use).  Both export C functions named
``<Package>_udo_<what>`` whose types ``include/OdlcUdo.h`` declares; ``ABI_VERSION`` is what
``<Package>_udo_abi_version()`` returns, so a library built from an older header is refused, not misread.
"""

from __future__ import annotations

ABI_VERSION = 1
HOST_LIB_DIR = "libs/x86-64_linux_clang"
MAX_RANK = 8  # ODLC_UDO_MAX_RANK: dimensions an OdlcUdoTensor carries
ERROR_CAPACITY = 1024  # bytes the caller gives a library for its error message

# Status codes of the C functions (OdlcUdoStatus).
STATUS = {
    "OK": 0,
    "ERR_NOT_IMPLEMENTED": 1,
    "ERR_INVALID_ARGUMENT": 2,
    "ERR_UNKNOWN_OP": 3,
    "ERR_UNSUPPORTED": 4,
    "ERR_RUNTIME": 5,
}
PARAM_KINDS = {"scalar": 1, "tensor": 2, "string": 3}


def registration_library(package: str) -> str:
    return f"libUdo{package}Reg.so"


def implementation_library(package: str, core_type: str) -> str:
    """``libUdo<Package>ImplCpu.so`` and the like (``core_type`` CPU, GPU, DSP)."""
    return f"libUdo{package}Impl{core_type.title()}.so"


def symbol(package: str, what: str) -> str:
    return f"{package}_udo_{what}"
