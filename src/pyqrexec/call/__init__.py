"""One call once it is allowed: the data-channel relay and the service side of a call.

The relay (`relay.py`) moves bytes between a local process and the data channel; the
service side (`service_side.py`) is what every callee shares, whether the callee is a
domain's agent (`domain_handler.py`) or dom0 (`dom0_service.py` for VM -> dom0 calls,
`dom0_local.py` for dom0 -> dom0). See docs/architecture.md#layers."""
