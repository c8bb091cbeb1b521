"""The policy engine: parsing, loading and evaluating qrexec policy (docs/reference/policy.md).

Everything here is pure: no socket, asyncio, subprocess or environment access. Only
`loaders.DiskFiles` touches the filesystem; the daemon and the programs do the rest of the I/O
(see tests/unit/policy/test_purity.py).
"""
