"""dom0 as the service side: VM -> dom0 calls and dom0 -> dom0 calls
(docs/reference/services.md#who-runs-services)."""
