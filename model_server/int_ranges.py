"""The integer ranges the server checks numbers against, in one place.

Used for REST JSON values (per signature dtype), version numbers in URLs and directory
names (int64), and gRPC message sizes and channel arguments (int32).
"""

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
