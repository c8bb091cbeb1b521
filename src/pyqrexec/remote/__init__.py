"""Calls across hosts (docs/remote.md): the OpenSSH transport `qubesair.SSHProxy`, the
receiving side's forced command, and `qrexec-host remote`'s set-up of the trust."""
